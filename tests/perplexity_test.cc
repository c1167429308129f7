// `mixtral perplexity` on the tiny random model: llama-perplexity's chunking and scoring rule,
// the base log-probs file round trip (a model against itself has KLD 0), and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "formats/error.h"
#include "formats/model_loader.h"
#include "kernels/thread_pool.h"
#include "model/forward.h"
#include "runtime/perplexity.h"
#include "runtime/scoring.h"
#include "runtime/tokenizer.h"
#include "test_util.h"

namespace mx {
namespace {

const std::string kHf = test::data_path("tiny-mixtral/hf");
constexpr int kBos = 1;

std::unique_ptr<Model> load_tiny(ThreadPool& pool) {
  auto lm = std::make_shared<LoadedModel>(load_model(kHf));
  return make_model(lm, {}, pool);
}

// A deterministic token stream (BOS first, as a tokenized file starts) of ordinary ids.
std::vector<int> stream(int n) {
  std::vector<int> t{kBos};
  for (int i = 1; i < n; ++i) t.push_back(300 + (i * 7919) % 20000);
  return t;
}

template <class F>
void expect_error(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Perplexity, PlanCutsWholeChunksAndScoresTheSecondHalf) {
  const PerplexityPlan p = plan_perplexity(1100, 512, -1, 4096, "t.txt");
  EXPECT_EQ(p.n_chunk, 2);  // 1100 / 512, the tail is dropped
  EXPECT_EQ(p.first, 256);
  EXPECT_EQ(p.scored, 255);
  EXPECT_EQ(plan_perplexity(5000, 512, 3, 4096, "t.txt").n_chunk, 3);
  EXPECT_EQ(plan_perplexity(5000, 16, -1, 4096, "t.txt").scored, 7);
  const std::vector<int> t = stream(40);
  const std::vector<int> c1 = chunk_tokens(t, plan_perplexity(40, 16, -1, 64, "t"), 1, kBos);
  ASSERT_EQ(c1.size(), 16u);
  EXPECT_EQ(c1[0], kBos);  // chunk 1 starts at token 16, replaced by BOS
  EXPECT_EQ(c1[1], t[17]);
  EXPECT_EQ(c1[15], t[31]);
}

TEST(Perplexity, BadPlansAreRefusedWithTheReason) {
  expect_error([] { plan_perplexity(5000, 4, -1, 4096, "t.txt"); }, "--ctx 4 is too small");
  expect_error([] { plan_perplexity(50000, 8192, -1, 4096, "t.txt"); }, "larger than the model's context of 4096");
  expect_error([] { plan_perplexity(1000, 512, -1, 4096, "t.txt"); }, "t.txt: tokenizes to only 1000 tokens");
}

TEST(Perplexity, MatchesTheScoringRuleOnEachChunk) {
  ThreadPool pool(2);
  auto m = load_tiny(pool);
  const std::vector<int> t = stream(50);  // 3 chunks of 16, 2 tokens left over
  PerplexityOptions o;
  o.ctx = 16;
  const PerplexityResult r = run_perplexity(*m, t, kBos, o, "stream", pool);
  ASSERT_EQ(r.plan.n_chunk, 3);
  EXPECT_EQ(r.count, 3u * 7u);
  // By hand: each chunk alone with BOS first, positions 8..14 predicting tokens 9..15.
  const int vocab = m->config.vocab;
  double nll = 0;
  for (int c = 0; c < 3; ++c) {
    std::vector<int> ids(t.begin() + c * 16, t.begin() + c * 16 + 16);
    ids[0] = kBos;
    const std::vector<float> lg = sequence_logits(*m, ids, DType::F32, pool);
    for (int j = 8; j < 15; ++j) {
      const PositionScore s = score_logits(lg.data() + static_cast<size_t>(j) * vocab, vocab, 1);
      nll += s.lse - lg[static_cast<size_t>(j) * vocab + ids[j + 1]];
    }
  }
  EXPECT_NEAR(std::log(r.ppl.mean), nll / 21, 1e-6);
  EXPECT_GT(r.ppl.err, 0);
  // Random weights over 32000 ids: near-uniform, so PPL is in the thousands.
  EXPECT_GT(r.ppl.mean, 1000);
}

TEST(Perplexity, AModelAgainstItsOwnLogitsHasZeroKld) {
  ThreadPool pool(2);
  auto m = load_tiny(pool);
  const std::vector<int> t = stream(130);
  const std::string base = test::tmp_dir("ppl_self") + "/base.logp";
  PerplexityOptions o;
  o.ctx = 32;
  o.save_logits = base;
  const PerplexityResult saved = run_perplexity(*m, t, kBos, o, "stream", pool);
  const LogitsFile f = read_logits_header(base);
  EXPECT_EQ(f.ctx, 32);
  EXPECT_EQ(f.n_chunk, 4);
  EXPECT_EQ(f.vocab, 32000);
  EXPECT_EQ(f.tokens, std::vector<int>(t.begin(), t.begin() + 128));

  o.save_logits.clear();
  o.kl_base = base;
  const PerplexityResult r = run_perplexity(*m, t, kBos, o, "stream", pool);
  ASSERT_TRUE(r.has_kl);
  EXPECT_EQ(r.count, 4u * 15u);
  EXPECT_LT(std::fabs(r.kl.kld.mean), 1e-6);
  EXPECT_LT(r.kl.kld_max, 1e-5);
  EXPECT_DOUBLE_EQ(r.kl.same_top.mean, 1.0);
  EXPECT_NEAR(r.kl.ppl_ratio.mean, 1.0, 1e-6);
  EXPECT_NEAR(r.kl.ppl_base.mean, saved.ppl.mean, 1e-3 * saved.ppl.mean);
  EXPECT_LT(r.kl.rms_p_diff.mean, 1e-6);

  // A real difference shows: the bf16 KV cache against the f32 base.
  o.kv_dtype = DType::BF16;
  const PerplexityResult q = run_perplexity(*m, t, kBos, o, "stream", pool);
  EXPECT_GT(q.kl.kld.mean, 1e-7);
  EXPECT_GT(q.kl.kld_max, q.kl.kld_median);
  EXPECT_GT(q.kl.rms_p_diff.mean, 0);
}

TEST(Perplexity, MismatchedBaseFilesAreRefused) {
  ThreadPool pool(2);
  auto m = load_tiny(pool);
  const std::vector<int> t = stream(80);
  const std::string dir = test::tmp_dir("ppl_mismatch");
  PerplexityOptions o;
  o.ctx = 16;
  o.save_logits = dir + "/base.logp";
  run_perplexity(*m, t, kBos, o, "stream", pool);
  o.save_logits.clear();
  o.kl_base = dir + "/base.logp";

  std::vector<int> other = t;
  other[20] = 4242;
  expect_error([&] { run_perplexity(*m, other, kBos, o, "other.txt", pool); },
               "token 20 differs from other.txt");
  PerplexityOptions wrong_ctx = o;
  wrong_ctx.ctx = 8;
  expect_error([&] { run_perplexity(*m, t, kBos, wrong_ctx, "t", pool); }, "saved with --ctx 16");
  expect_error([&] { check_logits_match(read_logits_header(o.kl_base), 32001, 16, t, 5, "t"); },
               "vocabulary of 32000");
  std::vector<int> longer = stream(200);
  expect_error([&] { run_perplexity(*m, longer, kBos, o, "t", pool); }, "holds 5 chunks");

  // Truncated and foreign files.
  const std::string bytes = test::read_file(o.kl_base);
  std::ofstream(dir + "/short.logp", std::ios::binary) << bytes.substr(0, bytes.size() - 10);
  expect_error([&] { read_logits_header(dir + "/short.logp"); }, "truncated");
  std::ofstream(dir + "/text.logp") << "hello, world; not logits at all";
  expect_error([&] { read_logits_header(dir + "/text.logp"); }, "bad magic");
  expect_error([&] { read_logits_header(dir + "/missing.logp"); }, "cannot open");
}

// The shipped trained model on its held-out text: the training script's PyTorch model in f32
// scores the first 8 chunks at 327.7687 (tools/train/eval.py --chunks 8, see
// models/tale-mixtral/README.md); ours must agree to 4 significant figures and more.
TEST(Perplexity, TrainedModelMatchesThePyTorchReference) {
  const std::string dir = std::string(MIXTRAL_SOURCE_DIR) + "/models/tale-mixtral";
  ThreadPool pool(2);
  auto lm = std::make_shared<LoadedModel>(load_model(dir));
  const Tokenizer tok = Tokenizer::load(lm->tokenizer);
  auto m = make_model(lm, {}, pool);
  const std::vector<int> t = tok.encode(test::read_file(dir + "/heldout.txt"), true);
  EXPECT_EQ(t.size(), 20843u);  // as sentencepiece in the training script
  PerplexityOptions o;
  o.max_chunks = 8;
  const PerplexityResult r = run_perplexity(*m, t, tok.bos_id(), o, "heldout.txt", pool);
  EXPECT_EQ(r.count, 2040u);
  EXPECT_NEAR(r.ppl.mean, 327.7687, 0.002);
  EXPECT_NEAR(r.ppl.err, 22.84099, 0.001);
}

// llama.cpp's Q4_K_M of the trained model (tests/data/tale-Q4_K_M.gguf, see SOURCE.md) on the
// first 2 held-out chunks, against the f32 base of the HF model recomputed here. Held to the
// figures in docs/accuracy.md, measured alike on the AVX-512, AVX2 and scalar paths (KLD
// 0.0008479-0.0008482, PPL 355.7409-355.7418, 507 of 510 same top): a 2% change of the KLD,
// 0.02% of the PPL or two more top-1 flips is a regression, not rounding.
TEST(Perplexity, TrainedModelQ4KMGgufHoldsItsDocumentedKld) {
  const std::string dir = std::string(MIXTRAL_SOURCE_DIR) + "/models/tale-mixtral";
  ThreadPool pool(2);
  auto lm = std::make_shared<LoadedModel>(load_model(dir));
  const Tokenizer tok = Tokenizer::load(lm->tokenizer);
  const std::vector<int> t = tok.encode(test::read_file(dir + "/heldout.txt"), true);
  PerplexityOptions o;
  o.max_chunks = 2;
  o.save_logits = test::tmp_dir("ppl_q4km") + "/base.logp";
  {
    auto base = make_model(lm, {}, pool);
    const PerplexityResult b = run_perplexity(*base, t, tok.bos_id(), o, "heldout.txt", pool);
    EXPECT_NEAR(b.ppl.mean, 354.5032, 0.002);
  }
  o.kl_base = o.save_logits;
  o.save_logits.clear();
  auto q = make_model(std::make_shared<LoadedModel>(load_model(test::data_path("tale-Q4_K_M.gguf"))), {}, pool);
  const PerplexityResult r = run_perplexity(*q, t, tok.bos_id(), o, "heldout.txt", pool);
  ASSERT_TRUE(r.has_kl);
  EXPECT_EQ(r.count, 510u);
  EXPECT_NEAR(r.ppl.mean, 355.7414, 0.07);
  EXPECT_NEAR(r.kl.kld.mean, 0.000848, 0.000017);
  EXPECT_NEAR(r.kl.kld_max, 0.11802, 0.002);
  EXPECT_GE(r.kl.same_top.mean * 510, 505 - 0.5);
}

TEST(PerplexityCli, RunsAndReportsBadInputClearly) {
  const std::string dir = test::tmp_dir("ppl_cli");
  const std::string text = dir + "/t.txt";
  {
    std::ofstream f(text);
    for (int i = 0; i < 8; ++i)
      f << "It was the best of times, it was the worst of times, it was the age of wisdom.\n";
  }
  auto r = test::run_cli("perplexity --model " + kHf + " --file " + text + " --ctx 32 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"ppl\":"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("chunks  PPL"), std::string::npos) << r.err;  // running value

  r = test::run_cli("perplexity --model " + kHf + " --file " + dir + "/nope.txt");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("nope.txt: cannot open the text file"), std::string::npos) << r.err;
  r = test::run_cli("perplexity --model " + kHf + " --file " + text + " --ctx 512");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("needs at least 1024"), std::string::npos) << r.err;
  r = test::run_cli("perplexity --model " + kHf + " --file " + text + " --ctx 2");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("too small"), std::string::npos) << r.err;
  r = test::run_cli("perplexity --model " + kHf + " --file " + text + " --save-logits a --kl-base b");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("not both"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace mx
