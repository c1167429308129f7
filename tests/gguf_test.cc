// GGUF reader and Mixtral GGUF loader: the llama.cpp-made tiny model in four quantizations,
// synthetic files for the variants llama.cpp no longer writes, and malformed files.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "formats/error.h"
#include "formats/gguf.h"
#include "kernels/half.h"
#include "kernels/quant_blocks.h"
#include "test_util.h"
#include "tiny_config.h"

namespace fs = std::filesystem;

namespace mx {
namespace {

const char* kQuants[] = {"f16", "q8_0", "q4_0", "q4_k_m"};

std::string tiny_gguf(const std::string& q) {
  return test::data_path("tiny-mixtral/gguf/tiny-mixtral-" + q + ".gguf");
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::vector<float> dequant(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  for (int64_t r = 0; r < t.rows(); ++r) dequantize_row(t.dtype, t.row(r), out.data() + r * t.cols(), t.cols());
  return out;
}

// Runs f, which must throw mx::Error whose message names `path` and contains `needle`.
template <typename F>
void expect_error(F&& f, const std::string& path, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error for " << path << " (expected \"" << needle << "\")";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "expected \"" << needle << "\" in: " << msg;
  }
}

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer for synthetic files.

enum : uint32_t { kU8 = 0, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kStr = 8, kArr = 9, kU64 = 10 };

struct GgufBuilder {
  uint32_t version = 3;
  uint64_t alignment = 32;
  std::string kv;
  uint64_t n_kv = 0;
  struct T {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    std::string data;
  };
  std::vector<T> tensors;

  template <typename V>
  static void raw(std::string& o, V v) {
    o.append(reinterpret_cast<const char*>(&v), sizeof(V));
  }
  static void str(std::string& o, const std::string& s) {
    raw<uint64_t>(o, s.size());
    o += s;
  }
  void key(const std::string& k, uint32_t type) {
    str(kv, k);
    raw<uint32_t>(kv, type);
    ++n_kv;
  }
  GgufBuilder& u32(const std::string& k, uint32_t v) { key(k, kU32); raw(kv, v); return *this; }
  GgufBuilder& f32(const std::string& k, float v) { key(k, kF32); raw(kv, v); return *this; }
  GgufBuilder& boolean(const std::string& k, bool v) { key(k, kBool); raw<uint8_t>(kv, v); return *this; }
  GgufBuilder& string(const std::string& k, const std::string& v) { key(k, kStr); str(kv, v); return *this; }
  GgufBuilder& strings(const std::string& k, const std::vector<std::string>& v) {
    key(k, kArr);
    raw<uint32_t>(kv, kStr);
    raw<uint64_t>(kv, v.size());
    for (const auto& s : v) str(kv, s);
    return *this;
  }
  GgufBuilder& floats(const std::string& k, const std::vector<float>& v) {
    key(k, kArr);
    raw<uint32_t>(kv, kF32);
    raw<uint64_t>(kv, v.size());
    for (float f : v) raw(kv, f);
    return *this;
  }
  GgufBuilder& ints(const std::string& k, const std::vector<int32_t>& v) {
    key(k, kArr);
    raw<uint32_t>(kv, kI32);
    raw<uint64_t>(kv, v.size());
    for (int32_t i : v) raw(kv, i);
    return *this;
  }
  // F32 tensor whose element i (flat, outermost-first order) is fill(i).
  template <typename Fill>
  GgufBuilder& tensor_f32(const std::string& name, std::vector<uint64_t> ne, Fill fill) {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;
    std::string data;
    for (uint64_t i = 0; i < n; ++i) raw(data, static_cast<float>(fill(i)));
    tensors.push_back({name, std::move(ne), 0, std::move(data)});
    return *this;
  }
  GgufBuilder& tensor_raw(const std::string& name, std::vector<uint64_t> ne, uint32_t type, std::string data) {
    tensors.push_back({name, std::move(ne), type, std::move(data)});
    return *this;
  }
  void remove_tensor(const std::string& name) {
    std::erase_if(tensors, [&](const T& t) { return t.name == name; });
  }

  // Layout: header, kv, infos, padding, each tensor's data padded to the alignment.
  std::string bytes(size_t* infos_end = nullptr) const {
    std::string o = "GGUF";
    raw(o, version);
    raw<uint64_t>(o, tensors.size());
    raw<uint64_t>(o, n_kv);
    o += kv;
    uint64_t off = 0;
    std::vector<uint64_t> offsets;
    for (const T& t : tensors) {
      str(o, t.name);
      raw<uint32_t>(o, static_cast<uint32_t>(t.ne.size()));
      for (uint64_t d : t.ne) raw(o, d);
      raw(o, t.type);
      raw(o, off);
      offsets.push_back(off);
      off += (t.data.size() + alignment - 1) / alignment * alignment;
    }
    if (infos_end) *infos_end = o.size();
    o.resize((o.size() + alignment - 1) / alignment * alignment, '\0');
    for (const T& t : tensors) {
      o += t.data;
      o.resize((o.size() + alignment - 1) / alignment * alignment, '\0');
    }
    return o;
  }
};

// A synthetic Mixtral: dim 32, 1 layer, 2 heads / 1 kv head of 16, ffn 32, 4 experts, top 2,
// vocab 8, all f32. Expert weights hold 1000*e + 10*row + col/100 so slices can be identified.
constexpr int kDim = 32, kFfn = 32, kE = 4, kVocab = 8;

float expert_value(int e, int64_t r, int64_t c) { return 1000.0f * e + 10.0f * r + c / 100.0f; }

struct SynthOptions {
  std::string arch = "llama";
  bool merged_experts = true;
  bool output = true;
  bool freq_base = true;
};

GgufBuilder synth_model(const SynthOptions& o = {}) {
  GgufBuilder b;
  const std::string a = o.arch + ".";
  b.string("general.architecture", o.arch)
      .u32(a + "block_count", 1)
      .u32(a + "context_length", 4096)
      .u32(a + "embedding_length", kDim)
      .u32(a + "feed_forward_length", kFfn)
      .u32(a + "attention.head_count", 2)
      .u32(a + "attention.head_count_kv", 1)
      .f32(a + "attention.layer_norm_rms_epsilon", 1e-6f)
      .u32(a + "expert_count", kE)
      .u32(a + "expert_used_count", 2)
      .u32(a + "rope.dimension_count", 16);
  if (o.freq_base) b.f32(a + "rope.freq_base", 500000.0f);
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "a", "b", "\xe2\x96\x81" "c", "d", "e"};
  b.string("tokenizer.ggml.model", "llama")
      .strings("tokenizer.ggml.tokens", tokens)
      .floats("tokenizer.ggml.scores", {0, 0, 0, -1, -2, -3, -4, -5})
      .ints("tokenizer.ggml.token_type", {2, 3, 3, 1, 1, 1, 1, 1})
      .u32("tokenizer.ggml.bos_token_id", 1)
      .u32("tokenizer.ggml.eos_token_id", 2)
      .u32("tokenizer.ggml.unknown_token_id", 0)
      .boolean("tokenizer.ggml.add_space_prefix", false)
      .string("tokenizer.chat_template", "{{ messages }}");
  auto seq = [](float base) { return [base](uint64_t i) { return base + static_cast<float>(i) / 64.0f; }; };
  b.tensor_f32("token_embd.weight", {kDim, kVocab}, seq(0));
  b.tensor_f32("output_norm.weight", {kDim}, seq(1));
  if (o.output) b.tensor_f32("output.weight", {kDim, kVocab}, seq(2));
  b.tensor_f32("blk.0.attn_norm.weight", {kDim}, seq(3));
  b.tensor_f32("blk.0.ffn_norm.weight", {kDim}, seq(4));
  b.tensor_f32("blk.0.attn_q.weight", {kDim, 32}, seq(5));
  b.tensor_f32("blk.0.attn_k.weight", {kDim, 16}, seq(6));
  b.tensor_f32("blk.0.attn_v.weight", {kDim, 16}, seq(7));
  b.tensor_f32("blk.0.attn_output.weight", {32, kDim}, seq(8));
  b.tensor_f32("blk.0.ffn_gate_inp.weight", {kDim, kE}, seq(9));
  struct P { const char* merged; const char* single; int64_t rows, cols; };
  for (const P& p : {P{"ffn_gate_exps", "ffn_gate", kFfn, kDim}, P{"ffn_up_exps", "ffn_up", kFfn, kDim},
                     P{"ffn_down_exps", "ffn_down", kDim, kFfn}}) {
    const uint64_t rows = p.rows, cols = p.cols;
    if (o.merged_experts) {
      b.tensor_f32(std::string("blk.0.") + p.merged + ".weight", {cols, rows, kE}, [=](uint64_t i) {
        return expert_value(static_cast<int>(i / (rows * cols)), (i / cols) % rows, i % cols);
      });
    } else {
      for (int e = 0; e < kE; ++e)
        b.tensor_f32("blk.0." + std::string(p.single) + "." + std::to_string(e) + ".weight", {cols, rows},
                     [=](uint64_t i) { return expert_value(e, i / cols, i % cols); });
    }
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// Reader on llama.cpp's files

TEST(GgufReader, ParsesHeaderMetadataAndTensors) {
  for (const char* q : kQuants) {
    SCOPED_TRACE(q);
    const GgufFile g = GgufFile::open(tiny_gguf(q));
    EXPECT_EQ(g.version, 3u);
    EXPECT_EQ(g.alignment, 32u);
    EXPECT_EQ(g.data_offset % 32, 0u);
    EXPECT_EQ(g.tensor_infos.size(), 23u);
    EXPECT_EQ(g.keys.size(), g.metadata.size());
    EXPECT_EQ(g.get_string("general.architecture"), "llama");
    EXPECT_EQ(g.get_u32("llama.block_count"), 2u);
    EXPECT_EQ(g.get_u32("llama.expert_count"), 8u);
    EXPECT_EQ(g.get_i64("llama.embedding_length"), 64);
    EXPECT_EQ(g.get_f32("llama.rope.freq_base"), 1e6f);
    EXPECT_FLOAT_EQ(g.get_f32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
    EXPECT_TRUE(g.get_bool("tokenizer.ggml.add_bos_token"));
    EXPECT_FALSE(g.get_bool("tokenizer.ggml.add_eos_token"));
    EXPECT_EQ(g.get_u32("no.such.key", 77), 77u);
    const auto& tokens = g.get_string_array("tokenizer.ggml.tokens");
    ASSERT_EQ(tokens.size(), 32000u);
    EXPECT_EQ(tokens[0], "<unk>");
    EXPECT_EQ(tokens[1], "<s>");
    EXPECT_EQ(tokens[3], "<0x00>");
    EXPECT_EQ(g.get_f32_array("tokenizer.ggml.scores").size(), 32000u);
    const auto types = g.get_int_array("tokenizer.ggml.token_type");
    ASSERT_EQ(types.size(), 32000u);
    EXPECT_EQ(types[0], 2);
    EXPECT_EQ(types[1], 3);
    EXPECT_EQ(types[3], 6);
    EXPECT_EQ(g.get_array("tokenizer.ggml.tokens").elem_type, GgufType::STRING);
    EXPECT_NE(g.get_string("tokenizer.chat_template").find("raise_exception"), std::string::npos);

    const GgufTensorInfo* e = g.find_tensor("blk.0.ffn_down_exps.weight");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->ne, (std::vector<int64_t>{128, 64, 8}));
    EXPECT_EQ(e->shape, (std::vector<int64_t>{8, 64, 128}));
    const Tensor te = g.tensor("token_embd.weight");
    EXPECT_EQ(te.shape, (std::vector<int64_t>{32000, 64}));
    EXPECT_EQ(te.name, "token_embd.weight");
    // Views, not copies: every tensor lies inside the mapping, after the header.
    for (const GgufTensorInfo& t : g.tensor_infos) {
      const Tensor v = g.tensor(t.name);
      EXPECT_EQ(v.nbytes(), t.nbytes) << t.name;
      EXPECT_GE(v.data, g.file->data() + g.data_offset);
      EXPECT_LE(v.data + v.nbytes(), g.file->data() + g.file->size());
    }
    EXPECT_EQ(g.find_tensor("nope"), nullptr);
  }
}

TEST(GgufReader, TypedGettersRejectWrongTypes) {
  const std::string path = tiny_gguf("q8_0");
  const GgufFile g = GgufFile::open(path);
  expect_error([&] { g.get_string("llama.block_count"); }, path, "llama.block_count");
  expect_error([&] { g.get_u32("general.architecture"); }, path, "has type string, expected u32");
  expect_error([&] { g.get_u32("missing.key"); }, path, "missing metadata key 'missing.key'");
  expect_error([&] { g.get_f32_array("tokenizer.ggml.tokens"); }, path, "array of string");
  expect_error([&] { g.get_string_array("tokenizer.ggml.scores"); }, path, "array of f32");
  expect_error([&] { g.get_bool("llama.rope.freq_base"); }, path, "expected bool");
  expect_error([&] { g.tensor("missing.weight"); }, path, "missing tensor 'missing.weight'");
}

TEST(GgufReader, IntegerGettersCheckRange) {
  const std::string dir = test::tmp_dir("gguf-ints");
  GgufBuilder b;
  b.key("neg", kI32);
  GgufBuilder::raw<int32_t>(b.kv, -5);
  b.key("big", kU64);
  GgufBuilder::raw<uint64_t>(b.kv, uint64_t{1} << 40);
  b.key("small", kU8);
  GgufBuilder::raw<uint8_t>(b.kv, 200);
  const std::string path = dir + "/ints.gguf";
  write_file(path, b.bytes());
  const GgufFile g = GgufFile::open(path);
  EXPECT_EQ(g.get_i32("neg"), -5);
  EXPECT_EQ(g.get_i64("neg"), -5);
  EXPECT_EQ(g.get_u64("big"), uint64_t{1} << 40);
  EXPECT_EQ(g.get_u32("small"), 200u);
  EXPECT_EQ(g.get_f32("small"), 200.0f);
  expect_error([&] { g.get_u32("neg"); }, path, "out of range");
  expect_error([&] { g.get_u32("big"); }, path, "out of range");
  expect_error([&] { g.get_i32("big"); }, path, "out of range");
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Loader on llama.cpp's files

DType source_dtype(const GgufFile& g, const std::string& name) { return g.find_tensor(name)->dtype; }

TEST(GgufLoader, TinyMixtralConfigAndTensors) {
  for (const char* q : kQuants) {
    SCOPED_TRACE(q);
    const std::string path = tiny_gguf(q);
    const LoadedModel m = load_gguf(path, {});
    const ModelConfig& c = m.config;
    EXPECT_EQ(m.layout, "gguf");
    EXPECT_EQ(m.path, path);
    EXPECT_EQ(m.store.source, path);
    test::expect_tiny_dims(c);
    EXPECT_EQ(c.max_seq_len, 32768);
    EXPECT_EQ(c.sliding_window, 0);
    EXPECT_TRUE(c.rope_interleaved);
    EXPECT_EQ(c.bos_id, 1);
    EXPECT_EQ(c.eos_id, 2);

    // Every canonical tensor, with its shape and the dtype it has in the file.
    const GgufFile g = GgufFile::open(path);
    size_t expected_count = 0;
    auto check = [&](const std::string& canon, const std::string& src, std::vector<int64_t> shape) {
      ++expected_count;
      ASSERT_TRUE(m.store.has(canon)) << canon;
      const Tensor& t = m.store.get(canon);
      EXPECT_EQ(t.shape, shape) << canon;
      EXPECT_EQ(t.dtype, source_dtype(g, src)) << canon;
      EXPECT_NE(t.data, nullptr);
    };
    check("tok_embeddings", "token_embd.weight", {32000, 64});
    check("norm", "output_norm.weight", {64});
    check("output", "output.weight", {32000, 64});
    for (int l = 0; l < 2; ++l) {
      const std::string L = "layers." + std::to_string(l) + ".", B = "blk." + std::to_string(l) + ".";
      check(L + "attention_norm", B + "attn_norm.weight", {64});
      check(L + "ffn_norm", B + "ffn_norm.weight", {64});
      check(L + "attention.wq", B + "attn_q.weight", {64, 64});
      check(L + "attention.wk", B + "attn_k.weight", {32, 64});
      check(L + "attention.wv", B + "attn_v.weight", {32, 64});
      check(L + "attention.wo", B + "attn_output.weight", {64, 64});
      check(L + "gate", B + "ffn_gate_inp.weight", {8, 64});
      for (int e = 0; e < 8; ++e) {
        const std::string E = L + "experts." + std::to_string(e) + ".";
        check(E + "w1", B + "ffn_gate_exps.weight", {128, 64});
        check(E + "w3", B + "ffn_up_exps.weight", {128, 64});
        check(E + "w2", B + "ffn_down_exps.weight", {64, 128});
      }
    }
    EXPECT_EQ(m.store.tensors.size(), expected_count);
    // Expert e's slice starts e experts into the merged tensor, inside the model's own mmap.
    ASSERT_EQ(m.store.files.size(), 1u);
    const GgufTensorInfo* all = g.find_tensor("blk.1.ffn_down_exps.weight");
    const Tensor& w2 = m.store.get("layers.1.experts.5.w2");
    EXPECT_EQ(static_cast<uint64_t>(w2.data - m.store.files[0]->data()),
              g.data_offset + all->offset + 5 * 64 * w2.row_stride());

    // The tokenizer comes from the metadata (this folder has no tokenizer.model).
    const TokenizerSource& tok = m.tokenizer;
    EXPECT_TRUE(tok.model_path.empty());
    ASSERT_EQ(tok.pieces.size(), 32000u);
    EXPECT_EQ(tok.pieces[2], "</s>");
    EXPECT_EQ(tok.scores.size(), 32000u);
    EXPECT_EQ(tok.types.size(), 32000u);
    EXPECT_EQ(tok.types[0], 2);
    EXPECT_EQ(tok.bos_id, 1);
    EXPECT_EQ(tok.eos_id, 2);
    EXPECT_EQ(tok.unk_id, 0);
    EXPECT_TRUE(tok.add_dummy_prefix);  // key absent: SentencePiece's default
    EXPECT_NE(tok.chat_template.find("[INST]"), std::string::npos);
  }
}

TEST(GgufLoader, QuantizedTypesAsLlamaCppChoseThem) {
  // Spot checks of what llama-quantize wrote, including its fallbacks for 64-wide rows.
  const LoadedModel q4 = load_gguf(tiny_gguf("q4_0"), {});
  EXPECT_EQ(q4.store.get("tok_embeddings").dtype, DType::Q4_0);
  EXPECT_EQ(q4.store.get("output").dtype, DType::Q8_0);
  EXPECT_EQ(q4.store.get("layers.0.experts.0.w1").dtype, DType::Q4_0);
  EXPECT_EQ(q4.store.get("layers.0.gate").dtype, DType::F32);
  const LoadedModel km = load_gguf(tiny_gguf("q4_k_m"), {});
  EXPECT_EQ(km.store.get("tok_embeddings").dtype, DType::Q5_0);
  EXPECT_EQ(km.store.get("layers.0.attention.wo").dtype, DType::Q5_1);
  EXPECT_EQ(km.store.get("layers.1.experts.7.w2").dtype, DType::Q8_0);
  const LoadedModel f16 = load_gguf(tiny_gguf("f16"), {});
  EXPECT_EQ(f16.store.get("layers.0.attention.wq").dtype, DType::F16);
  EXPECT_EQ(f16.store.get("norm").dtype, DType::F32);
}

// The f16 GGUF against the bf16 mistral-inference checkpoint of the same weights: same values
// (bf16 -> f16 is exact but for f16 subnormals), same q/k row order (both pair-interleaved),
// same expert order.
struct SafetensorsBf16 {
  std::string bytes;
  nlohmann::json header;
  size_t data_start = 0;
  std::vector<float> get(const std::string& name, std::vector<int64_t>* shape) const {
    const auto& h = header.at(name);
    EXPECT_EQ(h.at("dtype"), "BF16");
    *shape = h.at("shape").get<std::vector<int64_t>>();
    const size_t b = h.at("data_offsets")[0], e = h.at("data_offsets")[1];
    std::vector<float> out((e - b) / 2);
    for (size_t i = 0; i < out.size(); ++i) {
      uint16_t v;
      std::memcpy(&v, bytes.data() + data_start + b + 2 * i, 2);
      out[i] = bf16_to_f32(v);
    }
    return out;
  }
};

TEST(GgufLoader, F16WeightsEqualMistralCheckpoint) {
  SafetensorsBf16 st;
  st.bytes = test::read_file(test::data_path("tiny-mixtral/mistral/consolidated.safetensors"));
  ASSERT_GT(st.bytes.size(), 8u);
  uint64_t n;
  std::memcpy(&n, st.bytes.data(), 8);
  st.header = nlohmann::json::parse(st.bytes.substr(8, n));
  st.data_start = 8 + n;
  const LoadedModel m = load_gguf(tiny_gguf("f16"), {});
  auto compare = [&](const std::string& canon, const std::string& st_name) {
    SCOPED_TRACE(canon);
    std::vector<int64_t> shape;
    const std::vector<float> want = st.get(st_name, &shape);
    const Tensor& t = m.store.get(canon);
    ASSERT_EQ(t.shape, shape);
    const std::vector<float> got = dequant(t);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 3e-8 + 1e-6 * std::fabs(want[i])) << "element " << i;
  };
  compare("tok_embeddings", "tok_embeddings.weight");
  compare("output", "output.weight");
  compare("norm", "norm.weight");
  for (int l = 0; l < 2; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    for (const char* w : {"wq", "wk", "wv", "wo"}) compare(L + "attention." + w, L + "attention." + w + ".weight");
    compare(L + "attention_norm", L + "attention_norm.weight");
    compare(L + "ffn_norm", L + "ffn_norm.weight");
    compare(L + "gate", L + "feed_forward.gate.weight");
    for (int e = 0; e < 8; ++e)
      for (const char* w : {"w1", "w2", "w3"})
        compare(L + "experts." + std::to_string(e) + "." + w,
                L + "feed_forward.experts." + std::to_string(e) + "." + w + ".weight");
  }
}

TEST(GgufLoader, RanksLoadOnlyTheirExperts) {
  for (const auto& [rank, n_ranks] : std::vector<std::pair<int, int>>{{0, 2}, {1, 2}, {3, 4}}) {
    LoadOptions o;
    o.rank = rank;
    o.n_ranks = n_ranks;
    const LoadedModel m = load_gguf(tiny_gguf("q4_k_m"), o);
    for (int l = 0; l < 2; ++l)
      for (int e = 0; e < 8; ++e)
        for (const char* w : {"w1", "w2", "w3"}) {
          const std::string name = "layers." + std::to_string(l) + ".experts." + std::to_string(e) + "." + w;
          EXPECT_EQ(m.store.has(name), o.owns_expert(e, 8)) << name << " rank " << rank << "/" << n_ranks;
        }
    EXPECT_TRUE(m.store.has("layers.1.gate"));
    EXPECT_TRUE(m.store.has("tok_embeddings"));
  }
  LoadOptions bad;
  bad.n_ranks = 0;
  expect_error([&] { load_gguf(tiny_gguf("q8_0"), bad); }, tiny_gguf("q8_0"), "bad rank");
}

TEST(GgufLoader, UsesSiblingTokenizerModel) {
  const std::string dir = test::tmp_dir("gguf-spm");
  fs::copy_file(tiny_gguf("q4_0"), dir + "/m.gguf");
  fs::copy_file(test::data_path("tiny-mixtral/mistral/tokenizer.model"), dir + "/tokenizer.model");
  const LoadedModel m = load_gguf(dir + "/m.gguf", {});
  EXPECT_EQ(m.tokenizer.model_path, dir + "/tokenizer.model");
  EXPECT_EQ(m.tokenizer.pieces.size(), 32000u);  // still filled
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Loader on synthetic files

class GgufSynth : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::tmp_dir("gguf-synth"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const GgufBuilder& b, const std::string& name = "m.gguf") {
    const std::string p = dir_ + "/" + name;
    write_file(p, b.bytes());
    return p;
  }
  std::string write_bytes(const std::string& bytes, const std::string& name) {
    const std::string p = dir_ + "/" + name;
    write_file(p, bytes);
    return p;
  }
  std::string dir_;
};

void expect_expert_values(const LoadedModel& m, const LoadOptions& o) {
  for (int e = 0; e < kE; ++e) {
    for (const char* w : {"w1", "w2", "w3"}) {
      const std::string name = "layers.0.experts." + std::to_string(e) + "." + w;
      ASSERT_EQ(m.store.has(name), o.owns_expert(e, kE)) << name;
      if (!o.owns_expert(e, kE)) continue;
      const Tensor& t = m.store.get(name);
      const std::vector<float> v = dequant(t);
      for (int64_t r = 0; r < t.rows(); r += 7)
        for (int64_t c = 0; c < t.cols(); c += 5)
          ASSERT_EQ(v[r * t.cols() + c], expert_value(e, r, c)) << name << " [" << r << "," << c << "]";
    }
  }
}

TEST_F(GgufSynth, MergedExpertsSliceToTheRightExpert) {
  const std::string p = write(synth_model());
  LoadOptions o;
  const LoadedModel m = load_gguf(p, o);
  EXPECT_EQ(m.config.dim, kDim);
  EXPECT_EQ(m.config.n_kv_heads, 1);
  EXPECT_EQ(m.config.head_dim, 16);
  EXPECT_EQ(m.config.max_seq_len, 4096);
  EXPECT_EQ(m.config.rope_theta, 500000.0f);
  EXPECT_FLOAT_EQ(m.config.norm_eps, 1e-6f);
  EXPECT_EQ(m.config.vocab, kVocab);
  expect_expert_values(m, o);
  o.rank = 1;
  o.n_ranks = 2;
  expect_expert_values(load_gguf(p, o), o);
  // Tokenizer metadata.
  EXPECT_FALSE(m.tokenizer.add_dummy_prefix);
  EXPECT_EQ(m.tokenizer.pieces[5], "\xe2\x96\x81" "c");
  EXPECT_EQ(m.tokenizer.scores[4], -2.0f);
  EXPECT_EQ(m.tokenizer.types[1], 3);
  EXPECT_EQ(m.tokenizer.chat_template, "{{ messages }}");
}

TEST_F(GgufSynth, PerExpertTensorNames) {
  SynthOptions so;
  so.merged_experts = false;
  const std::string p = write(synth_model(so));
  LoadOptions o;
  expect_expert_values(load_gguf(p, o), o);
  o.rank = 0;
  o.n_ranks = 2;
  expect_expert_values(load_gguf(p, o), o);
  // A rank that does not own expert 3 does not need its tensors.
  GgufBuilder b = synth_model(so);
  b.remove_tensor("blk.0.ffn_up.3.weight");
  const std::string p2 = write(b, "m2.gguf");
  EXPECT_NO_THROW(load_gguf(p2, o));
  expect_error([&] { load_gguf(p2, {}); }, p2, "blk.0.ffn_up.3.weight");
}

TEST_F(GgufSynth, TiedOutputAndDefaults) {
  SynthOptions so;
  so.output = false;
  so.freq_base = false;
  const std::string p = write(synth_model(so));
  const LoadedModel m = load_gguf(p, {});
  ASSERT_TRUE(m.store.has("output"));
  EXPECT_EQ(m.store.get("output").data, m.store.get("tok_embeddings").data);
  EXPECT_EQ(m.config.rope_theta, 1e6f);  // absent, and a MoE model
}

TEST_F(GgufSynth, MixtralArchitectureAndVersion2) {
  SynthOptions so;
  so.arch = "mixtral";
  GgufBuilder b = synth_model(so);
  b.version = 2;
  const LoadedModel m = load_gguf(write(b), {});
  EXPECT_EQ(m.config.n_experts, kE);
  EXPECT_EQ(m.config.top_k, 2);
}

TEST_F(GgufSynth, CustomAlignment) {
  GgufBuilder b = synth_model();
  b.alignment = 256;
  b.u32("general.alignment", 256);
  const std::string p = write(b);
  const GgufFile g = GgufFile::open(p);
  EXPECT_EQ(g.alignment, 256u);
  EXPECT_EQ(g.data_offset % 256, 0u);
  LoadOptions o;
  expect_expert_values(load_gguf(p, o), o);
}

TEST_F(GgufSynth, ModelLevelErrors) {
  {
    GgufBuilder b = synth_model();
    b.remove_tensor("blk.0.attn_q.weight");
    b.tensor_f32("blk.0.attn_q.weight", {kDim, 48}, [](uint64_t) { return 0.0f; });
    const std::string p = write(b, "shape.gguf");
    expect_error([&] { load_gguf(p, {}); }, p,
                 "tensor 'blk.0.attn_q.weight' has shape [48, 32], expected [32, 32]");
  }
  {
    GgufBuilder b = synth_model();
    b.remove_tensor("blk.0.ffn_gate_exps.weight");
    b.tensor_f32("blk.0.ffn_gate_exps.weight", {kDim, kFfn, kE - 1}, [](uint64_t) { return 0.0f; });
    const std::string p = write(b, "experts.gguf");
    expect_error([&] { load_gguf(p, {}); }, p, "expected [4, 32, 32]");
  }
  {
    GgufBuilder b = synth_model();
    b.remove_tensor("output_norm.weight");
    const std::string p = write(b, "missing.gguf");
    expect_error([&] { load_gguf(p, {}); }, p, "missing tensor 'output_norm.weight'");
  }
  {
    // A type llama.cpp has but we do not decode: the file parses, the tensor is refused.
    GgufBuilder b = synth_model();
    b.tensor_raw("extra.weight", {256, 2}, 10, std::string(2 * 84, '\0'));  // q2_K
    const std::string p = write(b, "q2k.gguf");
    const GgufFile g = GgufFile::open(p);
    EXPECT_FALSE(g.find_tensor("extra.weight")->supported);
    EXPECT_EQ(g.find_tensor("extra.weight")->type_name, "q2_K");
    expect_error([&] { g.tensor("extra.weight"); }, p, "has ggml type q2_K, which this engine does not support");
    EXPECT_NO_THROW(load_gguf(p, {}));  // a tensor the model does not use is ignored
  }
  {
    GgufBuilder b = synth_model();
    b.string("general.architecture", "gemma");  // a second key of the same name
    const std::string p = write(b, "dup.gguf");
    expect_error([&] { load_gguf(p, {}); }, p, "'general.architecture' appears twice");
  }
  {
    GgufBuilder b;
    b.string("general.architecture", "gemma");
    const std::string p = write(b, "gemma.gguf");
    expect_error([&] { load_gguf(p, {}); }, p, "architecture 'gemma' is not supported");
  }
  {
    // A dense llama: no expert_count.
    GgufBuilder b;
    b.string("general.architecture", "llama").u32("llama.embedding_length", 32);
    const std::string p = write(b, "dense.gguf");
    expect_error([&] { load_gguf(p, {}); }, p, "not a Mixtral");
  }
  {
    GgufBuilder b = synth_model();
    b.u32("llama.vocab_size", 9);
    const std::string p = write(b, "vocab.gguf");
    expect_error([&] { load_gguf(p, {}); }, p, "llama.vocab_size = 9");
  }
  {
    GgufBuilder b = synth_model();
    b.u32("llama.attention.key_length", 8);
    const std::string p = write(b, "keylen.gguf");
    expect_error([&] { load_gguf(p, {}); }, p, "partial rotary");
  }
}

// ---------------------------------------------------------------------------------------------
// Malformed files

TEST_F(GgufSynth, MalformedHeaders) {
  const std::string good = synth_model().bytes();
  auto patched = [&](size_t off, const void* v, size_t n) {
    std::string s = good;
    std::memcpy(s.data() + off, v, n);
    return s;
  };
  auto check = [&](const std::string& bytes, const std::string& name, const std::string& needle) {
    const std::string p = write_bytes(bytes, name);
    expect_error([&] { GgufFile::open(p); }, p, needle);
    expect_error([&] { load_gguf(p, {}); }, p, needle);
  };
  check("", "empty.gguf", "bad magic");
  check("GGU", "short.gguf", "bad magic");
  check(patched(0, "GGML", 4), "magic.gguf", "bad magic");
  const uint32_t v1 = 1, v9 = 9, vbe = 0x03000000;
  check(patched(4, &v1, 4), "v1.gguf", "version 1");
  check(patched(4, &v9, 4), "v9.gguf", "unsupported GGUF version 9");
  check(patched(4, &vbe, 4), "be.gguf", "big-endian");
  const uint64_t huge = uint64_t{1} << 60;
  check(patched(8, &huge, 8), "ntensors.gguf", "tensor count");
  check(patched(16, &huge, 8), "nkv.gguf", "metadata count");
  // First key's length (at 24) far beyond the file.
  check(patched(24, &huge, 8), "keylen.gguf", "claims");
  // First value type (after "general.architecture") unknown.
  const size_t type_off = 24 + 8 + std::strlen("general.architecture");
  const uint32_t bad_type = 77;
  check(patched(type_off, &bad_type, 4), "vtype.gguf", "unknown value type 77");
  // First value is a string: make its length absurd.
  check(patched(type_off + 4, &huge, 8), "vlen.gguf", "claims");
  // Header cut short.
  check(good.substr(0, 20), "cut20.gguf", "truncated");
}

TEST_F(GgufSynth, MalformedArraysAndTensorInfos) {
  {
    GgufBuilder b;
    b.key("arr", kArr);
    GgufBuilder::raw<uint32_t>(b.kv, kU32);
    GgufBuilder::raw<uint64_t>(b.kv, uint64_t{1} << 61);
    const std::string p = write(b, "arrcount.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "cannot fit");
  }
  {
    GgufBuilder b;
    b.key("arr", kArr);
    GgufBuilder::raw<uint32_t>(b.kv, 55);
    GgufBuilder::raw<uint64_t>(b.kv, 1);
    const std::string p = write(b, "arrtype.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "unknown array element type 55");
  }
  {
    // Arrays of arrays nested without end.
    GgufBuilder b;
    b.key("deep", kArr);
    for (int i = 0; i < 100; ++i) {
      GgufBuilder::raw<uint32_t>(b.kv, kArr);
      GgufBuilder::raw<uint64_t>(b.kv, 1);
    }
    GgufBuilder::raw<uint32_t>(b.kv, kU8);
    GgufBuilder::raw<uint64_t>(b.kv, 0);
    const std::string p = write(b, "deep.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "nested");
  }
  {
    GgufBuilder b;
    b.key("flag", kBool);
    GgufBuilder::raw<uint8_t>(b.kv, 7);
    const std::string p = write(b, "bool.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "invalid value 7");
  }
  {
    GgufBuilder b;
    b.u32("general.alignment", 48);
    const std::string p = write(b, "align.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "general.alignment must be a power of two");
  }
  auto one_tensor = [&](std::vector<uint64_t> ne, uint32_t type, size_t data_bytes, const std::string& name) {
    GgufBuilder b;
    b.tensor_raw("t.weight", std::move(ne), type, std::string(data_bytes, '\0'));
    return write(b, name);
  };
  {
    const std::string p = one_tensor({48, 2}, 8, 102, "rowblock.gguf");  // q8_0 row of 48
    expect_error([&] { GgufFile::open(p); }, p, "ne[0] = 48 is not a multiple of the q8_0 block size 32");
  }
  {
    const std::string p = one_tensor({32}, 99, 64, "ttype.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "unknown ggml type id 99");
  }
  {
    const std::string p = one_tensor({1, 1, 1, 1, 1}, 0, 4, "ndims.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "5 dimensions");
  }
  {
    const std::string p = one_tensor({uint64_t{1} << 40, uint64_t{1} << 40}, 0, 4, "numel.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "impossible size");
  }
  {
    const std::string p = one_tensor({1024, 1024}, 0, 64, "outside.gguf");  // claims 4 MiB
    expect_error([&] { GgufFile::open(p); }, p, "lies outside the file");
  }
  {
    GgufBuilder b;
    b.tensor_raw("a.weight", {32}, 0, std::string(128, '\0'));
    b.tensor_raw("a.weight", {32}, 0, std::string(128, '\0'));
    const std::string p = write(b, "duptensor.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "tensor 'a.weight' appears twice");
  }
  {
    // Offsets: patch the second tensor's offset to overlap the first, then to be misaligned.
    GgufBuilder b;
    b.tensor_raw("a.weight", {32}, 0, std::string(128, '\0'));
    b.tensor_raw("b.weight", {32}, 0, std::string(128, '\0'));
    size_t infos_end = 0;
    std::string bytes = b.bytes(&infos_end);
    const size_t off_pos = infos_end - 8;  // last field of the last info
    uint64_t off = 64;
    std::memcpy(bytes.data() + off_pos, &off, 8);
    const std::string p = write_bytes(bytes, "overlap.gguf");
    expect_error([&] { GgufFile::open(p); }, p, "overlap");
    off = 130;
    std::memcpy(bytes.data() + off_pos, &off, 8);
    const std::string p2 = write_bytes(bytes, "misaligned.gguf");
    expect_error([&] { GgufFile::open(p2); }, p2, "not a multiple of the alignment 32");
  }
}

// Every prefix of a real file fails cleanly, with the path in the message.
TEST_F(GgufSynth, TruncatedCopiesOfRealFile) {
  const std::string full = test::read_file(tiny_gguf("q4_0"));
  const GgufFile g = GgufFile::open(tiny_gguf("q4_0"));
  std::vector<size_t> cuts = {0, 1, 4, 7, 8, 15, 16, 23, 24, 25, 40, 100, 1000, 100000, 400000,
                              static_cast<size_t>(g.data_offset) - 1, static_cast<size_t>(g.data_offset),
                              static_cast<size_t>(g.data_offset) + 1, full.size() / 2, full.size() - 1};
  for (size_t k = 0; k < 16; ++k) cuts.push_back(static_cast<size_t>(g.data_offset * k / 16 + 3));
  for (size_t cut : cuts) {
    SCOPED_TRACE(cut);
    const std::string p = write_bytes(full.substr(0, cut), "cut.gguf");
    expect_error([&] { load_gguf(p, {}); }, p, "");
  }
}

// Random byte corruption of the header area: load either succeeds or throws mx::Error.
TEST_F(GgufSynth, CorruptedHeadersNeverCrash) {
  size_t infos_end = 0;
  const std::string good = synth_model().bytes(&infos_end);
  std::mt19937 rng(1234);
  int errors = 0, loaded = 0;
  for (int iter = 0; iter < 400; ++iter) {
    std::string bytes = good;
    const int n_flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < n_flips; ++f) {
      const size_t pos = rng() % infos_end;
      bytes[pos] = static_cast<char>(rng() % 3 == 0 ? 0xff : rng());
    }
    const std::string p = write_bytes(bytes, "fuzz.gguf");
    try {
      load_gguf(p, {});
      ++loaded;
    } catch (const Error& e) {
      ++errors;
      ASSERT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(errors, 0);
  SUCCEED() << loaded << " corrupted files still loaded, " << errors << " rejected";
}

// A zero-byte tensor (one dimension 0) used to skip the range check, and tensor() then formed
// a pointer 2^63 bytes past the mapping. Every tensor's offset must lie inside the data.
TEST_F(GgufSynth, ZeroSizeTensorAtHugeOffsetIsAnError) {
  GgufBuilder b;
  b.string("general.architecture", "llama");
  b.tensor_raw("empty.weight", {4, 0}, 0, "");
  size_t infos_end = 0;
  std::string bytes = b.bytes(&infos_end);
  const uint64_t huge = uint64_t{1} << 63;  // a multiple of the alignment, so only the range is wrong
  std::memcpy(&bytes[infos_end - 8], &huge, 8);
  const std::string p = write_bytes(bytes, "zero-size.gguf");
  expect_error([&] { GgufFile::open(p); }, p, "tensor 'empty.weight' data [");
  // At a plausible offset the same tensor is fine and its (empty) view points into the file.
  b = GgufBuilder();
  b.string("general.architecture", "llama");
  b.tensor_raw("empty.weight", {4, 0}, 0, "");
  const std::string ok = write(b, "zero-size-ok.gguf");
  const GgufFile g = GgufFile::open(ok);
  const Tensor t = g.tensor("empty.weight");
  EXPECT_EQ(t.numel(), 0);
  EXPECT_GE(t.data, g.file->data());
  EXPECT_LE(t.data, g.file->data() + g.file->size());
}

}  // namespace
}  // namespace mx
