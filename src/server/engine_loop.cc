#include "server/engine_loop.h"

#include <cstdio>

namespace mx::server {

bool Job::wait(std::vector<int>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lk(m_);
  if (pending_.empty() && !done_) cv_.wait_for(lk, timeout, [&] { return !pending_.empty() || done_; });
  const bool changed = !pending_.empty() || done_;
  out.insert(out.end(), pending_.begin(), pending_.end());
  pending_.clear();
  return changed;
}

bool Job::done() const {
  std::lock_guard lk(m_);
  return done_ && pending_.empty();
}

FinishReason Job::finish() const {
  std::lock_guard lk(m_);
  return finish_;
}

std::string Job::error() const {
  std::lock_guard lk(m_);
  return error_;
}

int Job::error_status() const {
  std::lock_guard lk(m_);
  return error_status_;
}

void Job::push(int token) {
  {
    std::lock_guard lk(m_);
    pending_.push_back(token);
  }
  cv_.notify_all();
}

void Job::end(FinishReason r, const std::string& error, int status) {
  {
    std::lock_guard lk(m_);
    if (done_) return;
    done_ = true;
    finish_ = r;
    error_ = error;
    error_status_ = status;
  }
  cv_.notify_all();
}

EngineLoop::EngineLoop(Scheduler::ForwardFn forward, int vocab, int eos_id, int context, SchedulerOptions opt,
                       std::function<size_t()> kv_bytes)
    : forward_(std::move(forward)), vocab_(vocab), eos_id_(eos_id), context_(context), opt_(opt),
      kv_bytes_(std::move(kv_bytes)) {
  sched_.emplace(forward_, vocab_, eos_id_, context_, opt_);
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() { stop(); }

std::shared_ptr<Job> EngineLoop::submit(Request r) { return submit_choices(std::move(r), 1)[0]; }

std::vector<std::shared_ptr<Job>> EngineLoop::submit_choices(Request r, int n,
                                                          const std::vector<std::shared_ptr<TokenHook>>& hooks) {
  std::vector<std::shared_ptr<Job>> jobs;
  const auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < std::max(n, 1); ++i) {
    auto job = std::make_shared<Job>();
    job->req_ = r;
    if (static_cast<size_t>(i) < hooks.size()) job->req_.hook = hooks[static_cast<size_t>(i)];
    job->choice_ = i;
    job->leader_ = i > 0 ? jobs[0] : nullptr;
    job->t_submit_ = t;
    jobs.push_back(std::move(job));
  }
  std::string refuse = "the server is shutting down";
  int status = 503;
  {
    std::lock_guard lk(m_);
    if (!stopping_ && fatal_.empty()) {
      // All choices in one go, so one admit() sees the leader before its followers.
      incoming_.insert(incoming_.end(), jobs.begin(), jobs.end());
      // Ended jobs drop out when the list has doubled, so it stays about as long as the live ones.
      if (live_.size() >= 64 && (live_.size() & (live_.size() - 1)) == 0)
        std::erase_if(live_, [](const std::weak_ptr<Job>& w) {
          const auto job = w.lock();
          return !job || job->done();
        });
      for (auto& job : jobs) live_.push_back(job);
      cv_.notify_all();
      return jobs;
    }
    if (!fatal_.empty()) refuse = fatal_, status = fatal_status_;
  }
  for (auto& job : jobs) job->end(FinishReason::Cancelled, refuse, status);
  return jobs;
}

void EngineLoop::cancel(const std::shared_ptr<Job>& job, bool client_left) {
  std::lock_guard lk(m_);
  if (!client_left && !job->counted_) {
    // Counted now, before the handler sends its reply (the engine ends the job later).
    job->counted_ = true;
    ++stats_.completed;
  }
  cancels_.emplace_back(job, client_left);
  cv_.notify_all();
}

void EngineLoop::stop() {
  {
    std::lock_guard lk(m_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EngineLoop::fail_all(const std::string& error, int status) {
  std::vector<std::weak_ptr<Job>> live;
  {
    std::lock_guard lk(m_);
    fatal_ = error;
    fatal_status_ = status;
    live.swap(live_);
  }
  for (auto& w : live)
    if (auto job = w.lock()) job->end(FinishReason::None, error, status);
}

EngineStats EngineLoop::stats() const {
  std::lock_guard lk(m_);
  EngineStats s = stats_;
  s.waiting += static_cast<int>(incoming_.size());
  return s;
}

void EngineLoop::count_end(Job& job, bool cancelled) {
  std::lock_guard lk(m_);
  if (job.counted_) return;
  job.counted_ = true;
  ++stats_.completed;
  if (cancelled) ++stats_.cancelled;
}

void EngineLoop::publish_queue() {
  int in_slots = 0;
  for (const auto& [id, job] : jobs_) in_slots += sched_->user(id).slot >= 0 ? 1 : 0;
  std::lock_guard lk(m_);
  stats_.running = in_slots;
  stats_.waiting = static_cast<int>(jobs_.size()) - in_slots;
}

int EngineLoop::admit(std::vector<std::shared_ptr<Job>>& in) {
  int refused = 0;
  for (auto& job : in) {
    try {
      Request r = job->req_;
      // submit() gives the next user id, n_users(); see seed_for_stream.
      r.sampling.seed = seed_for_stream(r.sampling.seed, static_cast<uint64_t>(sched_->n_users()),
                                        static_cast<uint64_t>(job->choice_));
      if (job->leader_ && job->leader_->user_ >= 0 && jobs_.count(job->leader_->user_))
        r.prompt_leader = job->leader_->user_;
      const int id = sched_->submit(std::move(r));
      job->user_ = id;
      jobs_[id] = job;
    } catch (const std::exception& e) {
      // The HTTP layer validates first, so this is a request the scheduler still refuses.
      count_end(*job);
      job->end(FinishReason::None, e.what(), 400);
      ++refused;
    }
  }
  return refused;
}

void EngineLoop::end_all(const std::string& error, int status) {
  for (auto& [id, job] : jobs_) {
    sched_->cancel(id);
    job->end(FinishReason::Cancelled, error, status);
  }
  jobs_.clear();
  std::deque<std::shared_ptr<Job>> left;
  {
    std::lock_guard lk(m_);
    left.swap(incoming_);
    cancels_.clear();
  }
  for (auto& job : left) job->end(FinishReason::Cancelled, error, status);
}

void EngineLoop::run() {
  // The scheduler keeps every user it ever saw; starting a fresh one when idle bounds that.
  constexpr int kRenewAfterUsers = 1024;
  std::unique_lock lk(m_);
  while (true) {
    cv_.wait(lk, [&] { return stopping_ || !incoming_.empty() || !cancels_.empty() || sched_->busy(); });
    if (stopping_) break;
    std::vector<std::shared_ptr<Job>> in(incoming_.begin(), incoming_.end());
    std::vector<std::pair<std::shared_ptr<Job>, bool>> cancels(cancels_.begin(), cancels_.end());
    incoming_.clear();
    cancels_.clear();
    // Handed over: out of incoming_ (which stats() adds), so waiting until publish_queue().
    stats_.waiting += static_cast<int>(in.size());
    lk.unlock();

    admit(in);
    for (auto& [job, client_left] : cancels) {
      auto it = job->user_ >= 0 ? jobs_.find(job->user_) : jobs_.end();
      if (it == jobs_.end()) continue;  // already finished
      sched_->cancel(job->user_);
      count_end(*job, client_left);
      job->end(FinishReason::Cancelled);
      jobs_.erase(it);
    }
    // Admitted and cancelled requests are counted before the step, which may take long.
    publish_queue();
    if (sched_->busy()) {
      try {
        const StepStats st = sched_->step(
                     [&](int id, int token) {
                       Job& job = *jobs_.at(id);
                       job.push(token);
                       const auto t = std::chrono::steady_clock::now();
                       {
                         std::lock_guard g(m_);
                         EngineCounters& c = stats_.counters;
                         ++c.generated_tokens;
                         if (job.got_token_) c.itl.observe(std::chrono::duration<double>(t - job.t_last_).count());
                         else c.ttft.observe(std::chrono::duration<double>(t - job.t_submit_).count());
                       }
                       job.got_token_ = true;
                       job.t_last_ = t;
                     },
                     [&](int id) {
                       count_end(*jobs_.at(id));
                       jobs_.at(id)->end(sched_->user(id).finish);
                       jobs_.erase(id);
                     });
        std::lock_guard g(m_);
        stats_.counters.prefilled_tokens += st.prompt_tokens;
      } catch (const std::exception& e) {
        // The requests of a step that failed cannot go on; the server can.
        std::fprintf(stderr, "mixtral serve: a forward step failed: %s\n", e.what());
        for (auto& [id, job] : jobs_) {
          sched_->cancel(id);
          count_end(*job);
          job->end(FinishReason::None, std::string("the engine failed: ") + e.what(), 500);
        }
        jobs_.clear();
      }
    }
    if (!sched_->busy() && sched_->n_users() >= kRenewAfterUsers) {
      // The new scheduler takes over the slot histories: the KV cache outlives it.
      Scheduler next(forward_, vocab_, eos_id_, context_, opt_);
      next.adopt_cache(*sched_);
      sched_.emplace(std::move(next));
    }
    const size_t kv_bytes = kv_bytes_ ? kv_bytes_() : 0;
    const PrefixCacheStats ps = sched_->prefix_stats();
    publish_queue();
    lk.lock();
    stats_.counters.kv_bytes = kv_bytes;
    stats_.counters.prompt_tokens = ps.prompt_tokens;
    stats_.counters.reused_tokens = ps.reused_tokens;
    stats_.counters.prefix_requests = ps.requests;
    stats_.counters.prefix_hits = ps.hits;
  }
  lk.unlock();
  end_all("the server is shutting down", 503);
  lk.lock();
  stats_.running = stats_.waiting = 0;
}

namespace {

// The multiplicative inverse of an odd number mod 2^64 (Newton's iteration doubles the
// correct low bits each round: 3 -> 6 -> ... -> 96).
constexpr uint64_t inverse(uint64_t a) {
  uint64_t x = a;
  for (int i = 0; i < 5; ++i) x *= 2 - a * x;
  return x;
}

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL, kM1 = 0xbf58476d1ce4e5b9ULL, kM2 = 0x94d049bb133111ebULL;

uint64_t splitmix64(uint64_t x) {
  uint64_t z = x + kGamma;
  z = (z ^ (z >> 30)) * kM1;
  z = (z ^ (z >> 27)) * kM2;
  return z ^ (z >> 31);
}

// The x with splitmix64(x) == r.
uint64_t unsplitmix64(uint64_t r) {
  uint64_t z = r ^ (r >> 31) ^ (r >> 62);
  z *= inverse(kM2);
  z ^= (z >> 27) ^ (z >> 54);
  z *= inverse(kM1);
  z ^= (z >> 30) ^ (z >> 60);
  return z - kGamma;
}

}  // namespace

uint64_t seed_for_stream(uint64_t seed, uint64_t stream, uint64_t choice) {
  // Rng(seed, stream) starts from splitmix64(seed) ^ stream * K (runtime/sampling.cc).
  constexpr uint64_t K = 0xd1b54a32d192ed03ULL;
  return unsplitmix64(splitmix64(seed) ^ (stream * K) ^ (choice * K));
}

}  // namespace mx::server
