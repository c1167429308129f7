#include "runtime/scheduler.h"

#include <algorithm>

#include "formats/error.h"

namespace mx {

std::string finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "none";
    case FinishReason::Eos: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Context: return "context";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

Scheduler::Scheduler(ForwardFn forward, int vocab, int eos_id, int max_ctx,
                     const SchedulerOptions& o)
    : forward_(std::move(forward)), vocab_(vocab), eos_id_(eos_id), max_ctx_(max_ctx), opt_(o),
      t0_(std::chrono::steady_clock::now()) {
  if (opt_.max_users < 1) fail("scheduler needs at least one user slot");
  opt_.prefill_chunk = std::max(1, opt_.prefill_chunk);
  opt_.step_tokens = std::max(opt_.prefill_chunk, opt_.step_tokens);
  for (int s = opt_.max_users - 1; s >= 0; --s) free_slots_.push_back(s);
  slots_.resize(static_cast<size_t>(opt_.max_users));
}

void Scheduler::adopt_cache(const Scheduler& old) {
  if (busy() || old.busy() || old.slots_.size() != slots_.size()) return;
  slots_ = old.slots_;
  clock_ = old.clock_;
  prefix_stats_ = old.prefix_stats_;
}

double Scheduler::now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

int Scheduler::submit(Request r) {
  if (r.prompt.empty()) fail("empty prompt");
  if (r.max_new_tokens < 1) fail("max_new_tokens must be >= 1");
  if (static_cast<int>(r.prompt.size()) >= max_ctx_)
    fail("prompt of " + std::to_string(r.prompt.size()) + " tokens does not fit the context of " +
         std::to_string(max_ctx_) + " tokens (room is needed for at least one new token)");
  for (int id : r.prompt)
    if (id < 0 || id >= vocab_) fail("unknown token id " + std::to_string(id) + " in prompt");
  if (r.prompt_leader >= static_cast<int>(users_.size())) fail("prompt_leader is not an earlier user");
  UserState u;
  u.id = static_cast<int>(users_.size());
  u.rng = Rng(r.sampling.seed, static_cast<uint64_t>(u.id));
  u.req = std::move(r);
  u.t_submit = now();
  users_.push_back(std::move(u));
  queue_.push_back(users_.back().id);
  return users_.back().id;
}

void Scheduler::cancel(int id) {
  UserState& u = users_.at(static_cast<size_t>(id));
  if (u.finish != FinishReason::None) return;
  queue_.erase(std::remove(queue_.begin(), queue_.end(), id), queue_.end());
  finish(u, FinishReason::Cancelled);
}

bool Scheduler::busy() const { return !queue_.empty() || !active_.empty(); }

namespace {
constexpr size_t kMinReuse = 64;

size_t common_prefix(const std::vector<int>& a, const std::vector<int>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}
}  // namespace

void Scheduler::admit() {
  for (size_t qi = 0; qi < queue_.size() && !free_slots_.empty();) {
    UserState& u = users_[static_cast<size_t>(queue_[qi])];
    const std::vector<int>& p = u.req.prompt;
    const int lead = u.req.prompt_leader;
    const UserState* leader = lead >= 0 ? &users_[static_cast<size_t>(lead)] : nullptr;
    // A choice waits for its leader's prompt (so it copies rather than prefills it), unless
    // the leader has ended (its slot is then an ordinary cache entry).
    if (leader && leader->finish == FinishReason::None && leader->fed < leader->req.prompt.size()) {
      ++qi;
      continue;
    }
    // Free slot: the longest shared prefix, then the least recently used.
    size_t best = 0, best_len = 0;
    for (size_t i = 0; i < free_slots_.size(); ++i) {
      const SlotHistory& h = slots_[static_cast<size_t>(free_slots_[i])];
      const SlotHistory& b = slots_[static_cast<size_t>(free_slots_[best])];
      size_t len = opt_.prefix_cache ? common_prefix(h.tokens, p) : 0;
      // A short match (BOS, a few template tokens) is not worth throwing a slot's longer
      // history away for; such slots count as unmatched and LRU decides.
      if (len < kMinReuse && 2 * len <= h.tokens.size()) len = 0;
      if (len > best_len || (len == best_len && h.last_used < b.last_used)) {
        best = i;
        best_len = len;
      }
    }
    // A running slot that shares more is copied into the least recently used free slot: the
    // leader's always, another's when the prefix is long enough to be worth the copy.
    int copy_from = -1;
    for (int id : active_) {
      const UserState& v = users_[static_cast<size_t>(id)];
      if (id != lead && !opt_.prefix_cache) continue;
      const size_t len = common_prefix(slots_[static_cast<size_t>(v.slot)].tokens, p);
      if (len > best_len && (id == lead || len >= kMinReuse)) {
        best_len = len;
        copy_from = v.slot;
      }
    }
    if (copy_from >= 0) {
      best = 0;
      for (size_t i = 1; i < free_slots_.size(); ++i)
        if (slots_[static_cast<size_t>(free_slots_[i])].last_used <
            slots_[static_cast<size_t>(free_slots_[best])].last_used)
          best = i;
    }
    // One token is fed for the logits; a request that scores its prompt (echo) prefills it all.
    const bool scores_prompt = u.req.hook && u.req.hook->wants_prompt_logits();
    const size_t reuse = scores_prompt ? 0 : std::min(best_len, p.size() - 1);
    u.slot = free_slots_[best];
    free_slots_.erase(free_slots_.begin() + static_cast<long>(best));
    SlotHistory& h = slots_[static_cast<size_t>(u.slot)];
    if (copy_from >= 0) h.tokens = slots_[static_cast<size_t>(copy_from)].tokens;
    h.tokens.resize(reuse);
    h.last_used = ++clock_;
    u.fed = reuse;
    u.reused = static_cast<int>(reuse);
    u.start = static_cast<int>(reuse);
    u.copy_from = reuse > 0 ? copy_from : -1;
    ++prefix_stats_.requests;
    prefix_stats_.hits += reuse > 0 ? 1 : 0;
    prefix_stats_.prompt_tokens += static_cast<int64_t>(p.size());
    prefix_stats_.reused_tokens += static_cast<int64_t>(reuse);
    active_.push_back(u.id);
    queue_.erase(queue_.begin() + static_cast<long>(qi));
  }
}

void Scheduler::finish(UserState& u, FinishReason r) {
  u.finish = r;
  u.t_done = now();
  if (u.slot >= 0) {
    slots_[static_cast<size_t>(u.slot)].last_used = ++clock_;
    free_slots_.push_back(u.slot);
    u.slot = -1;
  }
  active_.erase(std::remove(active_.begin(), active_.end(), u.id), active_.end());
}

StepStats Scheduler::step(const std::function<void(int, int)>& on_token,
                          const std::function<void(int)>& on_finish) {
  StepStats st;
  admit();
  if (active_.empty()) return st;
  const double t_start = now();
  std::vector<SeqChunk> batch;
  std::vector<int> owner;          // user id per chunk
  std::vector<bool> sample_after;  // chunk completes the prompt or is a decode step
  int budget = opt_.step_tokens;
  for (int id : active_) {
    UserState& u = users_[static_cast<size_t>(id)];
    const std::vector<int>& p = u.req.prompt;
    SeqChunk c;
    c.slot = u.slot;
    if (u.fed < p.size()) {
      size_t n = 1;
      const bool chunked = opt_.mode == FeedMode::PrefillDecode &&
                           (opt_.prefill_cap <= 0 || u.fed < static_cast<size_t>(opt_.prefill_cap));
      if (chunked) {
        size_t limit = p.size();
        if (opt_.prefill_cap > 0) limit = std::min(limit, static_cast<size_t>(opt_.prefill_cap));
        n = std::min({limit - u.fed, static_cast<size_t>(opt_.prefill_chunk),
                      static_cast<size_t>(std::max(budget, 0))});
        // A copy goes in the step after admission, while its source surely holds the prefix.
        if (n == 0 && u.copy_from >= 0) n = 1;
        if (n == 0) continue;  // this step's prompt budget is spent; wait for the next
        budget -= static_cast<int>(n);
      }
      c.start = u.start;
      c.copy_from = u.copy_from;
      u.start = u.copy_from = -1;
      c.all_logits = u.req.hook && u.req.hook->wants_prompt_logits();
      c.tokens.assign(p.begin() + static_cast<long>(u.fed), p.begin() + static_cast<long>(u.fed + n));
      u.fed += n;
      ++u.prompt_steps;
      st.prompt_tokens += static_cast<int>(n);
      sample_after.push_back(u.fed == p.size());
    } else {
      c.tokens = {u.generated.back()};
      st.decode_tokens += 1;
      sample_after.push_back(true);
    }
    batch.push_back(std::move(c));
    owner.push_back(id);
  }
  st.users = static_cast<int>(batch.size());
  std::vector<float> logits;
  try {
    logits = forward_(batch);
  } catch (...) {
    // The slots may not hold what their histories say any more; forget them all.
    for (SlotHistory& h : slots_) h.tokens.clear();
    throw;
  }
  for (const SeqChunk& c : batch) {
    std::vector<int>& t = slots_[static_cast<size_t>(c.slot)].tokens;
    t.insert(t.end(), c.tokens.begin(), c.tokens.end());
  }
  std::vector<int> finished;
  std::vector<float> adjusted;
  size_t row = 0;  // a chunk with all_logits has one row per token, others one
  for (size_t i = 0; i < batch.size(); ++i) {
    UserState& u = users_[static_cast<size_t>(owner[i])];
    const size_t rows = batch[i].all_logits ? batch[i].tokens.size() : 1;
    const float* last = logits.data() + (row + rows - 1) * static_cast<size_t>(vocab_);
    if (batch[i].all_logits)
      u.req.hook->prompt_logits(logits.data() + row * static_cast<size_t>(vocab_), static_cast<int>(rows), vocab_,
                                u.fed - rows);
    row += rows;
    if (!sample_after[i]) continue;
    const float* pick_from = last;
    if (u.req.hook) {
      adjusted.assign(last, last + vocab_);
      u.req.hook->adjust(adjusted.data(), vocab_);
      pick_from = adjusted.data();
    }
    const int tok = sample(pick_from, vocab_, u.req.sampling, u.rng);
    if (u.req.hook) u.req.hook->picked(last, vocab_, tok);
    if (u.generated.empty()) u.t_first_token = now();
    u.generated.push_back(tok);
    if (on_token) on_token(u.id, tok);
    const int length = static_cast<int>(u.req.prompt.size() + u.generated.size());
    if (u.req.stop_at_eos && tok == eos_id_) {
      finish(u, FinishReason::Eos);
    } else if (static_cast<int>(u.generated.size()) >= u.req.max_new_tokens) {
      finish(u, FinishReason::Length);
    } else if (length >= max_ctx_) {
      // The next decode step would write past the context.
      finish(u, FinishReason::Context);
    } else {
      continue;
    }
    finished.push_back(u.id);
  }
  if (on_finish)
    for (int id : finished) on_finish(id);
  st.seconds = now() - t_start;
  return st;
}

}  // namespace mx
