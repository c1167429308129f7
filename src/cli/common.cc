#include "cli/common.h"

#include "formats/error.h"
#include "formats/model_loader.h"
#include "runtime/tokenizer.h"

namespace mx::cli {

void add_engine_options(CLI::App* app, EngineOptions& o, const std::string& default_kv) {
  o.kv_dtype = default_kv;
  app->add_option("--model,-m", o.model, "model folder or file (any supported layout)")->required();
  app->add_option("--threads,-t", o.threads, "worker threads (default: all cores)");
  app->add_option("--kv-dtype", o.kv_dtype, "KV cache storage: f32, f16 or bf16")
      ->default_str(default_kv);
}

DType parse_kv_dtype(const std::string& s) {
  DType d;
  if (!parse_dtype(s, &d) || (d != DType::F32 && d != DType::F16 && d != DType::BF16))
    fail("--kv-dtype must be f32, f16 or bf16, not '" + s + "'");
  return d;
}

Engine::~Engine() = default;

Engine open_engine(const EngineOptions& o) {
  Engine e;
  e.kv_dtype = parse_kv_dtype(o.kv_dtype);
  e.pool = std::make_unique<ThreadPool>(o.threads);
  LoadOptions lo;
  e.loaded = std::make_shared<LoadedModel>(load_model(o.model, lo));
  e.tokenizer = std::make_unique<Tokenizer>(Tokenizer::load(e.loaded->tokenizer));
  if (e.tokenizer->vocab_size() != e.loaded->config.vocab)
    fail(o.model + ": tokenizer has " + std::to_string(e.tokenizer->vocab_size()) +
         " pieces but the model's vocabulary is " + std::to_string(e.loaded->config.vocab));
  e.model = make_model(e.loaded, lo, *e.pool);
  return e;
}

}  // namespace mx::cli
