// `mixtral make-tiny`: a deterministic random Mixtral in HuggingFace layout (config.json,
// bf16 safetensors, tokenizer.model), for tests and benchmarks without the real weights.
// Written tensor by tensor in bounded buffers, so even full-size layers need little memory.
#include <sentencepiece_processor.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "formats/error.h"
#include "formats/safetensors_writer.h"
#include "kernels/thread_pool.h"

namespace fs = std::filesystem;

namespace mx::cli {

namespace {

struct TinyArgs {
  std::string out, preset = "tiny", tokenizer;
  int layers = 0, dim = 0, ffn = 0, heads = 0, kv_heads = 0, experts = 0, top_k = 0, vocab = 0;
  uint64_t seed = 1;
  int shard_mb = 4096;
  int threads = 0;
  // Which options were given explicitly (they override the preset).
  CLI::Option *o_layers, *o_dim, *o_ffn, *o_heads, *o_kv, *o_experts, *o_topk, *o_vocab;
};

// splitmix64: one multiply-xorshift chain per output, and output i depends only on state+i, so
// the loop pipelines well and any chunk can be generated independently.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

uint64_t name_hash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

// f32 -> bf16, round to nearest even; our values are finite, so no NaN case.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

struct GenTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool norm = false;  // 1 + small noise, else uniform with std 1/sqrt(fan_in)
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Elements per independently seeded chunk: fixes the stream layout, so the bytes do not
// depend on the thread count.
constexpr int64_t kChunk = int64_t{1} << 16;

void gen_chunk(const GenTensor& t, uint64_t tseed, int64_t chunk, uint16_t* out, int64_t n) {
  uint64_t s = mix64(tseed ^ mix64(static_cast<uint64_t>(chunk) + 1));
  // Uniform in [-a, a) has std a/sqrt(3); a = sqrt(3/fan_in) gives std 1/sqrt(fan_in), which
  // keeps activations and logits O(1) through the layers.
  const float a = t.norm ? 0.1f : std::sqrt(3.0f / static_cast<float>(t.shape.back()));
  const float k = a * (1.0f / 2147483648.0f);
  const float base = t.norm ? 1.0f : 0.0f;
  int64_t i = 0;
  for (; i + 1 < n; i += 2) {
    const uint64_t x = mix64(s += kGolden);
    out[i] = to_bf16(base + static_cast<float>(static_cast<int32_t>(x)) * k);
    out[i + 1] = to_bf16(base + static_cast<float>(static_cast<int32_t>(x >> 32)) * k);
  }
  if (i < n) out[i] = to_bf16(base + static_cast<float>(static_cast<int32_t>(mix64(s += kGolden))) * k);
}

std::vector<GenTensor> hf_tensors(const TinyArgs& a) {
  const int64_t hd = a.dim / a.heads;
  std::vector<GenTensor> v;
  v.push_back({"model.embed_tokens.weight", {a.vocab, a.dim}});
  for (int l = 0; l < a.layers; ++l) {
    const std::string L = "model.layers." + std::to_string(l) + ".";
    v.push_back({L + "input_layernorm.weight", {a.dim}, true});
    v.push_back({L + "self_attn.q_proj.weight", {a.heads * hd, a.dim}});
    v.push_back({L + "self_attn.k_proj.weight", {a.kv_heads * hd, a.dim}});
    v.push_back({L + "self_attn.v_proj.weight", {a.kv_heads * hd, a.dim}});
    v.push_back({L + "self_attn.o_proj.weight", {a.dim, a.heads * hd}});
    v.push_back({L + "post_attention_layernorm.weight", {a.dim}, true});
    v.push_back({L + "block_sparse_moe.gate.weight", {a.experts, a.dim}});
    for (int e = 0; e < a.experts; ++e) {
      const std::string E = L + "block_sparse_moe.experts." + std::to_string(e) + ".";
      v.push_back({E + "w1.weight", {a.ffn, a.dim}});
      v.push_back({E + "w2.weight", {a.dim, a.ffn}});
      v.push_back({E + "w3.weight", {a.ffn, a.dim}});
    }
  }
  v.push_back({"model.norm.weight", {a.dim}, true});
  v.push_back({"lm_head.weight", {a.vocab, a.dim}});
  return v;
}

std::string default_tokenizer() {
  const std::string rel = "tests/data/tiny-mixtral/hf/tokenizer.model";
  std::vector<fs::path> tried;
#ifdef MIXTRAL_SOURCE_DIR
  tried.push_back(fs::path(MIXTRAL_SOURCE_DIR) / rel);
#endif
  // Relative to the binary (build/bin/mixtral), for a moved source tree with its build.
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    tried.push_back(exe.parent_path() / ".." / ".." / rel);
    tried.push_back(exe.parent_path() / ".." / rel);
  }
  std::string list;
  for (const auto& p : tried) {
    if (fs::is_regular_file(p)) return p.lexically_normal().string();
    list += (list.empty() ? "" : ", ") + p.string();
  }
  fail("no default tokenizer.model found (looked at " + list + "); pass --tokenizer FILE");
}

void apply_preset(TinyArgs& a) {
  struct P { int layers, dim, ffn, heads, kv, experts, topk, vocab; };
  P p;
  if (a.preset == "tiny") p = {2, 64, 128, 4, 2, 8, 2, 32000};
  else if (a.preset == "mixtral-8x7b") p = {32, 4096, 14336, 32, 8, 8, 2, 32000};
  else fail("--preset must be tiny or mixtral-8x7b, not '" + a.preset + "'");
  auto set = [](CLI::Option* o, int& v, int d) {
    if (o->count() == 0) v = d;
  };
  set(a.o_layers, a.layers, p.layers);
  set(a.o_dim, a.dim, p.dim);
  set(a.o_ffn, a.ffn, p.ffn);
  set(a.o_heads, a.heads, p.heads);
  set(a.o_kv, a.kv_heads, p.kv);
  set(a.o_experts, a.experts, p.experts);
  set(a.o_topk, a.top_k, p.topk);
}

void check_args(const TinyArgs& a) {
  auto range = [](const char* flag, int v, int lo, int hi) {
    if (v < lo || v > hi)
      fail(std::string(flag) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
           "], not " + std::to_string(v));
  };
  range("--layers", a.layers, 1, 1024);
  range("--dim", a.dim, 2, 1 << 16);
  range("--ffn", a.ffn, 1, 1 << 18);
  range("--heads", a.heads, 1, 1024);
  range("--kv-heads", a.kv_heads, 1, 1024);
  range("--experts", a.experts, 1, 256);
  range("--top-k", a.top_k, 1, a.experts);
  range("--shard-mb", a.shard_mb, 1, 1 << 20);
  if (a.dim % a.heads != 0 || (a.dim / a.heads) % 2 != 0)
    fail("--dim " + std::to_string(a.dim) + " must be --heads (" + std::to_string(a.heads) +
         ") times an even head size");
  if (a.heads % a.kv_heads != 0)
    fail("--kv-heads " + std::to_string(a.kv_heads) + " must divide --heads " + std::to_string(a.heads));
}

int tokenizer_vocab(const std::string& path) {
  sentencepiece::SentencePieceProcessor sp;
  const auto st = sp.Load(path);
  if (!st.ok()) fail(path + ": not a SentencePiece model: " + st.ToString());
  return sp.GetPieceSize();
}

int run(TinyArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  apply_preset(a);
  if (a.tokenizer.empty()) a.tokenizer = default_tokenizer();
  if (!fs::is_regular_file(a.tokenizer)) fail("--tokenizer " + a.tokenizer + ": no such file");
  // The engine refuses a model whose vocabulary differs from its tokenizer's.
  const int tok_vocab = tokenizer_vocab(a.tokenizer);
  if (a.o_vocab->count() == 0) a.vocab = tok_vocab;
  if (a.vocab != tok_vocab)
    fail("--vocab " + std::to_string(a.vocab) + " differs from the " + std::to_string(tok_vocab) +
         " pieces of " + a.tokenizer + "; the engine would refuse the model");
  check_args(a);

  const fs::path out(a.out);
  if (fs::exists(out) && !fs::is_directory(out)) fail("--out " + a.out + ": exists and is not a folder");
  fs::create_directories(out);
  // A previous run's shards must not survive next to this run's index (or vice versa).
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("model", 0) == 0 && (e.path().extension() == ".safetensors" || n == "model.safetensors.index.json"))
      fs::remove(e.path());
  }

  // Shards: consecutive tensors up to --shard-mb each; one file when everything fits.
  const std::vector<GenTensor> tensors = hf_tensors(a);
  const uint64_t limit = static_cast<uint64_t>(a.shard_mb) << 20;
  std::vector<std::vector<size_t>> shards(1);
  uint64_t cur = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t n = static_cast<uint64_t>(tensors[i].numel()) * 2;
    if (cur > 0 && cur + n > limit) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += n;
    total += n;
  }
  auto shard_name = [&](size_t s) {
    if (shards.size() == 1) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    return std::string(buf);
  };

  ThreadPool pool(a.threads);
  const int64_t batch = kChunk * 256;  // 16M elements = 32 MB of bf16 per round
  std::vector<uint16_t> buf;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    std::vector<SafetensorsEntry> entries;
    for (size_t i : shards[s]) {
      entries.push_back({tensors[i].name, DType::BF16, tensors[i].shape});
      weight_map[tensors[i].name] = shard_name(s);
    }
    SafetensorsWriter w((out / shard_name(s)).string(), entries);
    for (size_t i : shards[s]) {
      const GenTensor& t = tensors[i];
      const uint64_t tseed = mix64(a.seed ^ name_hash(t.name));
      const int64_t n = t.numel();
      for (int64_t b0 = 0; b0 < n; b0 += batch) {
        const int64_t bn = std::min(batch, n - b0);
        buf.resize(static_cast<size_t>(bn));
        const int64_t chunks = (bn + kChunk - 1) / kChunk;
        pool.parallel_for(chunks, [&](int64_t c0, int64_t c1, int) {
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t off = c * kChunk;
            gen_chunk(t, tseed, (b0 / kChunk) + c, buf.data() + off, std::min(kChunk, bn - off));
          }
        });
        w.write(buf.data(), static_cast<size_t>(bn) * 2);
      }
    }
    w.finish(false);
  }
  if (shards.size() > 1) {
    nlohmann::json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream f(out / "model.safetensors.index.json");
    f << idx.dump(2) << "\n";
    if (!f) fail((out / "model.safetensors.index.json").string() + ": write failed");
  }

  nlohmann::ordered_json cfg = {
      {"architectures", {"MixtralForCausalLM"}},
      {"model_type", "mixtral"},
      {"attention_dropout", 0.0},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"head_dim", a.dim / a.heads},
      {"hidden_act", "silu"},
      {"hidden_size", a.dim},
      {"initializer_range", 0.02},
      {"intermediate_size", a.ffn},
      {"max_position_embeddings", 32768},
      {"num_attention_heads", a.heads},
      {"num_experts_per_tok", a.top_k},
      {"num_hidden_layers", a.layers},
      {"num_key_value_heads", a.kv_heads},
      {"num_local_experts", a.experts},
      {"output_router_logits", false},
      {"rms_norm_eps", 1e-05},
      {"rope_theta", 1000000.0},
      {"router_aux_loss_coef", 0.02},
      {"sliding_window", nullptr},
      {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"},
      {"use_cache", true},
      {"vocab_size", a.vocab},
      {"mixtral_make_tiny", {{"preset", a.preset}, {"seed", a.seed}}}};
  {
    std::ofstream f(out / "config.json");
    f << cfg.dump(2) << "\n";
    if (!f) fail((out / "config.json").string() + ": write failed");
  }
  std::error_code ec;
  const fs::path tok_dst = out / "tokenizer.model";
  if (!fs::equivalent(a.tokenizer, tok_dst, ec))
    fs::copy_file(a.tokenizer, tok_dst, fs::copy_options::overwrite_existing);

  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %zu tensors, %.1f MB of bf16 in %zu file%s, %.1f s\n", a.out.c_str(),
              tensors.size(), static_cast<double>(total) / 1e6, shards.size(),
              shards.size() == 1 ? "" : "s", secs);
  return 0;
}

}  // namespace

Command add_make_tiny(CLI::App& app) {
  auto a = std::make_shared<TinyArgs>();
  CLI::App* sub = app.add_subcommand(
      "make-tiny", "write a deterministic random Mixtral (HF layout, bf16) for tests and benchmarks");
  sub->add_option("--out,-o", a->out, "folder to write")->required();
  sub->add_option("--preset", a->preset, "tiny (dim 64, 2 layers) or mixtral-8x7b (real sizes)")
      ->default_val("tiny");
  a->o_layers = sub->add_option("--layers", a->layers, "transformer layers");
  a->o_dim = sub->add_option("--dim", a->dim, "hidden size");
  a->o_ffn = sub->add_option("--ffn", a->ffn, "expert hidden size");
  a->o_heads = sub->add_option("--heads", a->heads, "attention heads");
  a->o_kv = sub->add_option("--kv-heads", a->kv_heads, "key/value heads");
  a->o_experts = sub->add_option("--experts", a->experts, "experts per layer");
  a->o_topk = sub->add_option("--top-k", a->top_k, "experts per token");
  a->o_vocab = sub->add_option("--vocab", a->vocab, "vocabulary (default and required: the tokenizer's)");
  sub->add_option("--seed", a->seed, "random seed; same seed, same bytes")->default_val(1);
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer.model to copy (default: the test fixture's)");
  sub->add_option("--shard-mb", a->shard_mb, "largest safetensors shard in MiB")->default_val(4096);
  sub->add_option("--threads,-t", a->threads, "generator threads (default: all cores)");
  return {sub, [a] { return run(*a); }};
}

}  // namespace mx::cli
