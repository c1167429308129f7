// The server's per-request TokenHook: logit_bias and the penalties, the JSON-mode mask, and the
// log-probabilities of the model's own distribution (log-softmax of the raw logits, as OpenAI
// reports them), all computed on the engine thread at the step that produced the logits.
// HTTP threads read the log-probabilities back by token index.
#pragma once
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/json_constraint.h"
#include "runtime/sampling.h"
#include "runtime/token_hook.h"

namespace mx::server {

struct TokenLogprob {
  int token = -1;
  double logprob = 0;
  std::vector<std::pair<int, double>> top;  // most likely first
};

struct HookOptions {
  int top_logprobs = -1;       // alternatives per token; -1: no log-probabilities at all
  bool score_prompt = false;   // echo with logprobs: score every prompt token too
  LogitAdjust adjust;
  std::shared_ptr<const JsonSchema> json;               // response_format; null: free text
  const JsonVocab* vocab = nullptr;                      // needed with json
  int eos_id = -1;
};

// The log-probability of `token` and the n most likely tokens under log-softmax(logits).
TokenLogprob token_logprob(const float* logits, int vocab, int token, int n);

class RequestHook : public TokenHook {
 public:
  RequestHook(HookOptions o, std::vector<int> prompt);
  bool active() const;  // anything to do (else the request needs no hook)

  bool wants_prompt_logits() const override { return opt_.score_prompt; }
  void prompt_logits(const float* rows, int n_rows, int vocab, size_t first) override;
  void adjust(float* logits, int vocab) override;
  void picked(const float* raw, int vocab, int token) override;

  // HTTP thread. prompt_entry(i): log p(prompt[i] | prompt[..i]) for i >= 1, once the prompt
  // is scored (before the first generated token is delivered).
  TokenLogprob prompt_entry(size_t i) const;
  // generated(i): the i-th generated token's entry, once that token was delivered.
  TokenLogprob generated(size_t i) const;

 private:
  HookOptions opt_;
  std::vector<int> prompt_;
  TokenCounts counts_;                 // engine thread only
  std::optional<JsonMachine> machine_;  // engine thread only
  std::vector<uint8_t> allowed_;       // engine thread only
  std::vector<float> raw_;             // engine thread only
  mutable std::mutex m_;
  std::vector<TokenLogprob> prompt_lp_, gen_lp_;
};

}  // namespace mx::server
