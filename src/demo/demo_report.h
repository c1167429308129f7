// The demo's results: the timing summary, its text form, and the --json object (whose schema
// docs/demo.md documents and tests/demo_test.cc checks).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "demo/demo_limits.h"
#include "demo/demo_prompts.h"
#include "demo/demo_run.h"

namespace mx {

// What was run, as the command resolved it.
struct DemoSetup {
  std::string model, mode, kv_dtype, prompts_source;
  bool instruct = false, long_context = false;
  int context = 0, batch = 0, max_new_tokens = 0, prefill_cap = 0, threads = 0;
  float temperature = 0;
  MemoryNeed memory;
  uint64_t memory_available = 0;  // UINT64_MAX: unknown
  std::string memory_source;
  std::vector<std::string> notes;   // shown before the run: prompt assignment, cuts
  std::vector<int> prompt_index;    // per user: index into the prompts list (0 for the book)
};

struct DemoUserStats {
  double ttft_s = -1;          // start of the run to this user's first new token; -1: none
  int decode_tokens = 0;       // tokens after the first
  double decode_tok_s = -1;    // decode_tokens / (done - first token); -1 when undefined
};

struct DemoSummary {
  int users = 0, prompt_tokens = 0, generated_tokens = 0, decode_tokens = 0, steps = 0;
  double prefill_s = 0, prefill_tok_s = 0;  // until every prompt token was read
  double ttft_mean_s = 0;
  double decode_s = 0;                      // first user's first token to last user's last
  double decode_tok_s_total = 0, decode_tok_s_user_mean = 0;
  double total_s = 0;
  std::vector<DemoUserStats> per_user;
};

DemoSummary summarize(const DemoRun& run);

// Shown before the run: which users' prompts were cut, from how many tokens to how many.
std::vector<std::string> truncation_notes(const std::vector<DemoPrompt>& prompts, bool instruct);
// The non-TTY output: every user's prompt (long ones shortened) and generated text.
std::string outputs_text(const std::vector<DemoPrompt>& prompts, const DemoRun& run);
std::string summary_text(const DemoSetup& setup, const DemoSummary& s, const DemoRun& run);
nlohmann::json demo_json(const DemoSetup& setup, const std::vector<DemoPrompt>& prompts,
                         const DemoRun& run, const DemoSummary& s);

// Text shortened to about `max_chars` bytes: its head, " […] ", its tail (UTF-8 safe).
std::string elide_middle(const std::string& text, size_t max_chars);

}  // namespace mx
