#include "kernels/thread_pool.h"

#include <algorithm>
#include <chrono>

namespace mx {

namespace {

// How long an idle thread polls before blocking. Long enough to bridge the gap between the
// back-to-back matmuls of a decode step, short enough not to hog a core when idle.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Polls pred() for up to kSpin; true if it became true.
template <class Pred>
bool spin_until(Pred pred) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() - t0 > kSpin) return pred();
  }
}

// Thread i's share of [0, n): contiguous, in multiples of grain.
void range_of(int64_t n, int64_t grain, int threads, int i, int64_t* b, int64_t* e) {
  const int64_t chunks = (n + grain - 1) / grain;
  const int64_t per = chunks / threads, extra = chunks % threads;
  const int64_t c0 = i * per + std::min<int64_t>(i, extra);
  const int64_t c1 = c0 + per + (i < extra ? 1 : 0);
  *b = std::min(n, c0 * grain);
  *e = std::min(n, c1 * grain);
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads_ = n_threads;
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_start_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t grain) {
  post(n, fn, grain, false);
}

void ThreadPool::parallel_chunks(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                                 int64_t chunk) {
  post(n, fn, chunk, true);
}

// Thread `index`'s part of the posted job: its fixed range, or chunks until none are left.
void ThreadPool::run_share(int index) {
  if (!job_dynamic_) {
    int64_t b, e;
    range_of(job_n_, job_grain_, n_threads_, index, &b, &e);
    if (b < e) (*job_)(b, e, index);
    return;
  }
  for (;;) {
    const int64_t b = next_.fetch_add(job_grain_, std::memory_order_relaxed);
    if (b >= job_n_) return;
    (*job_)(b, std::min(job_n_, b + job_grain_), index);
  }
}

void ThreadPool::post(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                      int64_t grain, bool dynamic) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (n_threads_ == 1 || n <= grain) {  // not worth waking anyone
    fn(0, n, 0);
    return;
  }
  job_ = &fn;
  job_n_ = n;
  job_grain_ = grain;
  job_dynamic_ = dynamic;
  next_.store(0, std::memory_order_relaxed);
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes the job
  // A worker going to sleep increments sleepers_ before re-checking generation_ under the lock,
  // so either it sees the new generation or we see it sleeping (both sides seq_cst).
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    cv_start_.notify_all();
  }
  run_share(0);
  // seq_cst: pairs with the worker's decrement-then-check of caller_sleeping_.
  const auto done = [&] { return pending_.load(std::memory_order_seq_cst) == 0; };
  if (!spin_until(done)) {
    std::unique_lock<std::mutex> lk(mu_);
    caller_sleeping_.store(true, std::memory_order_seq_cst);
    cv_done_.wait(lk, done);
    caller_sleeping_.store(false, std::memory_order_relaxed);
  }
  job_ = nullptr;
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    const auto posted = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    if (!spin_until(posted)) {
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      cv_start_.wait(lk, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_acquire)) return;
    run_share(index);
    if (pending_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
        caller_sleeping_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_done_.notify_one();
    }
  }
}

}  // namespace mx
