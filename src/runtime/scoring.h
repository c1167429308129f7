// Scoring: the logits after every token of a sequence, reduced to what users compare —
// the top-N [id, logit] pairs, the log-sum-exp, and the log-probability of the next token.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

class ThreadPool;
struct Model;

struct PositionScore {
  std::vector<std::pair<int, float>> top;  // highest first
  double lse = 0;
  std::optional<double> next_logprob;  // log p(tokens[j+1]); none for the last token
};

struct ScoreResult {
  std::vector<int> tokens;
  std::vector<PositionScore> positions;
};

// The logits after every token of `tokens` ([n][vocab]), run as one prefill in a fresh KV
// cache of `kv_dtype`: what score_tokens and the reference comparison both read.
std::vector<float> sequence_logits(Model& m, const std::vector<int>& tokens, DType kv_dtype,
                                   ThreadPool& pool);
// Runs the whole sequence as one prefill in a fresh KV cache of `kv_dtype`.
ScoreResult score_tokens(Model& m, const std::vector<int>& tokens, int top_n, DType kv_dtype,
                         ThreadPool& pool);
PositionScore score_logits(const float* logits, int vocab, int top_n);
std::string score_to_json(const ScoreResult& r);

}  // namespace mx
