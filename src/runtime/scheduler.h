// Continuous batching of users over KV-cache slots. Each step() is one forward call that mixes
// prompt chunks (prefill) with one-token decode steps; users join as slots free up and leave on
// EOS, max tokens or a full context.
//
// Modes (the seed demo's):
//   PrefillDecode: a prompt goes in chunks of up to prefill_chunk tokens per step.
//   DecodeOnly:    a prompt goes in one token per step, like a decode step, so a user starts
//                  generating when their prompt runs out while others are still reading.
// prefill_cap > 0 limits how many prompt tokens are prefilled in chunks; the rest are fed one
// per step as decode (the seed demo caps prefill at 16k).
//
// Prefix cache (as llama.cpp's server does it, per slot): a slot remembers the tokens its KV
// holds after its user leaves. A new user gets the free slot whose tokens share the longest
// prefix with its prompt (the least recently used one when none does) and starts feeding after
// that prefix, always leaving at least one prompt token to feed so its logits exist. When a
// running user's slot shares a longer prefix, that prefix is copied into a free slot instead
// (this is how choices of one prompt share it). The cache is bounded by the slots: a slot's
// history is dropped when another sequence takes it.
#pragma once
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/forward.h"
#include "runtime/sampling.h"
#include "runtime/token_hook.h"

namespace mx {

enum class FeedMode { PrefillDecode, DecodeOnly };

struct SchedulerOptions {
  int max_users = 32;         // concurrent slots
  int prefill_chunk = 512;    // prompt tokens per user per step
  int step_tokens = 2048;     // prompt tokens per step over all users (decode tokens always go)
  int prefill_cap = 0;        // 0: none
  FeedMode mode = FeedMode::PrefillDecode;
  bool prefix_cache = true;   // reuse the KV of earlier sequences that share a prefix
};

struct Request {
  std::vector<int> prompt;     // non-empty, BOS included by the caller
  int max_new_tokens = 64;
  SamplingParams sampling;
  bool stop_at_eos = true;
  // A user id with the same prompt (an earlier choice of the same request): this user waits
  // until that one has fed its prompt, then copies its KV instead of prefilling it again.
  int prompt_leader = -1;
  std::shared_ptr<TokenHook> hook;  // optional; called on the stepping thread
};

enum class FinishReason { None, Eos, Length, Context, Cancelled };
std::string finish_reason_name(FinishReason r);

struct UserState {
  int id = -1;
  Request req;
  int slot = -1;           // -1 while queued or after finishing
  size_t fed = 0;          // prompt tokens sent to the model so far
  std::vector<int> generated;
  FinishReason finish = FinishReason::None;
  Rng rng;
  double t_submit = 0, t_first_token = -1, t_done = -1;  // seconds since scheduler start
  int prompt_steps = 0;    // steps that carried this user's prompt tokens
  int reused = 0;          // prompt tokens whose KV came from the prefix cache (not prefilled)
  int start = -1, copy_from = -1;  // the first chunk's SeqChunk::start / copy_from
};

// What a slot's KV holds, kept after its user leaves so a later prompt can reuse it.
struct SlotHistory {
  std::vector<int> tokens;  // tokens[i] is at position i
  uint64_t last_used = 0;   // for least-recently-used choice among free slots
};

struct PrefixCacheStats {
  int64_t requests = 0;       // users admitted to a slot
  int64_t hits = 0;           // of which reused at least one token
  int64_t prompt_tokens = 0;  // their prompt tokens
  int64_t reused_tokens = 0;  // of which came from the cache
};

struct StepStats {
  int prompt_tokens = 0, decode_tokens = 0, users = 0;
  double seconds = 0;
};

class Scheduler {
 public:
  // forward: runs one batch (normally mx::forward over the model and cache; the MPI runtime
  // wraps it). eos_id ends a user when stop_at_eos.
  using ForwardFn = std::function<std::vector<float>(const std::vector<SeqChunk>&)>;
  Scheduler(ForwardFn forward, int vocab, int eos_id, int max_ctx, const SchedulerOptions& o);

  // Queues a request; returns its user id. Throws mx::Error for an empty or too-long prompt.
  int submit(Request r);
  void cancel(int id);
  bool busy() const;  // any user queued or running
  // One forward step. on_token(user id, token) is called for each token generated this step,
  // then on_finish(user id) for each user that finished.
  StepStats step(const std::function<void(int, int)>& on_token = {},
                 const std::function<void(int)>& on_finish = {});
  const UserState& user(int id) const { return users_[static_cast<size_t>(id)]; }
  int n_users() const { return static_cast<int>(users_.size()); }
  double now() const;
  const PrefixCacheStats& prefix_stats() const { return prefix_stats_; }
  const std::vector<SlotHistory>& slots() const { return slots_; }
  // Takes over another scheduler's slot histories and prefix statistics (when a scheduler
  // is renewed over the same KV cache, so the cache survives).
  void adopt_cache(const Scheduler& old);

 private:
  void admit();
  void finish(UserState& u, FinishReason r);

  ForwardFn forward_;
  int vocab_, eos_id_, max_ctx_;
  SchedulerOptions opt_;
  std::vector<UserState> users_;
  std::deque<int> queue_;
  std::vector<int> active_;     // user ids in slots, in admission order
  std::vector<int> free_slots_;
  std::vector<SlotHistory> slots_;  // per slot
  uint64_t clock_ = 0;
  PrefixCacheStats prefix_stats_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace mx
