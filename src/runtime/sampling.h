// Next-token sampling: greedy, or temperature + top-k + top-p with a seeded RNG, and the
// log-softmax helpers used for scoring.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace mx {

struct SamplingParams {
  float temperature = 0.6f;  // <= 0: greedy
  float top_p = 0.9f;        // >= 1: off
  int top_k = 0;             // <= 0: off
  uint64_t seed = 0;
};

// xoshiro256** seeded through splitmix64: small, fast, and identical on every platform, so a
// (seed, stream) pair always gives the same draws. Use one per sequence.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0, uint64_t stream = 0);
  uint64_t next();
  double uniform();  // [0, 1), 53 random bits

 private:
  uint64_t s_[4];
};

// Index of the largest value, the lowest index on ties; NaNs never win (0 if all are NaN).
int argmax(const float* logits, int n);

// The tokens sampling may pick and their renormalized probabilities, most likely first (lower
// id first on ties): logits / temperature, the top_k largest, softmax, then the smallest
// prefix whose cumulative probability reaches top_p (at least one token). With temperature
// <= 0 it is just {argmax, 1}.
std::vector<std::pair<int, float>> candidates(const float* logits, int vocab, const SamplingParams& p);

// One token: argmax when temperature <= 0, else a draw from candidates(). Deterministic given
// the Rng state.
int sample(const float* logits, int vocab, const SamplingParams& p, Rng& rng);

// OpenAI's logit_bias and presence/frequency penalties, applied to a copy of the logits before
// sampling. bias: (token id, value in [-100, 100]) pairs, added; -100 is a ban (-inf), so a
// banned token can never be drawn whatever the other logits are.
struct LogitAdjust {
  std::vector<std::pair<int, float>> bias;
  float presence = 0, frequency = 0;  // [-2, 2]
  bool active() const { return !bias.empty() || presence != 0 || frequency != 0; }
};

// Counts of the tokens generated so far, as (token id, count) pairs in id order: the penalties
// only look at tokens that occurred, so this stays proportional to the output, not the vocab.
class TokenCounts {
 public:
  void add(int token);
  const std::vector<std::pair<int, int>>& items() const { return items_; }

 private:
  std::vector<std::pair<int, int>> items_;
};

// logits[j] -= count[j] * frequency + (count[j] > 0) * presence, then logits[j] += bias[j]
// (OpenAI's definition). Ids outside [0, vocab) are ignored (validated earlier).
void apply_logit_adjust(float* logits, int vocab, const LogitAdjust& a, const TokenCounts& counts);

// log(sum(exp(x))) computed stably in double; -inf for n == 0 or all -inf.
double logsumexp(const float* x, int n);
// out[i] = x[i] - logsumexp(x); out may alias x.
void log_softmax(const float* x, int n, float* out);

}  // namespace mx
