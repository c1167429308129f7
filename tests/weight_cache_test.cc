// `mixtral repack` and the weight cache loader: exactness per dtype against the source and
// the PyTorch reference, cache hits, rank subsets, and every way a cache folder can be broken.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/model_loader.h"
#include "formats/repack.h"
#include "formats/safetensors_writer.h"
#include "formats/weight_cache.h"
#include "kernels/half.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"
#include "model/forward.h"
#include "runtime/reference_agreement.h"
#include "runtime/scoring.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace mx {
namespace {

using test::data_path;
using test::read_file;
using test::run_cli;
using test::tmp_dir;

const std::string kHf = data_path("tiny-mixtral/hf");

const json& expected() {
  static json j = json::parse(read_file(data_path("tiny-mixtral/expected.json")));
  return j;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Runs `fn`, expecting an mx::Error whose message contains `needle`.
template <typename Fn>
void expect_error(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// Repack through the CLI; returns stdout.
std::string repack_cli(const std::string& src, const std::string& out, const std::string& extra) {
  const auto r = run_cli("repack --model " + src + " --out " + out + " " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

// Every case of expected.json scored with an f32 KV cache.
std::vector<ScoreResult> score_all(const std::string& path, int top = 10) {
  ThreadPool pool(2);
  auto lm = std::make_shared<LoadedModel>(load_model(path));
  auto model = make_model(lm, {}, pool);
  std::vector<ScoreResult> out;
  for (const auto& c : expected()["cases"])
    out.push_back(score_tokens(*model, c["tokens"].get<std::vector<int>>(), top, DType::F32, pool));
  return out;
}

const std::vector<ScoreResult>& source_scores() {
  static const std::vector<ScoreResult> s = score_all(kHf);
  return s;
}

// The stored reference positions of each case against `got` (as tests/model_test.cc does).
void check_against_reference(const std::vector<ScoreResult>& got, double tol) {
  int checked = 0;
  for (size_t ci = 0; ci < expected()["cases"].size(); ++ci) {
    const auto& c = expected()["cases"][ci];
    const std::vector<int> idx = stored_positions(c, c["tokens"].size(), "expected.json");
    for (size_t n = 0; n < idx.size(); ++n) {
      const auto& want = c["positions"][n];
      const PositionScore& p = got[ci].positions[static_cast<size_t>(idx[n])];
      EXPECT_NEAR(p.lse, want["lse"].get<double>(), tol) << ci << ":" << idx[n];
      const auto& top = want["top"];
      if (top[0][1].get<double>() - top[1][1].get<double>() > 1e-4) {
        EXPECT_EQ(p.top[0].first, top[0][0].get<int>()) << ci << ":" << idx[n];
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 150);
}

// Agreement of a quantized cache with the reference. A random tiny model has near-tied
// router scores, so a rounding change can flip an expert at a position or two: bound the
// mean, most positions, and the top-1 agreement rather than every position.
// Top-1 agreement and mean |d log p| of the reference's top token (runtime/reference_agreement).
void check_close_to_reference(const std::string& dir, double max_mean_dlogprob, double min_top1) {
  ThreadPool pool(2);
  auto lm = std::make_shared<LoadedModel>(load_model(dir));
  auto model = make_model(lm, {}, pool);
  const ReferenceAgreement a = compare_with_reference(*model, expected(), DType::F32, pool, "expected.json");
  EXPECT_EQ(a.positions, 169);
  EXPECT_LE(a.mean_abs_dlogprob, max_mean_dlogprob);
  EXPECT_GE(a.top1(), min_top1) << a.top1_agree << " of " << a.positions;
}

json manifest(const std::string& dir) { return json::parse(read_file(dir + "/manifest.json")); }

// One cache per dtype, shared by the tests that only read it.
const std::string& cache(const std::string& dtype) {
  static std::map<std::string, std::string> made;
  auto it = made.find(dtype);
  if (it != made.end()) return it->second;
  const std::string dir = tmp_dir("wc-" + dtype) + "/cache";
  repack_cli(kHf, dir, "--dtype " + dtype + " --ranks 2");
  return made[dtype] = dir;
}

void copy_dir(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

// ---- exactness ---------------------------------------------------------------------------

TEST(Repack, F32HoldsExactlyTheSourceWeights) {
  const std::string dir = cache("f32");
  const LoadedModel src = load_model(kHf), c = load_model(dir);
  EXPECT_EQ(c.layout, "cache");
  EXPECT_EQ(to_json_string(c.config), to_json_string(src.config));
  ASSERT_EQ(c.store.tensors.size(), src.store.tensors.size());
  for (const auto& [name, t] : src.store.tensors) {
    const Tensor& u = c.store.get(name);
    EXPECT_EQ(u.dtype, DType::F32) << name;
    ASSERT_EQ(u.shape, t.shape) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(u.data) % 64, 0u) << name;
    std::vector<float> a(static_cast<size_t>(t.numel()));
    dequantize_row(t.dtype, t.data, a.data(), t.numel());
    EXPECT_EQ(std::memcmp(a.data(), u.data, a.size() * 4), 0) << name;  // bf16 -> f32 is exact
  }
  // Same weights; f32 and bf16 kernels may sum in another order, hence not bit-equal logits.
  const auto got = score_all(dir);
  for (size_t ci = 0; ci < got.size(); ++ci)
    for (size_t j = 0; j < got[ci].positions.size(); ++j) {
      EXPECT_NEAR(got[ci].positions[j].lse, source_scores()[ci].positions[j].lse, 1e-4);
      EXPECT_EQ(got[ci].positions[j].top[0].first, source_scores()[ci].positions[j].top[0].first);
    }
  check_against_reference(got, 1e-4);
}

TEST(Repack, Bf16GivesIdenticalLogits) {
  const std::string dir = cache("bf16");
  const auto got = score_all(dir);
  ASSERT_EQ(got.size(), source_scores().size());
  for (size_t ci = 0; ci < got.size(); ++ci) {
    ASSERT_EQ(got[ci].positions.size(), source_scores()[ci].positions.size());
    for (size_t j = 0; j < got[ci].positions.size(); ++j) {
      EXPECT_EQ(got[ci].positions[j].lse, source_scores()[ci].positions[j].lse) << ci << ":" << j;
      EXPECT_EQ(got[ci].positions[j].top, source_scores()[ci].positions[j].top) << ci << ":" << j;
    }
  }
  check_against_reference(got, 1e-4);
  const json m = manifest(dir);
  EXPECT_EQ(m["tensors"]["layers.0.ffn_norm"]["dtype"], "f32");  // norms always f32
  EXPECT_EQ(m["tensors"]["layers.0.attention.wq"]["dtype"], "bf16");
}

TEST(Repack, Q8StaysAsCloseAsLlamaCppQ8_0) {
  const std::string dir = cache("q8");
  const json m = manifest(dir);
  EXPECT_EQ(m["tensors"]["tok_embeddings"]["dtype"], "q8_0");  // looked up row by row
  // Matrices are Q8_0 with 16 rows interleaved (the same bytes, reordered for the kernels).
  EXPECT_EQ(m["tensors"]["layers.1.experts.4.w2"]["dtype"], "q8_0r16");
  EXPECT_EQ(m["tensors"]["output"]["dtype"], "q8_0r16");
  EXPECT_EQ(m["tensors"]["layers.1.gate"]["dtype"], "f32");
  EXPECT_EQ(m["tensors"]["norm"]["dtype"], "f32");
  // The same bounds as llama.cpp's q8_0 file (tests/model_test.cc): the tighter of llama.cpp
  // and exact arithmetic, exact's 159/169 and 0.055, plus two flips.
  check_close_to_reference(dir, 0.055 + 0.04, (159 - 2) / 169.0 - 1e-9);
  // Our Q8_0 encoder is ggml's: the expert matrices, deinterleaved, equal llama.cpp's own q8_0
  // conversion.
  // The GGUF fixture must load: a failure here is a loader bug, not a reason to skip.
  const LoadedModel g = load_model(data_path("tiny-mixtral/gguf/tiny-mixtral-q8_0.gguf"));
  const LoadedModel c = load_model(dir);
  int compared = 0;
  for (const auto& [name, t] : c.store.tensors) {
    if (canonical_expert(name) < 0 || !g.store.has(name)) continue;
    const Tensor& u = g.store.get(name);
    ASSERT_EQ(u.dtype, DType::Q8_0) << name;
    ASSERT_EQ(t.dtype, DType::Q8_0R16) << name;
    std::vector<uint8_t> rows(t.nbytes());
    const size_t group = 16 * t.row_stride();
    for (size_t g = 0; g < t.nbytes() / group; ++g)
      deinterleave_r16(DType::Q8_0R16, t.data + g * group, t.cols(), rows.data() + g * group);
    EXPECT_EQ(std::memcmp(u.data, rows.data(), t.nbytes()), 0) << name;
    ++compared;
  }
  EXPECT_EQ(compared, 2 * 8 * 3);
}

TEST(Repack, Q4StaysAsCloseAsLlamaCppQ4_0) {
  const std::string dir = cache("q4");
  EXPECT_EQ(manifest(dir)["tensors"]["layers.0.experts.3.w1"]["dtype"], "q4_0r16");
  EXPECT_EQ(manifest(dir)["tensors"]["tok_embeddings"]["dtype"], "q4_0");  // looked up by row
  EXPECT_EQ(manifest(dir)["tensors"]["output"]["dtype"], "q8_0r16");  // 8-bit, as llama-quantize keeps it
  // llama.cpp's q4_0 file, whose LM head is q8_0 too: exact arithmetic gives 0.575 and 63.9%.
  check_close_to_reference(dir, 0.575 + 0.04, 0.639 - 0.012);
  // llama.cpp's q4_0 GGUF repacked to q4 is reordered, not re-encoded: its expert matrices,
  // deinterleaved, are the GGUF's bytes.
  // The GGUF fixture must load: a failure here is a loader bug, not a reason to skip.
  const LoadedModel g = load_model(data_path("tiny-mixtral/gguf/tiny-mixtral-q4_0.gguf"));
  const std::string from_gguf = tmp_dir("wc-q4-gguf") + "/c";
  repack_cli(data_path("tiny-mixtral/gguf/tiny-mixtral-q4_0.gguf"), from_gguf, "--dtype q4");
  const LoadedModel c = load_model(from_gguf);
  int compared = 0;
  for (const auto& [name, t] : c.store.tensors) {
    if (canonical_expert(name) < 0) continue;
    const Tensor& u = g.store.get(name);
    if (u.dtype != DType::Q4_0) continue;
    ASSERT_EQ(t.dtype, DType::Q4_0R16) << name;
    std::vector<uint8_t> rows(t.nbytes());
    const size_t group = 16 * t.row_stride();
    for (size_t gi = 0; gi < t.nbytes() / group; ++gi)
      deinterleave_r16(t.dtype, t.data + gi * group, t.cols(), rows.data() + gi * group);
    EXPECT_EQ(std::memcmp(u.data, rows.data(), t.nbytes()), 0) << name;
    ++compared;
  }
  EXPECT_GT(compared, 0);
}

// On the 64-wide fixture no k-quant applies: q4k falls back exactly as llama-quantize's
// Q4_K_M does (Q5_0 / Q5_1 / Q8_0) and equals llama.cpp's q4_k_m file on every tensor.
TEST(Repack, Q4kOnNarrowRowsEqualsLlamaCppQ4_K_M) {
  const std::string dir = cache("q4k");
  const json m = manifest(dir);
  bool noted = false;
  for (const auto& n : m["notes"]) noted |= n.get<std::string>().find("not a multiple of 256") != std::string::npos;
  EXPECT_TRUE(noted);
  // The GGUF loader is part of every build: a failing load fails the test (never a skip).
  const LoadedModel g = load_model(data_path("tiny-mixtral/gguf/tiny-mixtral-q4_k_m.gguf"));
  const LoadedModel c = load_model(dir);
  int compared = 0;
  for (const auto& [name, t] : c.store.tensors) {
    const Tensor& u = g.store.get(name);
    ASSERT_EQ(r16_base(t.dtype), u.dtype) << name;
    // llama.cpp's converter reorders the rows of wq and wk for its rope layout.
    if (name.find(".attention.wq") != std::string::npos || name.find(".attention.wk") != std::string::npos) continue;
    std::vector<uint8_t> rows(t.nbytes());
    if (is_r16(t.dtype)) {
      const size_t group = 16 * t.row_stride();
      for (size_t gi = 0; gi < t.nbytes() / group; ++gi)
        deinterleave_r16(t.dtype, t.data + gi * group, t.cols(), rows.data() + gi * group);
    } else {
      std::memcpy(rows.data(), t.data, t.nbytes());
    }
    EXPECT_EQ(std::memcmp(u.data, rows.data(), t.nbytes()), 0) << name;
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(g.store.tensors.size()) - 4);
}

// q5k and q6k on the 64-wide fixture: their fallbacks (Q5_1, Q8_0); a k-quant cache is a hit
// when repeated and is rebuilt when it holds a plain matrix that now has an interleaved layout.
TEST(Repack, KQuantModesFallBackAndRebuildStaleCaches) {
  const std::string root = tmp_dir("wc-kmodes");
  repack_cli(kHf, root + "/q5k", "--dtype q5k");
  repack_cli(kHf, root + "/q6k", "--dtype q6k");
  const json m5 = manifest(root + "/q5k"), m6 = manifest(root + "/q6k");
  EXPECT_EQ(m5["tensors"]["layers.0.experts.1.w1"]["dtype"], "q5_1");
  EXPECT_EQ(m5["tensors"]["layers.1.experts.1.w2"]["dtype"], "q8_0r16");  // Q6_K's fallback
  EXPECT_EQ(m5["tensors"]["output"]["dtype"], "q8_0r16");
  EXPECT_EQ(m6["tensors"]["layers.0.experts.1.w1"]["dtype"], "q8_0r16");
  EXPECT_EQ(m6["tensors"]["tok_embeddings"]["dtype"], "q8_0");  // looked up by row: not interleaved
  EXPECT_EQ(m6["tensors"]["layers.0.gate"]["dtype"], "f32");
  EXPECT_NE(repack_cli(kHf, root + "/q5k", "--dtype q5k").find("cache hit"), std::string::npos);
  json old = m5;
  old["tensors"]["layers.0.attention.wk"]["dtype"] = "q8_0";
  write_file(root + "/q5k/manifest.json", old.dump(1));
  const auto up = run_cli("repack --model " + kHf + " --out " + root + "/q5k --dtype q5k");
  EXPECT_EQ(up.exit_code, 0) << up.err;
  EXPECT_NE(up.err.find("it holds plain q8_0 matrices (layers.0.attention.wk)"), std::string::npos) << up.err;
}

// The source's own scores as a reference for compare_with_reference.
json as_reference(const std::vector<ScoreResult>& got) {
  json ref = {{"cases", json::array()}};
  for (const auto& r : got) {
    json c = {{"tokens", r.tokens}, {"positions", json::array()}};
    for (const auto& p : r.positions) c["positions"].push_back({{"top", p.top}, {"lse", p.lse}});
    ref["cases"].push_back(c);
  }
  return ref;
}

ReferenceAgreement agreement(const std::string& dir, const json& ref) {
  ThreadPool pool(2);
  auto lm = std::make_shared<LoadedModel>(load_model(dir));
  auto model = make_model(lm, {}, pool);
  return compare_with_reference(*model, ref, DType::F32, pool, "source scores");
}

// A model 256 wide, where the k-quants apply: the types are llama-quantize's Q4_K_M choices,
// and the logits stay as close to the unquantized model's as measured (docs/accuracy.md).
TEST(Repack, Q4kFollowsQ4_K_MAndStaysCloseToTheSource) {
  const std::string dir = tmp_dir("wc-q4k-256");
  const auto mk = run_cli("make-tiny --out " + dir + "/src --dim 256 --ffn 512 --layers 2 --heads 4 "
                          "--kv-heads 2 --seed 7");
  ASSERT_EQ(mk.exit_code, 0) << mk.err;
  repack_cli(dir + "/src", dir + "/q4k", "--dtype q4k");
  const LoadedModel c = load_model(dir + "/q4k");
  // Interleaved or not (r16_storage), the row encoding is the type llama-quantize picks.
  auto base = [&](const std::string& n) { return r16_base(c.store.get(n).dtype); };
  EXPECT_EQ(base("tok_embeddings"), DType::Q4_K);
  EXPECT_EQ(base("output"), DType::Q6_K);
  EXPECT_EQ(base("layers.0.attention.wq"), DType::Q4_K);
  EXPECT_EQ(base("layers.0.attention.wk"), DType::Q8_0);
  EXPECT_EQ(base("layers.1.attention.wv"), DType::Q8_0);
  EXPECT_EQ(base("layers.0.attention.wo"), DType::Q5_K);
  EXPECT_EQ(base("layers.0.experts.5.w1"), DType::Q4_K);
  EXPECT_EQ(base("layers.0.experts.5.w3"), DType::Q4_K);
  EXPECT_EQ(base("layers.0.experts.5.w2"), DType::Q4_K);  // of 2 layers, the last gets Q6_K
  EXPECT_EQ(base("layers.1.experts.5.w2"), DType::Q6_K);
  EXPECT_EQ(base("layers.1.gate"), DType::F32);

  const json ref = as_reference(score_all(dir + "/src"));
  const ReferenceAgreement a = agreement(dir + "/q4k", ref);
  EXPECT_EQ(a.positions, 728);  // every position of the fixture's 6 prompts
  // Measured 0.429 and 42.3% (llama.cpp's Q4_K_M of the same weights in our engine: 0.417 and
  // 42.0%; the random model's near-tied logits make a few router flips worth ~0.02). A broken
  // scale or min moves every weight and the mean far beyond this.
  EXPECT_LE(a.mean_abs_dlogprob, 0.47);
  EXPECT_GE(a.top1(), 0.39);
  // And clearly closer than the legacy 4-bit mix (0.553, 36.8%).
  repack_cli(dir + "/src", dir + "/q4", "--dtype q4");
  const ReferenceAgreement b = agreement(dir + "/q4", ref);
  EXPECT_LT(a.mean_abs_dlogprob, b.mean_abs_dlogprob - 0.08);
}

TEST(Repack, ColumnsNotAMultipleOf32StayF32) {
  const std::string dir = tmp_dir("wc-odd");
  const auto mk = run_cli("make-tiny --out " + dir + "/src --dim 48 --heads 4 --kv-heads 2 --ffn 80 --layers 1");
  ASSERT_EQ(mk.exit_code, 0) << mk.err;
  const auto r = run_cli("repack --model " + dir + "/src --out " + dir + "/q8 --dtype q8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("kept in f32: its rows have 48 columns"), std::string::npos) << r.err;
  const json m = manifest(dir + "/q8");
  EXPECT_EQ(m["tensors"]["layers.0.experts.0.w1"]["dtype"], "f32");  // 48 columns
  EXPECT_EQ(m["tensors"]["layers.0.experts.0.w2"]["dtype"], "f32");  // 80 columns
  EXPECT_EQ(m["tensors"]["layers.0.attention.wo"]["dtype"], "f32");  // 48 columns
  bool noted = false;
  for (const auto& n : m["notes"]) noted |= n.get<std::string>().find("layers.0.experts.0.w2") != std::string::npos;
  EXPECT_TRUE(noted);
  const LoadedModel c = load_model(dir + "/q8");  // and it loads
  EXPECT_EQ(c.config.dim, 48);
}

TEST(Repack, FromACacheAndKeepIsBitExact) {
  // A cache is a valid source too; "keep" copies every tensor's bytes.
  const std::string dir = tmp_dir("wc-keep") + "/c";
  repack_cli(cache("q8"), dir, "");
  const LoadedModel a = load_model(cache("q8")), b = load_model(dir);
  EXPECT_EQ(manifest(dir)["source"]["layout"], "cache");
  for (const auto& [name, t] : a.store.tensors) {
    const Tensor& u = b.store.get(name);
    ASSERT_EQ(u.dtype, t.dtype) << name;
    EXPECT_EQ(std::memcmp(u.data, t.data, t.nbytes()), 0) << name;
  }
}

TEST(Repack, GgufKeepsItsTypesAndVocabulary) {
  const std::string src = data_path("tiny-mixtral/gguf/tiny-mixtral-q4_k_m.gguf");
  // The GGUF fixture must load: a failure here is a loader bug, not a reason to skip.
  const LoadedModel g = load_model(src);
  const std::string dir = tmp_dir("wc-gguf") + "/c";
  repack_cli(src, dir, "");
  const json m = manifest(dir);
  std::set<std::string> types;
  for (const auto& [name, t] : m["tensors"].items()) types.insert(t["dtype"].get<std::string>());
  // At dim 64 llama.cpp's Q4_K_M falls back to 32-element types; they are kept as they are.
  EXPECT_TRUE(types.count("q5_0") && types.count("q5_1")) << m["tensors"].dump();
  const LoadedModel c = load_model(dir);
  for (const auto& [name, t] : g.store.tensors) {
    const Tensor& u = c.store.get(name);
    if (t.shape.size() == 1) continue;  // norms became f32
    ASSERT_EQ(u.dtype, t.dtype) << name;
    EXPECT_EQ(std::memcmp(u.data, t.data, t.nbytes()), 0) << name;
  }
  EXPECT_EQ(c.tokenizer.pieces, g.tokenizer.pieces);
  EXPECT_EQ(c.tokenizer.scores, g.tokenizer.scores);
  EXPECT_EQ(c.tokenizer.types, g.tokenizer.types);
  EXPECT_EQ(c.tokenizer.bos_id, g.tokenizer.bos_id);
  EXPECT_EQ(c.tokenizer.eos_id, g.tokenizer.eos_id);
  // Same bytes, same kernels: the same logits.
  const auto a = score_all(src), b = score_all(dir);
  for (size_t ci = 0; ci < a.size(); ++ci)
    for (size_t j = 0; j < a[ci].positions.size(); ++j)
      EXPECT_EQ(a[ci].positions[j].top, b[ci].positions[j].top) << ci << ":" << j;
  if (g.tokenizer.model_path.empty()) {
    EXPECT_TRUE(fs::exists(dir + "/tokenizer.json"));
  }

  // An explicit dtype converts the k-quants.
  const std::string q8 = tmp_dir("wc-gguf-q8") + "/c";
  repack_cli(src, q8, "--dtype q8");
  EXPECT_EQ(manifest(q8)["tensors"]["layers.0.experts.1.w3"]["dtype"], "q8_0r16");
  EXPECT_NO_THROW(load_model(q8));
  // A Q8_0 GGUF repacks without re-encoding: the q8_0r16 matrices hold its bytes, and a second
  // repack of that cache to bf16 decodes them exactly as the GGUF's own rows decode.
  const std::string gq8 = data_path("tiny-mixtral/gguf/tiny-mixtral-q8_0.gguf");
  const std::string c8 = tmp_dir("wc-gguf-q8-lossless") + "/c";
  repack_cli(gq8, c8, "--dtype q8");
  const LoadedModel ga = load_model(gq8), gb = load_model(c8);
  const Tensor& ta = ga.store.get("layers.1.experts.2.w1");
  const Tensor& tb = gb.store.get("layers.1.experts.2.w1");
  ASSERT_EQ(tb.dtype, DType::Q8_0R16);
  std::vector<float> fa(static_cast<size_t>(ta.numel())), fb(fa.size());
  dequantize_rows(ta.dtype, ta.data, ta.cols(), 0, ta.rows(), fa.data());
  dequantize_rows(tb.dtype, tb.data, tb.cols(), 0, tb.rows(), fb.data());
  EXPECT_EQ(0, std::memcmp(fa.data(), fb.data(), fa.size() * sizeof(float)));
  const std::string back = tmp_dir("wc-gguf-q8-back") + "/c";
  repack_cli(c8, back, "--dtype bf16");
  const LoadedModel gc = load_model(back);
  const Tensor& tc = gc.store.get("layers.1.experts.2.w1");
  ASSERT_EQ(tc.dtype, DType::BF16);
  std::vector<float> fc(fa.size());
  dequantize_rows(tc.dtype, tc.data, tc.cols(), 0, tc.rows(), fc.data());
  for (size_t i = 0; i < fa.size(); i += 97) EXPECT_EQ(fc[i], bf16_to_f32(f32_to_bf16(fa[i]))) << i;
}

TEST(TokenizerVocab, RoundTripsInvalidUtf8Pieces) {
  TokenizerSource t;
  t.pieces = {"<unk>", "\xe2\x96\x81the", std::string("\xff\xfe", 2), std::string("a\0b", 3)};
  t.scores = {0, -1.5f, -2, -3};
  t.types = {2, 1, 6, 1};
  t.bos_id = 5;
  t.eos_id = 6;
  t.unk_id = 0;
  TokenizerSource u;
  tokenizer_vocab_from_json(tokenizer_vocab_to_json(t), "tokenizer.json", &u);
  EXPECT_EQ(u.pieces, t.pieces);
  EXPECT_EQ(u.scores, t.scores);
  EXPECT_EQ(u.types, t.types);
  EXPECT_EQ(u.bos_id, 5);
  EXPECT_EQ(u.eos_id, 6);
  expect_error([&] { tokenizer_vocab_from_json("{\"pieces\":[\"a\"],\"scores\":[],\"types\":[]}", "tok.json", &u); },
               "tok.json: 'pieces' (1), 'scores' (0)");
}

// ---- cache hits, replacement, atomicity --------------------------------------------------

TEST(Repack, SecondRunIsACacheHit) {
  const std::string dir = tmp_dir("wc-hit") + "/c";
  EXPECT_NE(repack_cli(kHf, dir, "--dtype q8").find("wrote"), std::string::npos);
  const auto before = fs::last_write_time(dir + "/shared.bin");
  EXPECT_NE(repack_cli(kHf, dir, "--dtype q8").find("cache hit: " + dir + " is up to date"),
            std::string::npos);
  EXPECT_EQ(fs::last_write_time(dir + "/shared.bin"), before);
  // A q8 cache from before the q8_0r16 layout (plain q8_0 matrices) is rebuilt.
  json old = manifest(dir);
  old["tensors"]["layers.0.attention.wq"]["dtype"] = "q8_0";
  write_file(dir + "/manifest.json", old.dump(1));
  const auto up = run_cli("repack --model " + kHf + " --out " + dir + " --dtype q8");
  EXPECT_EQ(up.exit_code, 0) << up.err;
  EXPECT_NE(up.err.find("it holds plain q8_0 matrices (layers.0.attention.wq)"), std::string::npos) << up.err;
  EXPECT_EQ(manifest(dir)["tensors"]["layers.0.attention.wq"]["dtype"], "q8_0r16");
  // Another dtype or rank count is not a hit: the cache is replaced in place.
  const auto r = run_cli("repack --model " + kHf + " --out " + dir + " --dtype bf16");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("rebuilding"), std::string::npos) << r.err;
  EXPECT_EQ(manifest(dir)["dtype"], "bf16");
  EXPECT_NE(repack_cli(kHf, dir, "--dtype bf16 --ranks 4").find("wrote"), std::string::npos);
  EXPECT_NE(repack_cli(kHf, dir, "--dtype bf16 --ranks 4").find("cache hit"), std::string::npos);
  // No temporary or old folders are left next to it.
  for (const auto& e : fs::directory_iterator(fs::path(dir).parent_path()))
    EXPECT_EQ(e.path().filename(), "c") << e.path();
}

TEST(Repack, ChangedSourceOrDamagedCacheRebuilds) {
  const std::string root = tmp_dir("wc-changed");
  copy_dir(kHf, root + "/src");
  repack_cli(root + "/src", root + "/c", "--dtype bf16");
  EXPECT_NE(repack_cli(root + "/src", root + "/c", "--dtype bf16").find("cache hit"), std::string::npos);
  // A source file's mtime changes (e.g. re-downloaded): rebuild.
  fs::last_write_time(root + "/src/config.json",
                      fs::last_write_time(root + "/src/config.json") + std::chrono::seconds(5));
  EXPECT_NE(repack_cli(root + "/src", root + "/c", "--dtype bf16").find("wrote"), std::string::npos);
  // An expert file is gone: rebuild rather than claim the cache is up to date.
  fs::remove(root + "/c/expert-002.bin");
  EXPECT_NE(repack_cli(root + "/src", root + "/c", "--dtype bf16").find("wrote"), std::string::npos);
  EXPECT_TRUE(fs::exists(root + "/c/expert-002.bin"));
}

TEST(Repack, RefusesToReplaceSomethingElse) {
  const std::string root = tmp_dir("wc-refuse");
  fs::create_directories(root + "/notacache");
  write_file(root + "/notacache/precious.txt", "data");
  const auto r = run_cli("repack --model " + kHf + " --out " + root + "/notacache");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("holds no mixtral cache; refusing to replace it"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(root + "/notacache/precious.txt"));
  const auto same = run_cli("repack --model " + kHf + " --out " + kHf);
  EXPECT_NE(same.exit_code, 0);
  EXPECT_NE(same.err.find("is the source itself"), std::string::npos) << same.err;
  const auto bad = run_cli("repack --model " + kHf + " --out " + root + "/x --dtype q5");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--dtype must be one of"), std::string::npos) << bad.err;
  // 65 ranks would split each of the 8 experts 9 ways; its 128 hidden rows are 8 groups of 16.
  const auto ranks = run_cli("repack --model " + kHf + " --out " + root + "/x --ranks 65");
  EXPECT_NE(ranks.exit_code, 0);
  EXPECT_NE(ranks.err.find("--ranks 65: " + kHf + ": expert hidden size 128 has only 8 16-row groups, too few to split over 9 ranks"),
            std::string::npos) << ranks.err;
  EXPECT_FALSE(fs::exists(root + "/x"));
  for (const auto& e : fs::directory_iterator(root))  // failed runs clean up their tmp folder
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

TEST(Repack, InterruptedRunLeavesNothingLoadable) {
  const std::string root = tmp_dir("wc-interrupt");
  // What a killed repack leaves: DIR.tmp-<pid> with weight files but no manifest, no DIR.
  copy_dir(cache("bf16"), root + "/c.tmp-123");
  fs::remove(root + "/c.tmp-123/manifest.json");
  expect_error([&] { load_model(root + "/c"); }, "no such file or folder");
  expect_error([&] { load_model(root + "/c.tmp-123"); }, "no Mixtral checkpoint recognized");
  expect_error([&] { load_weight_cache(root + "/c.tmp-123", {}); }, "no manifest.json");
  // The next repack says so and succeeds.
  const auto r = run_cli("repack --model " + kHf + " --out " + root + "/c --dtype bf16");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("c.tmp-123 is left over from an interrupted repack"), std::string::npos) << r.err;
  EXPECT_NO_THROW(load_model(root + "/c"));
}

TEST(Repack, LibraryApiReportsHitAndNotes) {
  const std::string dir = tmp_dir("wc-api") + "/not/yet/there/c";
  RepackOptions o;
  o.model = kHf;
  o.out = dir;
  o.dtype = "q4";
  o.threads = 1;
  std::vector<std::string> log;
  o.log = [&](const std::string& s) { log.push_back(s); };
  RepackResult r = repack(o);
  EXPECT_FALSE(r.cache_hit);
  EXPECT_EQ(r.files, 9);
  EXPECT_EQ(r.bytes, fs::file_size(dir + "/shared.bin") + 8 * fs::file_size(dir + "/expert-000.bin"));
  EXPECT_FALSE(r.notes.empty());
  EXPECT_FALSE(log.empty());
  r = repack(o);
  EXPECT_TRUE(r.cache_hit);
}

// ---- manifest and ranks ------------------------------------------------------------------

TEST(Manifest, DescribesEveryFileAndTensor) {
  const std::string dir = cache("q8");
  const json m = manifest(dir);
  EXPECT_EQ(m["format"], "mixtral-weight-cache");
  EXPECT_EQ(m["version"], 1);
  EXPECT_EQ(m["dtype"], "q8");
  EXPECT_EQ(m["config"]["n_experts"], 8);
  EXPECT_EQ(m["source"]["layout"], "hf");
  EXPECT_FALSE(m["source"]["files"].empty());
  EXPECT_EQ(m["tokenizer"]["model_file"], "tokenizer.model");
  EXPECT_EQ(read_file(dir + "/tokenizer.model"), read_file(kHf + "/tokenizer.model"));
  std::set<std::string> names;
  for (const auto& f : m["files"]) {
    names.insert(f["name"].get<std::string>());
    EXPECT_EQ(fs::file_size(dir + "/" + f["name"].get<std::string>()), f["size"].get<uint64_t>());
    const std::string bytes = read_file(dir + "/" + f["name"].get<std::string>());
    EXPECT_EQ(hex64(Hash64::of(bytes.data(), bytes.size())), f["xxh64"]) << f["name"];
  }
  EXPECT_TRUE(names.count("shared.bin") && names.count("expert-000.bin") && names.count("expert-007.bin"));
  EXPECT_EQ(m["tensors"].size(), 3u + 2 * 7 + 2 * 8 * 3);
  for (const auto& [name, t] : m["tensors"].items()) {
    EXPECT_EQ(t["offset"].get<uint64_t>() % 64, 0u) << name;
    const int e = canonical_expert(name);
    EXPECT_EQ(t["file"], e >= 0 ? cache_expert_file(e) : "shared.bin") << name;
  }
  EXPECT_EQ(read_file(dir + "/shared.bin").substr(0, 8), "MXWCACHE");
  // --ranks 2: rank 0 needs shared + experts 0-3, rank 1 shared + experts 4-7.
  ASSERT_EQ(m["ranks"]["count"], 2);
  const auto r0 = m["ranks"]["files"][0].get<std::vector<std::string>>();
  const auto r1 = m["ranks"]["files"][1].get<std::vector<std::string>>();
  auto has = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  EXPECT_TRUE(has(r0, "shared.bin") && has(r0, "expert-003.bin") && !has(r0, "expert-004.bin"));
  EXPECT_TRUE(has(r1, "shared.bin") && has(r1, "expert-004.bin") && has(r1, "expert-007.bin") &&
              !has(r1, "expert-000.bin"));
  EXPECT_TRUE(has(r0, "tokenizer.model") && has(r1, "tokenizer.model"));
}

TEST(Ranks, AHostNeedsOnlyItsOwnExpertFiles) {
  const std::string dir = tmp_dir("wc-ranks") + "/c";
  copy_dir(cache("q8"), dir);
  for (int e = 0; e < 4; ++e) fs::remove(dir + "/" + cache_expert_file(e));
  LoadOptions r1;
  r1.rank = 1;
  r1.n_ranks = 2;
  const LoadedModel m = load_model(dir, r1);
  EXPECT_TRUE(m.store.has("layers.1.experts.4.w1"));
  EXPECT_TRUE(m.store.has("layers.0.experts.7.w2"));
  EXPECT_FALSE(m.store.has("layers.0.experts.3.w1"));
  EXPECT_TRUE(m.store.has("layers.0.attention.wq"));
  EXPECT_EQ(m.store.files.size(), 5u);  // shared + 4 experts: nothing else is mapped
  LoadOptions r0;
  r0.rank = 0;
  r0.n_ranks = 2;
  expect_error([&] { load_model(dir, r0); }, dir + "/expert-000.bin: missing; this rank (0 of 2) owns expert 0");
  fs::remove(dir + "/expert-005.bin");
  expect_error([&] { load_model(dir, r1); }, dir + "/expert-005.bin: missing");
  fs::remove(dir + "/shared.bin");
  expect_error([&] { load_model(dir, r1); }, dir + "/shared.bin: missing; every rank needs it");
}

// More ranks than experts (split experts): rank 9 of 16 holds part 1 of expert 1, so its bundle
// is the shared file and expert 1's, and it loads from just those.
TEST(Ranks, SplitRanksListAndNeedOnlyTheirExpertsFile) {
  const std::string dir = tmp_dir("wc-ranks16") + "/c";
  ASSERT_NE(repack_cli(kHf, dir, "--dtype q8 --ranks 16").find("wrote"), std::string::npos);
  const json m = manifest(dir);
  ASSERT_EQ(m["ranks"]["count"], 16);
  const auto r9 = m["ranks"]["files"][9].get<std::vector<std::string>>();
  const std::vector<std::string> want = {"shared.bin", "expert-001.bin", "tokenizer.model"};
  EXPECT_EQ(std::set<std::string>(r9.begin(), r9.end()), std::set<std::string>(want.begin(), want.end()));
  for (int e = 0; e < 8; ++e)
    if (e != 1) fs::remove(dir + "/" + cache_expert_file(e));
  LoadOptions r;
  r.rank = 9;
  r.n_ranks = 16;
  const LoadedModel lm = load_model(dir, r);
  EXPECT_TRUE(lm.store.has("layers.0.experts.1.w2"));
  EXPECT_FALSE(lm.store.has("layers.0.experts.0.w1"));
  r.rank = 8;  // part 1 of expert 0, whose file is gone
  expect_error([&] { load_model(dir, r); }, dir + "/expert-000.bin: missing; this rank (8 of 16) owns expert 0");
}

// ---- broken caches -----------------------------------------------------------------------

class Broken : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_dir("wc-broken") + "/c";
    copy_dir(cache("bf16"), dir_);
    m_ = manifest(dir_);
  }
  void save() { write_file(dir_ + "/manifest.json", m_.dump(1)); }
  void expect_load_error(const std::string& needle) {
    expect_error([&] { load_model(dir_); }, needle);
  }
  std::string dir_;
  json m_;
};

TEST_F(Broken, ManifestIsNotJson) {
  write_file(dir_ + "/manifest.json", "{\"format\": \"mixtral-weight-cache\", ");
  expect_load_error(dir_ + "/manifest.json: not valid JSON");
}

TEST_F(Broken, WrongVersion) {
  m_["version"] = 2;
  save();
  expect_load_error("cache format version 2 is not the one this build reads (1)");
}

TEST_F(Broken, MissingFields) {
  m_["tensors"]["layers.1.attention.wk"].erase("dtype");
  save();
  expect_load_error("missing required field 'tensors.layers.1.attention.wk.dtype'");
  SetUp();
  m_.erase("config");
  save();
  expect_load_error("missing required field 'config'");
  SetUp();
  m_["config"].erase("n_kv_heads");
  save();
  expect_load_error("config missing required field 'n_kv_heads'");
  SetUp();
  m_["files"][0].erase("xxh64");
  save();
  expect_load_error("missing required field 'files[0].xxh64'");
  SetUp();
  m_["tensors"].erase("layers.0.gate");
  save();
  expect_load_error("missing tensor layers.0.gate");
}

TEST_F(Broken, OffsetOutsideTheFile) {
  const uint64_t size = fs::file_size(dir_ + "/shared.bin");
  m_["tensors"]["output"]["offset"] = (size + 64) / 64 * 64;
  save();
  expect_load_error("tensor output: bytes [");
  expect_load_error("lie outside shared.bin");
}

TEST_F(Broken, MisalignedOrOverlappingOrMisfiled) {
  m_["tensors"]["norm"]["offset"] = m_["tensors"]["norm"]["offset"].get<uint64_t>() + 4;
  save();
  expect_load_error("tensor norm: offset");
  expect_load_error("is not 64-byte aligned");
  SetUp();
  m_["tensors"]["output"]["offset"] = m_["tensors"]["tok_embeddings"]["offset"];
  save();
  expect_load_error("overlap in shared.bin");
  SetUp();
  m_["tensors"]["layers.0.experts.2.w1"]["file"] = "expert-003.bin";
  save();
  expect_load_error("tensor layers.0.experts.2.w1: is stored in expert-003.bin, which is the wrong file");
  SetUp();
  m_["tensors"]["norm"]["file"] = "../../etc/passwd";
  save();
  expect_load_error("is not a plain file name");
  SetUp();  // a long bad name is quoted only in part
  m_["tensors"]["norm"]["file"] = "/" + std::string(100000, 'x');
  save();
  try {
    load_model(dir_);
    ADD_FAILURE() << "no error for a 100 kB file name";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a plain file name: \"/xxx"), std::string::npos) << e.what();
    EXPECT_LT(std::string(e.what()).size(), 400u);
  }
  SetUp();
  m_["tensors"]["norm"]["shape"] = {100};
  save();
  expect_load_error("tensor norm: shape [100] of f32 needs 400 bytes, manifest says 256");
  SetUp();
  m_["tensors"]["norm"]["dtype"] = "q8_0r16";
  save();
  expect_load_error("tensor norm: q8_0r16 needs a 2-D shape with a multiple of 16 rows, not [");
  SetUp();
  m_["tensors"]["layers.0.attention.wq"]["dtype"] = "q8_0r16";
  m_["tensors"]["layers.0.attention.wq"]["shape"] = {24, 64};
  save();
  expect_load_error("tensor layers.0.attention.wq: q8_0r16 needs a 2-D shape with a multiple of 16 rows, not [24, 64]");
}

TEST_F(Broken, TruncatedOrReplacedFiles) {
  fs::resize_file(dir_ + "/expert-006.bin", fs::file_size(dir_ + "/expert-006.bin") - 100);
  expect_load_error(dir_ + "/expert-006.bin: is ");
  expect_load_error("the manifest says");
  SetUp();
  std::string bytes = read_file(dir_ + "/shared.bin");
  bytes[0] = 'X';
  write_file(dir_ + "/shared.bin", bytes);
  expect_load_error("shared.bin: does not start with the cache header");
}

TEST_F(Broken, ChecksumsAreVerifiedOnRequest) {
  std::string bytes = read_file(dir_ + "/expert-003.bin");
  bytes[bytes.size() / 2] ^= 0x40;
  write_file(dir_ + "/expert-003.bin", bytes);
  EXPECT_NO_THROW(load_model(dir_));  // by default only sizes and headers are checked
  ::setenv("MIXTRAL_VERIFY_CACHE", "1", 1);
  expect_load_error(dir_ + "/expert-003.bin: checksum");
  ::unsetenv("MIXTRAL_VERIFY_CACHE");
  expect_error([&] { verify_weight_cache(dir_, {}); }, "expert-003.bin: checksum");
  LoadOptions r0;
  r0.n_ranks = 2;
  EXPECT_NO_THROW(verify_weight_cache(dir_, LoadOptions{1, 2}));  // rank 1 does not read it
  EXPECT_THROW(verify_weight_cache(dir_, r0), Error);
}

TEST_F(Broken, MissingTokenizer) {
  fs::remove(dir_ + "/tokenizer.model");
  expect_load_error("tokenizer.model: missing; the manifest lists it as the tokenizer");
}

}  // namespace
}  // namespace mx
