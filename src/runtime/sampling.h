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

// log(sum(exp(x))) computed stably in double; -inf for n == 0 or all -inf.
double logsumexp(const float* x, int n);
// out[i] = x[i] - logsumexp(x); out may alias x.
void log_softmax(const float* x, int n, float* out);

}  // namespace mx
