// The one thread that owns the scheduler (and through its forward function the model and the
// KV cache). HTTP threads only hand it requests and read tokens back from a per-request Job;
// every loop iteration admits new requests and applies cancellations before the next step, so
// new users join the running batch at the next step and finished or cancelled ones free their
// slot at once.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "runtime/scheduler.h"
#include "server/metrics.h"

namespace mx::server {

// One request's channel from the engine thread to its HTTP thread.
class Job {
 public:
  // Moves newly generated tokens into `out` (appending); waits up to `timeout` when there are
  // none yet and the job is still running. Returns true when anything changed.
  bool wait(std::vector<int>& out, std::chrono::milliseconds timeout);
  bool done() const;
  FinishReason finish() const;  // valid once done()
  // Non-empty when the request failed instead of finishing; error_status is its HTTP status.
  std::string error() const;
  int error_status() const;

 private:
  friend class EngineLoop;
  void push(int token);
  void end(FinishReason r, const std::string& error = "", int status = 0);

  mutable std::mutex m_;
  std::condition_variable cv_;
  std::vector<int> pending_;
  bool done_ = false;
  FinishReason finish_ = FinishReason::None;
  std::string error_;
  int error_status_ = 0;
  Request req_;
  int user_ = -1;  // scheduler user id once admitted (engine thread only)
  // Choices of one request (n > 1): choice_ > 0 shares the prompt of `leader_`, choice 0.
  std::shared_ptr<Job> leader_;
  int choice_ = 0;
  std::chrono::steady_clock::time_point t_submit_, t_last_;  // engine thread only after submit
  bool got_token_ = false;
  bool counted_ = false;  // in EngineStats::completed (guarded by the EngineLoop's mutex)
};

struct EngineStats {
  int running = 0;   // requests holding a KV-cache slot
  int waiting = 0;   // requests handed in that have no slot yet
  int64_t completed = 0;  // finished (EOS, length, stop string), cancelled or failed
  int64_t cancelled = 0;  // by cancel(job, true): the client left
  EngineCounters counters;  // tokens, prefix cache, latencies, KV bytes (for /metrics)
};

class EngineLoop {
 public:
  // kv_bytes (optional) reports the KV cache's memory; it is called on the engine thread.
  EngineLoop(Scheduler::ForwardFn forward, int vocab, int eos_id, int context, SchedulerOptions opt,
             std::function<size_t()> kv_bytes = {});
  ~EngineLoop();  // stop()
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Never blocks on the model. After stop() the job ends at once with a 503 error.
  std::shared_ptr<Job> submit(Request r);
  // n choices of one prompt: choice i samples with stream i of the request's seed (choice 0 as
  // submit() would), and choices after the first copy the first one's prompt KV instead of
  // prefilling it.
  // hooks[i], when given, replaces r.hook for choice i (each choice keeps its own penalty
  // counts, JSON state and log-probabilities).
  std::vector<std::shared_ptr<Job>> submit_choices(Request r, int n,
                                                   const std::vector<std::shared_ptr<TokenHook>>& hooks = {});
  // Ends the request at the next step boundary (or before it starts) and frees its slot.
  // `client_left` counts it as cancelled; a stop string that matched ends it as completed.
  void cancel(const std::shared_ptr<Job>& job, bool client_left = true);
  // Cancels every request (they end with a 503 "shutting down" error) and joins the thread.
  void stop();
  // For a fatal error after which the process exits (a lost MPI rank): ends every request,
  // running, queued or submitted later, with `error` and `status`. Callable from any thread,
  // also the engine's own from inside a step (the scheduler is not touched).
  void fail_all(const std::string& error, int status);
  EngineStats stats() const;

 private:
  void run();
  int admit(std::vector<std::shared_ptr<Job>>& in);  // returns how many were refused
  void end_all(const std::string& error, int status);
  // Sets stats_.running / waiting from the requests the engine holds (engine thread, unlocked).
  void publish_queue();
  // Counts a request as completed (and cancelled) before its reply goes out, so /health never
  // lags a response the client already has; once per job.
  void count_end(Job& job, bool cancelled = false);

  Scheduler::ForwardFn forward_;
  int vocab_, eos_id_, context_;
  SchedulerOptions opt_;
  std::function<size_t()> kv_bytes_;
  std::optional<Scheduler> sched_;  // engine thread only
  std::unordered_map<int, std::shared_ptr<Job>> jobs_;  // by scheduler user id; engine thread only

  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> incoming_;
  std::deque<std::pair<std::shared_ptr<Job>, bool>> cancels_;  // (job, client_left)
  bool stopping_ = false;
  std::string fatal_;  // fail_all's error: later submits end with it at once
  int fatal_status_ = 0;
  std::vector<std::weak_ptr<Job>> live_;  // every job handed in and maybe not ended, for fail_all
  EngineStats stats_;
  std::thread thread_;
};

// The scheduler seeds user u's RNG with (seed, stream u), so the same seed would sample
// differently depending on how many requests came before. This returns the seed that makes
// Rng(result, stream) start exactly like Rng(seed, 0), so a seeded request always samples the
// same way (inverting Rng's splitmix64 mixing; tested against runtime/sampling.cc).
// `choice` > 0 gives Rng(seed, choice) instead: the stream of an n > 1 request's choice.
uint64_t seed_for_stream(uint64_t seed, uint64_t stream, uint64_t choice = 0);

}  // namespace mx::server
