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
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "runtime/scheduler.h"

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
  bool counted_ = false;  // in EngineStats::completed (guarded by the EngineLoop's mutex)
};

struct EngineStats {
  int running = 0;   // requests holding a KV-cache slot
  int waiting = 0;   // requests handed in that have no slot yet
  int64_t completed = 0;  // finished (EOS, length, stop string), cancelled or failed
  int64_t cancelled = 0;  // by cancel(job, true): the client left
};

class EngineLoop {
 public:
  EngineLoop(Scheduler::ForwardFn forward, int vocab, int eos_id, int context, SchedulerOptions opt);
  ~EngineLoop();  // stop()
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Never blocks on the model. After stop() the job ends at once with a 503 error.
  std::shared_ptr<Job> submit(Request r);
  // Ends the request at the next step boundary (or before it starts) and frees its slot.
  // `client_left` counts it as cancelled; a stop string that matched ends it as completed.
  void cancel(const std::shared_ptr<Job>& job, bool client_left = true);
  // Cancels every request (they end with a 503 "shutting down" error) and joins the thread.
  void stop();
  EngineStats stats() const;

 private:
  void run();
  int admit(std::vector<std::shared_ptr<Job>>& in);  // returns how many were refused
  void end_all(const std::string& error, int status);
  // Counts a request as completed (and cancelled) before its reply goes out, so /health never
  // lags a response the client already has; once per job.
  void count_end(Job& job, bool cancelled = false);

  Scheduler::ForwardFn forward_;
  int vocab_, eos_id_, context_;
  SchedulerOptions opt_;
  std::optional<Scheduler> sched_;  // engine thread only
  std::unordered_map<int, std::shared_ptr<Job>> jobs_;  // by scheduler user id; engine thread only

  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> incoming_;
  std::deque<std::pair<std::shared_ptr<Job>, bool>> cancels_;  // (job, client_left)
  bool stopping_ = false;
  EngineStats stats_;
  std::thread thread_;
};

// The scheduler seeds user u's RNG with (seed, stream u), so the same seed would sample
// differently depending on how many requests came before. This returns the seed that makes
// Rng(result, stream) start exactly like Rng(seed, 0), so a seeded request always samples the
// same way (inverting Rng's splitmix64 mixing; tested against runtime/sampling.cc).
uint64_t seed_for_stream(uint64_t seed, uint64_t stream);

}  // namespace mx::server
