// EngineLoop::fail_all, as `serve` uses it when an MPI rank is lost: called from another
// thread while the engine thread is stuck inside a forward step, it must end the running
// request, the queued one and any later one with the given error and status.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "server/engine_loop.h"

namespace mx::server {
namespace {

constexpr int kVocab = 16;

Request request(int max_tokens) {
  Request r;
  r.prompt = {1, 2, 3};
  r.max_new_tokens = max_tokens;
  r.sampling.temperature = 0;
  r.stop_at_eos = false;
  return r;
}

// Waits until `job` is done (bounded), collecting its tokens.
bool wait_done(Job& job) {
  std::vector<int> tokens;
  for (int i = 0; i < 500 && !job.done(); ++i) job.wait(tokens, std::chrono::milliseconds(10));
  return job.done();
}

TEST(EngineLoop, FailAllEndsRunningQueuedAndLaterRequests) {
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> steps{0};
  // The second step blocks, as a step whose peer rank died does.
  auto forward = [&](const std::vector<SeqChunk>& batch) {
    if (++steps == 2) {
      std::unique_lock lk(m);
      cv.wait(lk, [&] { return release; });
    }
    return std::vector<float>(batch.size() * kVocab, 0.0f);
  };
  SchedulerOptions o;
  o.max_users = 1;  // the second request waits in the queue
  EngineLoop engine(forward, kVocab, 15, 64, o);
  auto running = engine.submit(request(40));
  auto queued = engine.submit(request(5));
  for (int i = 0; i < 500 && steps < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(steps, 2) << "the engine never reached the blocking step";

  const std::string msg = "rank 1 on host h1 does not answer";
  engine.fail_all(msg, 503);
  for (auto* job : {&running, &queued}) {
    ASSERT_TRUE(wait_done(**job));
    EXPECT_EQ((*job)->error(), msg);
    EXPECT_EQ((*job)->error_status(), 503);
  }
  auto later = engine.submit(request(5));
  ASSERT_TRUE(later->done());
  EXPECT_EQ(later->error(), msg);
  EXPECT_EQ(later->error_status(), 503);

  {
    std::lock_guard lk(m);
    release = true;
  }
  cv.notify_all();
  engine.stop();
  EXPECT_EQ(running->error(), msg);  // the step that came back does not overwrite the error
}

}  // namespace
}  // namespace mx::server
