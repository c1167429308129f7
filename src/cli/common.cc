#include "cli/common.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/config_files.h"
#include "formats/error.h"
#include "formats/model_loader.h"
#include "runtime/expert_parallel.h"
#include "runtime/placement.h"
#include "runtime/tokenizer.h"

namespace mx::cli {

namespace {
std::vector<std::pair<const CLI::App*, EngineOptions*>>& engine_registry() {
  static std::vector<std::pair<const CLI::App*, EngineOptions*>> r;
  return r;
}
}  // namespace

std::string default_model_path() {
  const std::string rel = "models/tale-mixtral";
  std::vector<std::filesystem::path> tried;
#ifdef MIXTRAL_SOURCE_DIR
  tried.push_back(std::filesystem::path(MIXTRAL_SOURCE_DIR) / rel);
#endif
  // Relative to the binary (build/bin/mixtral), for a moved source tree with its build.
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) tried.push_back(exe.parent_path() / ".." / ".." / rel);
  for (const auto& p : tried)
    if (std::filesystem::is_regular_file(p / "config.json", ec)) return p.lexically_normal().string();
  return "";
}

const EngineOptions* engine_options_of(const CLI::App* sub) {
  for (const auto& [app, o] : engine_registry())
    if (app == sub) return o;
  return nullptr;
}

void add_engine_options(CLI::App* app, EngineOptions& o, const std::string& default_kv) {
  engine_registry().push_back({app, &o});
  o.kv_dtype = default_kv;
  // Without --model: the small Mixtral trained on A Tale of Two Cities, when it is found.
  const std::string def = default_model_path();
  auto* opt = app->add_option("--model,-m", o.model, "model folder or file (any supported layout)");
  if (def.empty()) {
    opt->required();
  } else {
    o.model = def;
    opt->default_str(def);
  }
  app->add_option("--threads,-t", o.threads, "worker threads (default: all cores)");
  app->add_option("--kv-dtype", o.kv_dtype, "KV cache storage: f32, f16 or bf16")
      ->default_str(default_kv);
  app->add_option("--placement", o.placement,
                  "under mpirun: file pinning experts to ranks, lines 'rank R: 0-2 5' (docs/distributed.md)");
  app->add_flag("--no-interleave", o.no_interleave,
                "run row-major Q8_0/Q4_0 matrices (a GGUF) as mapped instead of interleaving them "
                "at load (faster start, slower kernels; a q8/q4 cache is interleaved already)");
}

DType parse_kv_dtype(const std::string& s) {
  DType d;
  if (!parse_dtype(s, &d) || (d != DType::F32 && d != DType::F16 && d != DType::BF16))
    fail("--kv-dtype must be f32, f16 or bf16, not '" + s + "'");
  return d;
}

Engine::Engine() = default;
Engine::Engine(Engine&&) noexcept = default;
Engine::~Engine() = default;

Engine open_engine(const EngineOptions& o) {
  const ep::World& w = ep::world();
  Engine e;
  e.kv_dtype = parse_kv_dtype(o.kv_dtype);
  // Under mpirun, ranks sharing a host share its cores.
  e.pool = std::make_unique<ThreadPool>(o.threads > 0 ? o.threads : w.mpi ? ep::default_threads() : 0);
  LoadOptions lo{w.rank, w.size};
  lo.interleave = !o.no_interleave;
  if (!o.placement.empty()) {
    lo.owner = ep::read_placement_file(o.placement, w.size);
    // A file places whole experts; only the default placement splits them by hidden rows.
    if (w.size > static_cast<int>(lo.owner.size()))
      fail(o.placement + ": a placement file places whole experts, but this job has " + std::to_string(w.size) +
           " ranks for " + std::to_string(lo.owner.size()) + " experts; leave out --placement to split each "
           "expert's hidden rows over the ranks, or use at most " + std::to_string(lo.owner.size()) + " ranks");
  }
  const std::string path = w.mpi ? ep::model_path_for_rank(o.model, w.rank) : o.model;
  auto load = [&] {
    e.loaded = std::make_shared<LoadedModel>(load_model(path, lo));
    e.tokenizer = std::make_unique<Tokenizer>(Tokenizer::load(e.loaded->tokenizer));
    if (e.tokenizer->vocab_size() != e.loaded->config.vocab)
      fail(path + ": tokenizer has " + std::to_string(e.tokenizer->vocab_size()) +
           " pieces but the model's vocabulary is " + std::to_string(e.loaded->config.vocab));
    e.model = make_model(e.loaded, lo, *e.pool);
  };
  if (!ep::distributed()) {
    load();
    ep::note_local_model(*e.model);
    return e;
  }
  ep::open_begin(lo.owner);
  // Every rank must report before anyone may fail, so rank 0's own error waits for theirs.
  std::string err;
  try {
    load();
  } catch (const std::bad_alloc&) {
    err = "out of memory while loading the model";
  } catch (const std::exception& ex) {
    err = ex.what();
  }
  ep::open_end(err.empty() ? e.model.get() : nullptr, err);
  ep::attach_root(*e.model, *e.pool);
  return e;
}

std::function<std::vector<float>(const std::vector<SeqChunk>&)> make_forward(Engine& e, KvCache& kv) {
  return [&e, &kv](const std::vector<SeqChunk>& batch) { return forward(*e.model, kv, batch, *e.pool); };
}

std::vector<std::string> read_prompts_file(const std::string& path) {
  if (!std::ifstream(path)) fail(path + ": cannot open prompts file");
  const nlohmann::json j = read_json_file(path);
  if (!j.is_array()) fail(path + ": expected a JSON list of prompts");
  std::vector<std::string> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& p = j[i];
    if (p.is_string()) {
      out.push_back(p.get<std::string>());
    } else if (p.is_object() && p.contains("prompt") && p["prompt"].is_string()) {
      out.push_back(p["prompt"].get<std::string>());
    } else {
      fail(path + ": entry " + std::to_string(i) + " needs a string field 'prompt'");
    }
  }
  if (out.empty()) fail(path + ": no prompts");
  return out;
}

}  // namespace mx::cli
