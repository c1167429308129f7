// `mixtral make-tiny`, and the writing side it shares with repack: the XXH64 hash, the
// buffered FileWriter and the streaming safetensors writer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "formats/safetensors_writer.h"
#include "kernels/half.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"
#include "model/forward.h"
#include "runtime/scoring.h"
#include "test_util.h"
#include "tiny_config.h"

namespace fs = std::filesystem;

namespace mx {
namespace {

using test::read_file;
using test::run_cli;
using test::tmp_dir;

TEST(Hash64, KnownVectors) {
  // Published XXH64 (seed 0) values.
  EXPECT_EQ(Hash64::of("", 0), 0xef46db3751d8e999ULL);
  EXPECT_EQ(Hash64::of("abc", 3), 0x44bc2cf5ad770999ULL);
  // Longer inputs take the 4-lane path; the low 32 bits of these were checked against zstd's
  // frame checksum (which is the low half of XXH64 of the content).
  std::string s(1000, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 31 + 7);
  EXPECT_EQ(static_cast<uint32_t>(Hash64::of(s.data(), s.size())), 0x28043d35u)
      << hex64(Hash64::of(s.data(), s.size()));
}

TEST(Hash64, StreamingEqualsOneShot) {
  std::string s(300, '\0');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 13 + 1);
  const uint64_t want = Hash64::of(s.data(), s.size());
  for (size_t cut = 0; cut <= s.size(); cut += 7) {
    Hash64 h;
    h.update(s.data(), cut);
    (void)h.digest();  // digest mid-stream must not disturb the state
    h.update(s.data() + cut, s.size() - cut);
    EXPECT_EQ(h.digest(), want) << cut;
  }
  uint64_t v;
  EXPECT_TRUE(parse_hex64(hex64(want), &v));
  EXPECT_EQ(v, want);
  EXPECT_FALSE(parse_hex64("12345", &v));
  EXPECT_FALSE(parse_hex64("zz45678901234567", &v));
}

TEST(FileWriter, WritesHashesAndPads) {
  const std::string dir = tmp_dir("fw");
  const std::string path = dir + "/f.bin";
  std::string all;
  {
    FileWriter w(path, 4096);  // small buffer: many background flushes
    for (int i = 0; i < 1000; ++i) {
      const std::string piece(static_cast<size_t>(i % 97), static_cast<char>('a' + i % 26));
      w.write(piece.data(), piece.size());
      all += piece;
    }
    w.pad_to(64);
    all.append((64 - all.size() % 64) % 64, '\0');
    EXPECT_EQ(w.offset(), all.size());
    EXPECT_EQ(w.close(true), Hash64::of(all.data(), all.size()));
  }
  EXPECT_EQ(read_file(path), all);
  EXPECT_THROW(FileWriter(dir + "/no/such/dir/f.bin"), Error);
}

TEST(SafetensorsWriter, RoundTripsThroughTheReader) {
  const std::string path = tmp_dir("stw") + "/t.safetensors";
  const float a[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
  const uint16_t b[4] = {f32_to_bf16(1.0f), f32_to_bf16(-0.5f), f32_to_bf16(2.0f), f32_to_bf16(3.0f)};
  SafetensorsWriter w(path, {{"a", DType::F32, {2, 3}}, {"b.weight", DType::BF16, {4}}});
  w.write(a, sizeof a);
  w.write(b, 3);  // tensors may arrive in pieces
  w.write(reinterpret_cast<const uint8_t*>(b) + 3, 5);
  w.finish();
  const SafetensorsFile st = open_safetensors(path);
  ASSERT_EQ(st.tensors.size(), 2u);
  EXPECT_EQ(st.tensors.at("a").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(st.tensors.at("a").data, a, sizeof a), 0);
  EXPECT_EQ(st.tensors.at("b.weight").dtype, DType::BF16);
  EXPECT_EQ(std::memcmp(st.tensors.at("b.weight").data, b, sizeof b), 0);
  EXPECT_EQ(st.metadata.at("format"), "pt");
  EXPECT_EQ((st.tensors.at("a").data - st.file->data()) % 8, 0);  // header padded to 8 bytes

  SafetensorsWriter short_one(path, {{"a", DType::F32, {2}}});
  short_one.write(a, 4);
  EXPECT_THROW(short_one.finish(), Error);
  EXPECT_THROW(SafetensorsWriter(path, {{"q", DType::Q8_0, {32}}}), Error);
}

// ---- make-tiny ---------------------------------------------------------------------------

std::string make_tiny(const std::string& dir, const std::string& extra = "") {
  const auto r = run_cli("make-tiny --out " + dir + " " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

TEST(MakeTiny, SameSeedSameBytes) {
  const std::string a = tmp_dir("mt-a"), b = tmp_dir("mt-b"), c = tmp_dir("mt-c");
  make_tiny(a, "--seed 7");
  make_tiny(b, "--seed 7 --threads 1");  // the thread count must not matter
  make_tiny(c, "--seed 8");
  EXPECT_EQ(read_file(a + "/model.safetensors"), read_file(b + "/model.safetensors"));
  EXPECT_EQ(read_file(a + "/config.json"), read_file(b + "/config.json"));
  EXPECT_NE(read_file(a + "/model.safetensors"), read_file(c + "/model.safetensors"));
  EXPECT_EQ(read_file(a + "/tokenizer.model"),
            read_file(test::data_path("tiny-mixtral/hf/tokenizer.model")));
}

TEST(MakeTiny, TinyPresetLoadsWithTheRightShapes) {
  const std::string dir = tmp_dir("mt-load");
  make_tiny(dir);
  const LoadedModel m = load_model(dir);
  EXPECT_EQ(m.layout, "hf");
  const ModelConfig& c = m.config;
  test::expect_tiny_dims(c);
  EXPECT_FALSE(c.rope_interleaved);
  EXPECT_EQ(m.tokenizer.model_path, dir + "/tokenizer.model");
  EXPECT_EQ(m.store.get("layers.1.experts.7.w2").shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(m.store.get("tok_embeddings").dtype, DType::BF16);

  // Norms near 1, matrices with std ~ 1/sqrt(fan_in).
  auto values = [](const Tensor& t) {
    std::vector<float> v(static_cast<size_t>(t.numel()));
    dequantize_row(t.dtype, t.data, v.data(), t.numel());
    return v;
  };
  for (float x : values(m.store.get("layers.0.ffn_norm"))) EXPECT_NEAR(x, 1.0f, 0.11f);
  const auto w2 = values(m.store.get("layers.0.experts.3.w2"));
  double ss = 0;
  for (float x : w2) ss += double{x} * x;
  EXPECT_NEAR(std::sqrt(ss / static_cast<double>(w2.size())), 1 / std::sqrt(128.0), 0.01);

  // Logits stay sane: scoring gives finite values of modest size.
  ThreadPool pool(2);
  auto lm = std::make_shared<LoadedModel>(load_model(dir));
  auto model = make_model(lm, {}, pool);
  const ScoreResult r = score_tokens(*model, {1, 415, 2936, 9060, 285}, 3, DType::F32, pool);
  for (const auto& p : r.positions) {
    EXPECT_TRUE(std::isfinite(p.lse));
    EXPECT_LT(std::abs(p.top[0].second), 30.0f);
  }
}

TEST(MakeTiny, ShardedEqualsSingleFile) {
  const std::string one = tmp_dir("mt-one"), many = tmp_dir("mt-many");
  make_tiny(one, "--seed 3");
  make_tiny(many, "--seed 3 --shard-mb 1");
  ASSERT_TRUE(fs::exists(many + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(many + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(many + "/model-00001-of-00003.safetensors"));
  const LoadedModel a = load_model(one), b = load_model(many);
  ASSERT_EQ(a.store.tensors.size(), b.store.tensors.size());
  for (const auto& [name, t] : a.store.tensors) {
    const Tensor& u = b.store.get(name);
    ASSERT_EQ(t.nbytes(), u.nbytes()) << name;
    EXPECT_EQ(std::memcmp(t.data, u.data, t.nbytes()), 0) << name;
  }
  // Rewriting the folder as one file drops the old shards and index.
  make_tiny(many, "--seed 3");
  EXPECT_FALSE(fs::exists(many + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(many + "/model-00001-of-00003.safetensors"));
  EXPECT_EQ(read_file(many + "/model.safetensors"), read_file(one + "/model.safetensors"));
}

TEST(MakeTiny, CustomSizesOverrideThePreset) {
  const std::string dir = tmp_dir("mt-custom");
  make_tiny(dir, "--layers 1 --dim 128 --heads 8 --kv-heads 2 --ffn 96 --experts 4 --top-k 1");
  const LoadedModel m = load_model(dir);
  EXPECT_EQ(m.config.n_layers, 1);
  EXPECT_EQ(m.config.dim, 128);
  EXPECT_EQ(m.config.n_heads, 8);
  EXPECT_EQ(m.config.n_kv_heads, 2);
  EXPECT_EQ(m.config.head_dim, 16);
  EXPECT_EQ(m.config.ffn_dim, 96);
  EXPECT_EQ(m.config.n_experts, 4);
  EXPECT_EQ(m.config.top_k, 1);
  const auto cfg = nlohmann::json::parse(read_file(dir + "/config.json"));
  EXPECT_EQ(cfg["model_type"], "mixtral");
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
}

TEST(MakeTiny, BadArgumentsAreErrors) {
  const std::string dir = tmp_dir("mt-bad");
  auto err = [&](const std::string& args) {
    const auto r = run_cli("make-tiny --out " + dir + "/m " + args);
    EXPECT_NE(r.exit_code, 0) << args;
    return r.err;
  };
  EXPECT_NE(err("--heads 3").find("--dim 64 must be --heads (3)"), std::string::npos);
  EXPECT_NE(err("--kv-heads 3").find("--kv-heads 3 must divide"), std::string::npos);
  EXPECT_NE(err("--top-k 9").find("--top-k must be in [1, 8]"), std::string::npos);
  EXPECT_NE(err("--vocab 1000").find("differs from the 32000 pieces"), std::string::npos);
  EXPECT_NE(err("--tokenizer /nonexistent/tok.model").find("no such file"), std::string::npos);
  EXPECT_NE(err("--tokenizer " + test::data_path("tiny-mixtral/hf/config.json"))
                .find("not a SentencePiece model"),
            std::string::npos);
  EXPECT_NE(err("--preset huge").find("--preset must be"), std::string::npos);
  EXPECT_NE(err("--layers 0").find("--layers must be in"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir + "/m/model.safetensors"));
}

}  // namespace
}  // namespace mx
