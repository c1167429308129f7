#include "formats/model_loader.h"

#include <filesystem>

#include "formats/error.h"
#include "formats/file_probe.h"
#include "formats/expert_split.h"
#include "formats/safetensors_checkpoint.h"

namespace fs = std::filesystem;

namespace mx {

// Loaders of the other layouts (formats/gguf.cc, torch_checkpoint.cc, weight_cache.cc).
LoadedModel load_gguf(const std::string& path, const LoadOptions& opts);
LoadedModel load_torch_checkpoint(const std::string& dir_or_file, const LoadOptions& opts);
LoadedModel load_weight_cache(const std::string& dir, const LoadOptions& opts);

namespace {

bool has(const fs::path& p) { return path_exists(p); }

bool has_ext(const fs::path& dir, const std::string& prefix, const std::string& ext) {
  for (const fs::path& e : list_directory(dir)) {
    const std::string n = e.filename().string();
    if (n.rfind(prefix, 0) == 0 && e.extension() == ext) return true;
  }
  return false;
}

std::string single_gguf(const fs::path& dir) {
  std::string found;
  for (const fs::path& e : list_directory(dir)) {
    if (e.extension() == ".gguf") {
      if (!found.empty())
        fail(dir.string() + ": holds several .gguf files; pass the one to load as --model");
      found = e.string();
    }
  }
  return found;
}

const char* kLookedFor =
    "looked for: a .gguf file; a folder with manifest.json (mixtral repack cache); config.json "
    "with model.safetensors[.index.json] (HuggingFace); params.json with "
    "consolidated.safetensors (mistral-inference); params.json with consolidated.*.pth or "
    "consolidated.*.pt (PyTorch)";

}  // namespace

std::string detect_layout(const std::string& path) {
  const fs::path p(path);
  if (!path_exists(p)) fail(path + ": no such file or folder");
  if (is_regular_path(p)) {
    if (p.extension() == ".gguf") return "gguf";
    if (p.extension() == ".pth" || p.extension() == ".pt") return "pth";
    if (p.filename() == "manifest.json") return "cache";
    fail(path + ": unrecognized model file; " + kLookedFor);
  }
  if (has(p / "manifest.json")) return "cache";
  if (has(p / "config.json") &&
      (has(p / "model.safetensors.index.json") || has(p / "model.safetensors")))
    return "hf";
  if (has(p / "params.json") && has(p / "consolidated.safetensors")) return "mistral";
  if (has(p / "params.json") && (has_ext(p, "consolidated.", ".pth") || has_ext(p, "consolidated.", ".pt")))
    return "pth";
  if (!single_gguf(p).empty()) return "gguf";
  fail(path + ": no Mixtral checkpoint recognized; " + kLookedFor);
}

LoadedModel load_model(const std::string& path, const LoadOptions& opts) {
  if (opts.n_ranks < 1 || opts.rank < 0 || opts.rank >= opts.n_ranks)
    fail("bad rank " + std::to_string(opts.rank) + " of " + std::to_string(opts.n_ranks));
  const std::string layout = detect_layout(path);
  LoadedModel m;
  if (layout == "hf") {
    m = load_hf_checkpoint(path, opts);
  } else if (layout == "mistral") {
    m = load_mistral_checkpoint(path, opts);
  } else if (layout == "pth") {
    m = load_torch_checkpoint(path, opts);
  } else if (layout == "gguf") {
    m = load_gguf(is_directory_path(path) ? single_gguf(path) : path, opts);
  } else {
    m = load_weight_cache(is_regular_path(path) ? fs::path(path).parent_path().string() : path, opts);
  }
  const int E = m.config.n_experts;
  if (!opts.owner.empty()) {
    if (static_cast<int>(opts.owner.size()) != E)
      fail(path + ": the placement places " + std::to_string(opts.owner.size()) + " experts but the model has " +
           std::to_string(E));
  }
  check_tensors(m, opts);
  if (opts.splits(E)) {
    // More ranks than experts: this rank's share of its expert must be whole 16-row groups
    // (checked here so that a bad rank count fails at start, naming the model).
    const int e = opts.rank % E, parts = opts.expert_parts(e, E);
    const std::string what = path + ": " + std::to_string(opts.n_ranks) + " ranks for " + std::to_string(E) +
                             " experts split each expert over " + std::to_string(parts) + " ranks; its ";
    expert_rows(m.config.ffn_dim, parts, opts.part(E), what + "hidden size");
    expert_rows(m.config.dim, parts, opts.part(E), what + "output size (model dim)");
  }
  return m;
}

void check_tensors(const LoadedModel& m, const LoadOptions& opts) {
  const ModelConfig& c = m.config;
  auto check = [&](const std::string& name, std::vector<int64_t> shape) {
    const Tensor& t = m.store.get(name);
    if (t.shape != shape)
      fail(m.path + ": tensor " + name + " (" + t.name + ") has shape " + shape_str(t.shape) +
           ", expected " + shape_str(shape));
    const DType d = t.dtype;
    if (d == DType::I32 || d == DType::I64 || d == DType::U8 || d == DType::Q8_K)
      fail(m.path + ": tensor " + name + " has dtype " + std::string(dtype_info(d).name) +
           ", which is not a weight type");
    if (t.cols() % dtype_info(d).block_elems != 0)
      fail(m.path + ": tensor " + name + " has " + std::to_string(t.cols()) +
           " columns, not a multiple of its " + std::string(dtype_info(d).name) + " block size");
    if (t.data == nullptr) fail(m.path + ": tensor " + name + " has no data");
  };
  auto check_vec = [&](const std::string& name, int64_t n) {
    // Norm weights may be stored [n] or [1, n].
    const Tensor& t = m.store.get(name);
    if (t.numel() != n || t.cols() != n)
      fail(m.path + ": tensor " + name + " has shape " + shape_str(t.shape) + ", expected [" +
           std::to_string(n) + "]");
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail(m.path + ": tensor " + name + " must be f32, f16 or bf16, not " +
           std::string(dtype_info(t.dtype).name));
  };
  const int64_t q = int64_t{c.n_heads} * c.head_dim, kv = int64_t{c.n_kv_heads} * c.head_dim;
  check("tok_embeddings", {c.vocab, c.dim});
  check_vec("norm", c.dim);
  check("output", {c.vocab, c.dim});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    check_vec(L + "attention_norm", c.dim);
    check_vec(L + "ffn_norm", c.dim);
    check(L + "attention.wq", {q, c.dim});
    check(L + "attention.wk", {kv, c.dim});
    check(L + "attention.wv", {kv, c.dim});
    check(L + "attention.wo", {c.dim, q});
    check(L + "gate", {c.n_experts, c.dim});
    for (int e = 0; e < c.n_experts; ++e) {
      if (!opts.owns_expert(e, c.n_experts)) continue;
      const std::string E = L + "experts." + std::to_string(e) + ".";
      check(E + "w1", {c.ffn_dim, c.dim});
      check(E + "w3", {c.ffn_dim, c.dim});
      check(E + "w2", {c.dim, c.ffn_dim});
    }
  }
}

}  // namespace mx
