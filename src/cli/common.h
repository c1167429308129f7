// What most commands share: opening a model with its tokenizer and thread pool.
#pragma once
#include <CLI/CLI.hpp>
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
};

void add_engine_options(CLI::App* app, EngineOptions& o, const std::string& default_kv = "f16");

struct Engine {
  std::shared_ptr<LoadedModel> loaded;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  DType kv_dtype = DType::F16;
  ~Engine();
};

Engine open_engine(const EngineOptions& o);
DType parse_kv_dtype(const std::string& s);

}  // namespace mx::cli
