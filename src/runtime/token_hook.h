// Per-request logit processing that runs on the scheduler's (engine) thread, at the step that
// produced the logits: what the server needs for logprobs, logit_bias, penalties and JSON
// mode without the scheduler knowing about any of them.
#pragma once
#include <cstddef>

namespace mx {

class TokenHook {
 public:
  virtual ~TokenHook() = default;
  // True: the scheduler asks the model for the logits after every prompt token (echo scoring)
  // and hands them to prompt_logits(). Such a request must prefill its whole prompt.
  virtual bool wants_prompt_logits() const { return false; }
  // rows[i * vocab ...] are the logits after prompt token first + i.
  virtual void prompt_logits(const float* rows, int n_rows, int vocab, size_t first) {}
  // The logits sampling will see (a copy of the model's): bias, penalties, masks go here.
  virtual void adjust(float* logits, int vocab) {}
  // After sampling `token` from the adjusted logits; `raw` are the model's logits.
  virtual void picked(const float* raw, int vocab, int token) {}
};

}  // namespace mx
