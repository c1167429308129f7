#include "server/request_hook.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace mx::server {

TokenLogprob token_logprob(const float* logits, int vocab, int token, int n) {
  TokenLogprob e;
  e.token = token;
  // The same arithmetic as mixtral score (runtime/scoring.cc), so the numbers agree exactly.
  const double lse = logsumexp(logits, vocab);
  e.logprob = static_cast<double>(logits[token]) - lse;
  n = std::min(n, vocab);
  if (n <= 0) return e;
  // A short sorted list beats sorting the vocabulary for n <= 20.
  std::vector<int> best;
  best.reserve(static_cast<size_t>(n) + 1);
  for (int i = 0; i < vocab; ++i) {
    if (std::isnan(logits[i])) continue;
    if (static_cast<int>(best.size()) == n && !(logits[i] > logits[best.back()])) continue;
    size_t at = best.size();
    while (at > 0 && logits[i] > logits[best[at - 1]]) --at;
    best.insert(best.begin() + static_cast<long>(at), i);
    if (static_cast<int>(best.size()) > n) best.pop_back();
  }
  for (int id : best) e.top.emplace_back(id, static_cast<double>(logits[id]) - lse);
  return e;
}

RequestHook::RequestHook(HookOptions o, std::vector<int> prompt) : opt_(std::move(o)), prompt_(std::move(prompt)) {
  if (opt_.json) machine_.emplace(opt_.json);
}

bool RequestHook::active() const { return opt_.top_logprobs >= 0 || opt_.adjust.active() || opt_.json; }

void RequestHook::prompt_logits(const float* rows, int n_rows, int vocab, size_t first) {
  std::vector<TokenLogprob> add;
  for (int r = 0; r < n_rows; ++r) {
    const size_t next = first + static_cast<size_t>(r) + 1;  // the token these logits predict
    if (next >= prompt_.size()) break;
    add.push_back(token_logprob(rows + static_cast<size_t>(r) * vocab, vocab, prompt_[next], opt_.top_logprobs));
  }
  std::lock_guard lk(m_);
  prompt_lp_.insert(prompt_lp_.end(), add.begin(), add.end());
}

void RequestHook::adjust(float* logits, int vocab) {
  if (opt_.adjust.active()) {
    raw_.assign(logits, logits + vocab);
    apply_logit_adjust(logits, vocab, opt_.adjust, counts_);
  }
  const float ninf = -std::numeric_limits<float>::infinity();
  if (machine_) {
    json_allowed_tokens(*machine_, *opt_.vocab, opt_.eos_id, allowed_);
    for (int i = 0; i < vocab; ++i)
      if (i >= static_cast<int>(allowed_.size()) || !allowed_[static_cast<size_t>(i)]) logits[i] = ninf;
  }
  // A bias that bans every token the document allows (or every token) would leave nothing to
  // sample, and a throw here would fail the whole batch: the constraint wins over the bias.
  bool any = false;
  for (int i = 0; i < vocab && !any; ++i) any = logits[i] > ninf;
  if (!any && !raw_.empty()) {
    for (int i = 0; i < vocab; ++i)
      logits[i] = machine_ && !allowed_[static_cast<size_t>(i)] ? ninf : raw_[static_cast<size_t>(i)];
    for (int i = 0; i < vocab && !any; ++i) any = logits[i] > ninf;
  }
  // Never expected (the automaton has no dead ends), but ending this request beats a throw.
  if (!any && opt_.eos_id >= 0 && opt_.eos_id < vocab) logits[opt_.eos_id] = 0;
}

void RequestHook::picked(const float* raw, int vocab, int token) {
  counts_.add(token);
  if (machine_ && token != opt_.eos_id) machine_->feed(opt_.vocab->texts[static_cast<size_t>(token)]);
  if (opt_.top_logprobs < 0) return;
  TokenLogprob e = token_logprob(raw, vocab, token, opt_.top_logprobs);
  std::lock_guard lk(m_);
  gen_lp_.push_back(std::move(e));
}

TokenLogprob RequestHook::prompt_entry(size_t i) const {
  std::lock_guard lk(m_);
  return i >= 1 && i - 1 < prompt_lp_.size() ? prompt_lp_[i - 1] : TokenLogprob{};
}

TokenLogprob RequestHook::generated(size_t i) const {
  std::lock_guard lk(m_);
  return i < gen_lp_.size() ? gen_lp_[i] : TokenLogprob{};
}

}  // namespace mx::server
