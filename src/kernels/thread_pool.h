// A persistent pool of worker threads. parallel_for splits [0, n) into one contiguous range per
// thread (the calling thread takes part), so work never depends on timing: results are the same
// for any thread count as long as each index is computed independently.
//
// Decode issues hundreds of short parallel_for calls per token, so idle workers (and the caller
// waiting for them) spin for a short while (~50 us) before sleeping on a condition variable:
// a job posted within that window starts without a futex wake-up.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mx {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads <= 0 means all hardware threads
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // fn(begin, end, thread_index) for each thread's range; blocks until all are done.
  // `grain` is the smallest range worth giving a thread (ranges are multiples of it).
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                    int64_t grain = 1);
  // fn(begin, end, thread_index) for chunks of `chunk` indices handed out on demand: a thread
  // that runs slower (a busy or preempted core) takes fewer chunks instead of holding up the
  // rest. Which thread runs an index then depends on timing, so fn must compute each index
  // independently of the others and of the thread (as matmul rows are).
  void parallel_chunks(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                       int64_t chunk);

 private:
  void worker(int index);
  void run_share(int index);
  void post(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn, int64_t grain, bool dynamic);
  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  // Job fields are written before generation_ is bumped (release) and read after a worker
  // sees the new generation (acquire).
  const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
  int64_t job_n_ = 0, job_grain_ = 1;
  bool job_dynamic_ = false;
  std::atomic<int64_t> next_{0};  // first index not yet handed out (dynamic jobs)
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};          // workers blocked on cv_start_
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stop_{false};
};

}  // namespace mx
