// What most commands share: opening a model with its tokenizer and thread pool.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

#include "formats/loaded_model.h"
#include "kernels/thread_pool.h"
#include "model/forward.h"

namespace mx {
class Tokenizer;
}

namespace mx::cli {

struct EngineOptions {
  std::string model;
  int threads = 0;             // 0: all cores
  std::string kv_dtype = "f16";
  bool no_interleave = false;  // keep row-major Q8_0 / Q4_0 matrices as they are mapped
  std::string placement;       // under mpirun: a file pinning experts to ranks (runtime/placement.h)
};

// models/tale-mixtral (the small Mixtral trained on A Tale of Two Cities, the default --model),
// looked up in the source tree and next to the binary; empty when neither has it.
std::string default_model_path();
void add_engine_options(CLI::App* app, EngineOptions& o, const std::string& default_kv = "f16");
// The options add_engine_options registered for `sub` (null when it takes no --model). Ranks
// other than 0 read their --model and --threads from here instead of running the command.
const EngineOptions* engine_options_of(const CLI::App* sub);

struct Engine {
  std::shared_ptr<LoadedModel> loaded;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  DType kv_dtype = DType::F16;
  Engine();
  Engine(Engine&&) noexcept;
  ~Engine();
};

// Loads the model and tokenizer. Under mpirun with N > 1 ranks (only rank 0 runs commands),
// every rank loads its share of the experts at the same time, a failure on any rank is
// reported here naming the rank, and the returned model runs each forward on all ranks.
Engine open_engine(const EngineOptions& o);
// The step function schedulers call: one forward over `kv` (and, under MPI, on every rank).
std::function<std::vector<float>(const std::vector<SeqChunk>&)> make_forward(Engine& e, KvCache& kv);
// A prompts file: a JSON list of strings or of {"prompt": "..."} objects.
std::vector<std::string> read_prompts_file(const std::string& path);
DType parse_kv_dtype(const std::string& s);

}  // namespace mx::cli
