// Sampling: determinism, greedy, the exact candidate sets of top-k / top-p, temperature, and
// draw frequencies.
#include "runtime/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include "formats/error.h"

namespace mx {
namespace {

// Logits whose softmax is exactly the given probabilities.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

std::vector<float> random_logits(int n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> l(n);
  for (auto& v : l) v = static_cast<float>(rng.uniform() * 10.0 - 5.0);
  return l;
}

std::set<int> ids_of(const std::vector<std::pair<int, float>>& c) {
  std::set<int> s;
  for (const auto& x : c) s.insert(x.first);
  return s;
}

std::vector<int> draws(const std::vector<float>& l, const SamplingParams& p, int n) {
  Rng rng(p.seed);
  std::vector<int> out;
  for (int i = 0; i < n; ++i) out.push_back(sample(l.data(), static_cast<int>(l.size()), p, rng));
  return out;
}

TEST(Rng, SameSeedSameStreamDifferentSeedsDiffer) {
  Rng a(42), b(42), c(43), d(42, 1);
  int same_c = 0, same_d = 0;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t x = a.next();
    EXPECT_EQ(x, b.next());
    same_c += x == c.next();
    same_d += x == d.next();
  }
  EXPECT_EQ(same_c, 0);
  EXPECT_EQ(same_d, 0);
  Rng u(5);
  double sum = 0;
  for (int i = 0; i < 100000; ++i) {
    const double v = u.uniform();
    ASSERT_GE(v, 0.0);
    ASSERT_LT(v, 1.0);
    sum += v;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.01);
}

TEST(Sampling, SeededDrawsAreReproducibleAndSeedsDiffer) {
  const auto l = random_logits(32000, 1);
  SamplingParams p{.temperature = 1.0f, .top_p = 1.0f, .top_k = 0, .seed = 123};
  const auto a = draws(l, p, 200), b = draws(l, p, 200);
  EXPECT_EQ(a, b);
  p.seed = 124;
  EXPECT_NE(draws(l, p, 200), a);
  // The filtered path (default temperature 0.6, top-p 0.9) is just as reproducible.
  const SamplingParams d{.seed = 5};
  const auto x = draws(l, d, 50);
  EXPECT_EQ(draws(l, d, 50), x);
  EXPECT_NE(draws(l, {.seed = 6}, 50), x);
}

TEST(Sampling, GreedyIsArgmaxWithLowestIdOnTies) {
  const auto l = random_logits(1000, 2);
  int best = 0;
  for (int i = 1; i < 1000; ++i)
    if (l[i] > l[best]) best = i;
  SamplingParams p{.temperature = 0.0f};
  Rng rng(0);
  EXPECT_EQ(sample(l.data(), 1000, p, rng), best);
  p.temperature = -1.0f;
  EXPECT_EQ(sample(l.data(), 1000, p, rng), best);
  EXPECT_EQ(argmax(l.data(), 1000), best);
  const std::vector<float> ties{1.0f, 3.0f, 2.0f, 3.0f, 3.0f};
  EXPECT_EQ(argmax(ties.data(), 5), 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> with_nan{nan, 0.5f, nan, 0.7f};
  EXPECT_EQ(argmax(with_nan.data(), 4), 3);
  const auto c = candidates(ties.data(), 5, p);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].first, 1);
  EXPECT_EQ(c[0].second, 1.0f);
}

TEST(Sampling, TopKKeepsExactlyK) {
  const auto l = random_logits(32000, 3);
  std::vector<int> order(32000);
  for (int i = 0; i < 32000; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  for (int k : {1, 5, 40, 300, 5000}) {
    const SamplingParams p{.temperature = 0.8f, .top_p = 1.0f, .top_k = k};
    const auto c = candidates(l.data(), 32000, p);
    ASSERT_EQ(c.size(), static_cast<size_t>(k));
    EXPECT_EQ(ids_of(c), std::set<int>(order.begin(), order.begin() + k)) << "k=" << k;
    double sum = 0;
    for (size_t i = 0; i < c.size(); ++i) {
      sum += c[i].second;
      if (i) {
        EXPECT_GE(c[i - 1].second, c[i].second);
      }
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
    // Draws never leave the set.
    const std::set<int> allowed = ids_of(c);
    SamplingParams q = p;
    q.seed = 9;
    for (int id : draws(l, q, 300)) ASSERT_TRUE(allowed.count(id)) << id;
  }
  // k beyond the vocabulary keeps everything.
  const std::vector<float> small{0.f, 1.f, 2.f};
  EXPECT_EQ(candidates(small.data(), 3, {.temperature = 1.f, .top_p = 1.f, .top_k = 10}).size(), 3u);
}

TEST(Sampling, TopPKeepsTheSmallestSetReachingP) {
  // Shuffled ids so the set is about probabilities, not positions.
  //            id:  0     1     2     3     4     5
  const auto l = logits_of({0.05, 0.40, 0.02, 0.25, 0.20, 0.08});
  const auto set_for = [&](float top_p) {
    return ids_of(candidates(l.data(), 6, {.temperature = 1.f, .top_p = top_p}));
  };
  EXPECT_EQ(set_for(0.10f), (std::set<int>{1}));
  EXPECT_EQ(set_for(0.40f), (std::set<int>{1}));  // reaching p exactly is enough
  EXPECT_EQ(set_for(0.41f), (std::set<int>{1, 3}));
  EXPECT_EQ(set_for(0.65f), (std::set<int>{1, 3}));
  EXPECT_EQ(set_for(0.66f), (std::set<int>{1, 3, 4}));
  EXPECT_EQ(set_for(0.90f), (std::set<int>{1, 3, 4, 5}));
  EXPECT_EQ(set_for(0.94f), (std::set<int>{1, 3, 4, 5, 0}));
  EXPECT_EQ(set_for(0.99f), (std::set<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(set_for(1.00f), (std::set<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(set_for(0.0f), (std::set<int>{1}));  // always at least one

  // Renormalized over the kept set, most likely first.
  const auto c = candidates(l.data(), 6, {.temperature = 1.f, .top_p = 0.66f});
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[0].first, 1);
  EXPECT_NEAR(c[0].second, 0.40 / 0.85, 1e-6);
  EXPECT_EQ(c[1].first, 3);
  EXPECT_NEAR(c[1].second, 0.25 / 0.85, 1e-6);
  EXPECT_EQ(c[2].first, 4);
  EXPECT_NEAR(c[2].second, 0.20 / 0.85, 1e-6);

  // top-k first, then top-p over the renormalized survivors: among {1, 3}, 1 has 0.40/0.65.
  EXPECT_EQ(ids_of(candidates(l.data(), 6, {.temperature = 1.f, .top_p = 0.6f, .top_k = 2})),
            (std::set<int>{1}));
  EXPECT_EQ(ids_of(candidates(l.data(), 6, {.temperature = 1.f, .top_p = 0.7f, .top_k = 2})),
            (std::set<int>{1, 3}));
}

TEST(Sampling, TopPOnALargeFlatVocabularySortsBeyondTheFirstChunk) {
  // 1000 equal logits: top_p 0.5 must keep exactly 500 (more than the first partial sort).
  const std::vector<float> flat(1000, 0.25f);
  const auto c = candidates(flat.data(), 1000, {.temperature = 1.f, .top_p = 0.5f});
  ASSERT_EQ(c.size(), 500u);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(c[i].first, i);  // ties broken by lower id
}

TEST(Sampling, TemperatureSharpensAndFlattens) {
  const auto l = logits_of({0.5, 0.3, 0.2});
  const auto probs = [&](float t) {
    std::vector<float> p(3);
    for (const auto& [id, pr] : candidates(l.data(), 3, {.temperature = t, .top_p = 1.f})) p[id] = pr;
    return p;
  };
  const auto t1 = probs(1.0f);
  EXPECT_NEAR(t1[0], 0.5, 1e-6);
  EXPECT_NEAR(t1[1], 0.3, 1e-6);
  EXPECT_NEAR(t1[2], 0.2, 1e-6);
  const auto t05 = probs(0.5f);  // p^2 renormalized
  EXPECT_NEAR(t05[0], 0.25 / 0.38, 1e-6);
  EXPECT_NEAR(t05[2], 0.04 / 0.38, 1e-6);
  const auto t2 = probs(2.0f);  // flatter than t=1
  EXPECT_LT(t2[0], t1[0]);
  EXPECT_GT(t2[2], t1[2]);
  const auto t_low = probs(0.01f);  // nearly greedy
  EXPECT_GT(t_low[0], 0.999f);
  // Tiny temperatures must not overflow.
  for (float v : probs(1e-6f)) EXPECT_TRUE(std::isfinite(v));
}

TEST(Sampling, FrequenciesFollowProbabilities) {
  const std::vector<double> want{0.05, 0.40, 0.02, 0.25, 0.20, 0.08};
  const auto l = logits_of(want);
  const int n = 200000;
  std::vector<int> count(6, 0);
  for (int id : draws(l, {.temperature = 1.f, .top_p = 1.f, .seed = 2024}, n)) ++count[id];
  for (int i = 0; i < 6; ++i) {
    const double sd = std::sqrt(want[i] * (1 - want[i]) / n);
    EXPECT_NEAR(static_cast<double>(count[i]) / n, want[i], 5 * sd) << "id " << i;
  }
  // With top-p 0.66 only {1, 3, 4} occur, in proportion 40:25:20.
  std::vector<int> cut(6, 0);
  for (int id : draws(l, {.temperature = 1.f, .top_p = 0.66f, .seed = 7}, n)) ++cut[id];
  EXPECT_EQ(cut[0] + cut[2] + cut[5], 0);
  for (int i : {1, 3, 4}) EXPECT_NEAR(static_cast<double>(cut[i]) / n, want[i] / 0.85, 0.01) << "id " << i;
}

TEST(Sampling, BadInputs) {
  const std::vector<float> ninf(4, -std::numeric_limits<float>::infinity());
  EXPECT_THROW(candidates(ninf.data(), 4, {.temperature = 1.f}), Error);
  EXPECT_THROW(candidates(ninf.data(), 0, {.temperature = 1.f}), Error);
  const std::vector<float> ok{0.f, 1.f};
  Rng rng(1);
  EXPECT_THROW(sample(ok.data(), 2, {.temperature = std::numeric_limits<float>::infinity(), .top_p = 1.f}, rng),
               Error);
  // NaN logits are never picked.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> l{nan, 0.f, nan, 0.f};
  const auto c = candidates(l.data(), 4, {.temperature = 1.f, .top_p = 1.f});
  ASSERT_EQ(c.size(), 4u);
  EXPECT_EQ(ids_of({c[0], c[1]}), (std::set<int>{1, 3}));
  EXPECT_EQ(c[2].second, 0.f);
  EXPECT_EQ(c[3].second, 0.f);
}

TEST(Scoring, LogSumExpAndLogSoftmax) {
  const std::vector<float> x{1.f, 2.f, 3.f};
  EXPECT_NEAR(logsumexp(x.data(), 3), std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)), 1e-9);
  const std::vector<float> big{1000.f, 1000.f};  // would overflow without the max shift
  EXPECT_NEAR(logsumexp(big.data(), 2), 1000.0 + std::log(2.0), 1e-9);
  EXPECT_EQ(logsumexp(x.data(), 0), -std::numeric_limits<double>::infinity());
  std::vector<float> out(3);
  log_softmax(x.data(), 3, out.data());
  double total = 0;
  for (float v : out) total += std::exp(v);
  EXPECT_NEAR(total, 1.0, 1e-6);
  EXPECT_NEAR(out[2] - out[0], 2.0, 1e-6);
}

TEST(LogitAdjust, PenaltiesFollowOpenAIsDefinition) {
  std::vector<float> l{1.f, 2.f, 3.f, 4.f};
  TokenCounts counts;
  for (int t : {2, 0, 2, 2}) counts.add(t);
  ASSERT_EQ(counts.items(), (std::vector<std::pair<int, int>>{{0, 1}, {2, 3}}));
  LogitAdjust a;
  a.frequency = 0.5f;
  a.presence = 0.25f;
  apply_logit_adjust(l.data(), 4, a, counts);
  EXPECT_FLOAT_EQ(l[0], 1.f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(l[1], 2.f);  // never generated: untouched
  EXPECT_FLOAT_EQ(l[2], 3.f - 1.5f - 0.25f);
  EXPECT_FLOAT_EQ(l[3], 4.f);
  // Negative penalties encourage repetition.
  std::vector<float> m{0.f, 0.f, 0.f};
  a = {};
  a.presence = -2.f;
  apply_logit_adjust(m.data(), 3, a, counts);
  EXPECT_FLOAT_EQ(m[0], 2.f);
  EXPECT_FLOAT_EQ(m[1], 0.f);
}

TEST(LogitAdjust, BiasAddsAndMinus100Bans) {
  std::vector<float> l{0.f, 50.f, 1.f, 2.f};
  LogitAdjust a;
  a.bias = {{1, -100.f}, {2, 5.5f}, {7, 100.f}};  // 7 is outside the vocabulary: ignored
  apply_logit_adjust(l.data(), 4, a, TokenCounts{});
  EXPECT_EQ(l[1], -std::numeric_limits<float>::infinity());
  EXPECT_FLOAT_EQ(l[2], 6.5f);
  EXPECT_FLOAT_EQ(l[0], 0.f);
  // A banned token is never drawn, even at a high temperature, and greedy moves to the next.
  SamplingParams p;
  p.temperature = 2.f;
  p.top_p = 1.f;
  for (int t : draws(l, p, 2000)) EXPECT_NE(t, 1);
  EXPECT_EQ(argmax(l.data(), 4), 2);
  // +100 makes a token all but certain.
  std::vector<float> f{5.f, 5.f, 5.f};
  a.bias = {{0, 100.f}};
  apply_logit_adjust(f.data(), 3, a, TokenCounts{});
  p.temperature = 1.f;
  for (int t : draws(f, p, 500)) EXPECT_EQ(t, 0);
}

}  // namespace
}  // namespace mx
