#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "formats/error.h"

namespace mx {

namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// NaN sorts as -inf so a broken logit is never preferred.
float clean(float v) { return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v; }

}  // namespace

Rng::Rng(uint64_t seed, uint64_t stream) {
  // Mixing the stream in through splitmix64 keeps nearby (seed, stream) pairs uncorrelated.
  uint64_t x = seed;
  uint64_t y = splitmix64(x) ^ (stream * 0xd1b54a32d192ed03ULL);
  for (auto& s : s_) s = splitmix64(y);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

int argmax(const float* logits, int n) {
  int best = 0;
  float best_v = -std::numeric_limits<float>::infinity();
  bool found = false;
  for (int i = 0; i < n; ++i) {
    const float v = logits[i];
    if (std::isnan(v)) continue;
    if (!found || v > best_v) {
      best = i;
      best_v = v;
      found = true;
    }
  }
  return best;
}

std::vector<std::pair<int, float>> candidates(const float* logits, int vocab, const SamplingParams& p) {
  if (vocab <= 0) fail("sampling: vocabulary size must be positive, got " + std::to_string(vocab));
  if (!(p.temperature > 0.0f)) return {{argmax(logits, vocab), 1.0f}};  // also catches NaN
  if (std::isinf(p.temperature)) fail("sampling: temperature must be finite");

  struct Entry {
    float l;
    int id;
  };
  std::vector<Entry> e(vocab);
  for (int i = 0; i < vocab; ++i) e[i] = {clean(logits[i]), i};
  const auto better = [](const Entry& a, const Entry& b) { return a.l != b.l ? a.l > b.l : a.id < b.id; };
  const int k = p.top_k > 0 ? std::min(p.top_k, vocab) : vocab;
  if (k < vocab) std::nth_element(e.begin(), e.begin() + k, e.end(), better);  // top-k, unordered

  // Softmax over the top-k survivors (all tokens without top-k), in double.
  const double inv_t = 1.0 / p.temperature;
  float max_raw = e[0].l;
  for (int i = 1; i < k; ++i) max_raw = std::max(max_raw, e[i].l);
  if (std::isinf(max_raw)) fail("sampling: logits have no finite maximum");
  const double max_l = static_cast<double>(max_raw) * inv_t;
  const auto weight = [&](const Entry& x) { return std::exp(static_cast<double>(x.l) * inv_t - max_l); };
  double total = 0.0;
  for (int i = 0; i < k; ++i) total += weight(e[i]);

  // Sort only as far as needed: top-p rarely needs more than a few hundred tokens, so order a
  // short prefix first and grow it only while its mass is not enough.
  int sorted = std::min(k, 256);
  std::partial_sort(e.begin(), e.begin() + sorted, e.begin() + k, better);
  const double top_p = p.top_p >= 1.0f ? 1.0 : std::max(0.0, static_cast<double>(p.top_p));
  // A small slack so that a cut exactly at top_p (0.5 + 0.3 vs 0.8) is not lost to rounding.
  const double target = top_p * total * (1.0 - 1e-6);
  double cum = 0.0;
  int keep = 0;
  while (keep < k) {
    if (keep == sorted) {  // order the next, twice as long, stretch
      const int next = std::min(k, sorted * 2);
      if (next < k) std::nth_element(e.begin() + sorted, e.begin() + next, e.begin() + k, better);
      std::sort(e.begin() + sorted, e.begin() + next, better);
      sorted = next;
    }
    cum += weight(e[keep]);
    ++keep;
    if (top_p < 1.0 && cum >= target) break;
  }

  std::vector<std::pair<int, float>> out;
  out.reserve(keep);
  for (int i = 0; i < keep; ++i) {
    out.emplace_back(e[i].id, static_cast<float>(weight(e[i]) / cum));
  }
  return out;
}

int sample(const float* logits, int vocab, const SamplingParams& p, Rng& rng) {
  if (!(p.temperature > 0.0f)) {
    if (vocab <= 0) fail("sampling: vocabulary size must be positive, got " + std::to_string(vocab));
    return argmax(logits, vocab);
  }
  if (std::isinf(p.temperature)) fail("sampling: temperature must be finite");
  if ((p.top_k <= 0 || p.top_k >= vocab) && p.top_p >= 1.0f) {
    // Nothing is filtered, so no ordering is needed: draw straight from the softmax in id order.
    const double inv_t = 1.0 / p.temperature;
    float max_l = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < vocab; ++i) max_l = std::max(max_l, clean(logits[i]));
    if (std::isinf(max_l)) fail("sampling: logits have no finite maximum");
    double total = 0.0;
    for (int i = 0; i < vocab; ++i) total += std::exp((clean(logits[i]) - max_l) * inv_t);
    const double u = rng.uniform() * total;
    double cum = 0.0;
    int last = 0;
    for (int i = 0; i < vocab; ++i) {
      const double w = std::exp((clean(logits[i]) - max_l) * inv_t);
      if (w == 0.0) continue;
      cum += w;
      last = i;
      if (u < cum) return i;
    }
    return last;  // u landed on the rounding slack at the very end
  }
  const auto cand = candidates(logits, vocab, p);
  double total = 0.0;
  for (const auto& c : cand) total += c.second;
  const double u = rng.uniform() * total;
  double cum = 0.0;
  for (const auto& c : cand) {
    cum += c.second;
    if (u < cum) return c.first;
  }
  return cand.back().first;  // u landed on the rounding slack at the very end
}

void TokenCounts::add(int token) {
  auto it = std::lower_bound(items_.begin(), items_.end(), std::pair<int, int>{token, 0},
                             [](const auto& a, const auto& b) { return a.first < b.first; });
  if (it != items_.end() && it->first == token) ++it->second;
  else items_.insert(it, {token, 1});
}

void apply_logit_adjust(float* logits, int vocab, const LogitAdjust& a, const TokenCounts& counts) {
  if (a.presence != 0 || a.frequency != 0)
    for (const auto& [id, n] : counts.items())
      if (id >= 0 && id < vocab) logits[id] -= static_cast<float>(n) * a.frequency + a.presence;
  for (const auto& [id, b] : a.bias) {
    if (id < 0 || id >= vocab) continue;
    // -100 is documented as a ban: adding it to a logit far above the rest would not be one.
    logits[id] = b <= -100.0f ? -std::numeric_limits<float>::infinity() : logits[id] + b;
  }
}

double logsumexp(const float* x, int n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  if (std::isinf(m)) return m;  // n == 0, all -inf, or +inf present
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - m);
  return m + std::log(s);
}

void log_softmax(const float* x, int n, float* out) {
  const double lse = logsumexp(x, n);
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<double>(x[i]) - lse);
}

}  // namespace mx
