// The demo's run: every user's prompt goes through the Scheduler as one batch (all users hold a
// slot from the start), tokens are decoded to text as they come, and the times the summary
// needs are recorded.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "demo/demo_prompts.h"
#include "runtime/sampling.h"
#include "runtime/scheduler.h"
#include "runtime/tokenizer.h"

namespace mx {

struct DemoOptions {
  FeedMode mode = FeedMode::PrefillDecode;
  int context = 4096;
  int max_new_tokens = 128;
  int prefill_cap = 0;      // 0: every prompt token is prefilled in chunks
  int prefill_chunk = 512;  // prompt tokens per user per step
  SamplingParams sampling{0.f, 1.f, 0, 0};  // greedy, like the seed demo
};

// The scheduler settings for `batch` users: a step's prompt budget gives every user a chunk,
// so all prompts advance together.
SchedulerOptions demo_scheduler_options(int batch, const DemoOptions& o);

struct DemoUser {
  int prompt_tokens = 0;
  int fed = 0;                 // prompt tokens the model has read so far
  std::vector<int> generated;  // including a final EOS
  std::string text;            // generated text so far (EOS excluded)
  FinishReason finish = FinishReason::None;
  double t_first_token = -1;   // seconds since the run started; -1 until there is one
  double t_done = -1;
};

struct DemoRun {
  std::vector<DemoUser> users;
  double prefill_seconds = -1;  // when every prompt token had been read (end of that step)
  double total_seconds = 0;
  int steps = 0;
  int prompt_tokens = 0;        // over all users
  bool done = false;
};

// Runs the prompts (one user each) to the end. on_step, when set, sees the run after every
// step (for the live view). Throws mx::Error on a bad prompt or forward failure.
DemoRun run_demo(const Scheduler::ForwardFn& forward, const Tokenizer& tok, int vocab,
                 const std::vector<DemoPrompt>& prompts, const DemoOptions& o,
                 const std::function<void(const DemoRun&)>& on_step = {});

}  // namespace mx
