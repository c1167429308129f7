#include "demo/demo_run.h"

#include <algorithm>

#include "formats/error.h"
#include "demo/demo_limits.h"

namespace mx {

SchedulerOptions demo_scheduler_options(int batch, const DemoOptions& o) {
  SchedulerOptions so;
  so.max_users = batch;
  so.prefill_chunk = std::max(1, o.prefill_chunk);
  so.step_tokens = demo_step_budget(batch, so.prefill_chunk);
  so.prefill_cap = o.prefill_cap;
  so.mode = o.mode;
  return so;
}

DemoRun run_demo(const Scheduler::ForwardFn& forward, const Tokenizer& tok, int vocab,
                 const std::vector<DemoPrompt>& prompts, const DemoOptions& o,
                 const std::function<void(const DemoRun&)>& on_step) {
  if (prompts.empty()) fail("the demo needs at least one prompt");
  const int batch = static_cast<int>(prompts.size());
  Scheduler sched(forward, vocab, tok.eos_id(), o.context, demo_scheduler_options(batch, o));
  DemoRun run;
  run.users.resize(prompts.size());
  std::vector<StreamDecoder> decoders(prompts.size(), StreamDecoder(tok));
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request r;
    r.prompt = prompts[i].tokens;
    r.max_new_tokens = o.max_new_tokens;
    r.sampling = o.sampling;
    try {
      // Users are numbered from 0 in submission order, so user id i is prompts[i].
      sched.submit(std::move(r));
    } catch (const Error& ex) {
      fail("user " + std::to_string(i + 1) + ": " + ex.what());
    }
    run.users[i].prompt_tokens = static_cast<int>(prompts[i].tokens.size());
    run.prompt_tokens += run.users[i].prompt_tokens;
  }
  const int eos = tok.eos_id();
  const auto on_token = [&](int id, int token) {
    DemoUser& u = run.users[static_cast<size_t>(id)];
    u.generated.push_back(token);
    if (token != eos) u.text += decoders[static_cast<size_t>(id)].push(token);
  };
  const auto on_finish = [&](int id) {
    run.users[static_cast<size_t>(id)].text += decoders[static_cast<size_t>(id)].finish();
  };
  while (sched.busy()) {
    sched.step(on_token, on_finish);
    ++run.steps;
    bool all_read = true;
    for (int id = 0; id < batch; ++id) {
      const UserState& s = sched.user(id);
      DemoUser& u = run.users[static_cast<size_t>(id)];
      u.fed = static_cast<int>(s.fed);
      u.finish = s.finish;
      // The clock starts when the scheduler does, just before every prompt is submitted.
      u.t_first_token = s.t_first_token;
      u.t_done = s.t_done;
      all_read = all_read && u.fed == u.prompt_tokens;
    }
    if (all_read && run.prefill_seconds < 0) run.prefill_seconds = sched.now();
    run.total_seconds = sched.now();
    if (on_step) on_step(run);
  }
  run.done = true;
  return run;
}

}  // namespace mx
