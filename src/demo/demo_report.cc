#include "demo/demo_report.h"

#include <algorithm>
#include <cstdio>
#include <limits>

namespace mx {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Keeps JSON valid for any number (NaN/inf are not JSON) and marks "undefined" as null.
nlohmann::json num_or_null(double v) {
  if (v < 0 || !std::isfinite(v)) return nullptr;
  return v;
}

bool utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

DemoSummary summarize(const DemoRun& run) {
  DemoSummary s;
  s.users = static_cast<int>(run.users.size());
  s.prompt_tokens = run.prompt_tokens;
  s.steps = run.steps;
  s.total_s = run.total_seconds;
  s.prefill_s = run.prefill_seconds >= 0 ? run.prefill_seconds : run.total_seconds;
  s.prefill_tok_s = s.prefill_s > 0 ? s.prompt_tokens / s.prefill_s : 0;
  double first = std::numeric_limits<double>::max(), last = 0, ttft_sum = 0, rate_sum = 0;
  int n_ttft = 0, n_rate = 0;
  for (const DemoUser& u : run.users) {
    DemoUserStats st;
    s.generated_tokens += static_cast<int>(u.generated.size());
    if (u.t_first_token >= 0) {
      st.ttft_s = u.t_first_token;
      ttft_sum += st.ttft_s;
      ++n_ttft;
      first = std::min(first, u.t_first_token);
      st.decode_tokens = static_cast<int>(u.generated.size()) - 1;
      s.decode_tokens += st.decode_tokens;
      if (u.t_done >= 0) last = std::max(last, u.t_done);
      const double dt = u.t_done - u.t_first_token;
      if (st.decode_tokens > 0 && u.t_done >= 0 && dt > 0) {
        st.decode_tok_s = st.decode_tokens / dt;
        rate_sum += st.decode_tok_s;
        ++n_rate;
      }
    }
    s.per_user.push_back(st);
  }
  s.ttft_mean_s = n_ttft ? ttft_sum / n_ttft : 0;
  s.decode_s = n_ttft && last > first ? last - first : 0;
  s.decode_tok_s_total = s.decode_s > 0 ? s.decode_tokens / s.decode_s : 0;
  s.decode_tok_s_user_mean = n_rate ? rate_sum / n_rate : 0;
  return s;
}

std::string elide_middle(const std::string& text, size_t max_chars) {
  if (text.size() <= max_chars) return text;
  size_t head = max_chars / 2, tail = text.size() - max_chars / 2;
  while (head > 0 && utf8_continuation(text[head])) --head;
  while (tail < text.size() && utf8_continuation(text[tail])) ++tail;
  return text.substr(0, head) + " [...] " + text.substr(tail);
}

std::vector<std::string> truncation_notes(const std::vector<DemoPrompt>& prompts, bool instruct) {
  std::vector<std::string> notes;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const DemoPrompt& p = prompts[i];
    if (!p.truncated) continue;
    notes.push_back("user " + std::to_string(i + 1) + ": prompt cut from " +
                    std::to_string(p.original_tokens) + " to " + std::to_string(p.tokens.size()) +
                    " tokens to fit the context" +
                    (instruct ? " (cut before the [INST] wrapping, so [/INST] is kept)" : ""));
  }
  return notes;
}

std::string outputs_text(const std::vector<DemoPrompt>& prompts, const DemoRun& run) {
  std::string out;
  for (size_t i = 0; i < run.users.size(); ++i) {
    const DemoUser& u = run.users[i];
    out += "=== user " + std::to_string(i + 1) + " (" + std::to_string(u.prompt_tokens) +
           " prompt tokens" + (prompts[i].truncated ? ", truncated" : "") + ", " +
           std::to_string(u.generated.size()) + " generated, " + finish_reason_name(u.finish) + ")\n";
    out += elide_middle(prompts[i].text, 400) + "\n--- output:\n" + u.text + "\n";
  }
  return out;
}

std::string summary_text(const DemoSetup& setup, const DemoSummary& s, const DemoRun& run) {
  std::string o;
  o += "demo: " + std::to_string(s.users) + " users, context " + std::to_string(setup.context) +
       ", mode " + setup.mode + (setup.instruct ? ", instruct" : "") +
       (setup.long_context ? ", long context" : "") +
       (setup.prefill_cap > 0 ? ", prefill cap " + std::to_string(setup.prefill_cap) : "") +
       (setup.temperature > 0 ? ", temperature " + fmt("%g", setup.temperature) : ", greedy") +
       ", up to " + std::to_string(setup.max_new_tokens) + " new tokens\n";
  o += "prefill:     " + std::to_string(s.prompt_tokens) + " prompt tokens in " + fmt("%.3f", s.prefill_s) +
       " s = " + fmt("%.1f", s.prefill_tok_s) + " tokens/s" +
       (setup.mode == "decode-only" ? " (read one token per step)" : "") + "\n";
  double tmin = 0, tmax = 0;
  bool any = false;
  for (const auto& u : s.per_user) {
    if (u.ttft_s < 0) continue;
    tmin = any ? std::min(tmin, u.ttft_s) : u.ttft_s;
    tmax = any ? std::max(tmax, u.ttft_s) : u.ttft_s;
    any = true;
  }
  o += "first token: mean " + fmt("%.3f", s.ttft_mean_s) + " s (min " + fmt("%.3f", tmin) + ", max " +
       fmt("%.3f", tmax) + ")\n";
  o += "decode:      " + std::to_string(s.decode_tokens) + " tokens in " + fmt("%.3f", s.decode_s) +
       " s = " + fmt("%.1f", s.decode_tok_s_total) + " tokens/s total, " +
       fmt("%.1f", s.decode_tok_s_user_mean) + " tokens/s per user (mean)\n";
  o += "total:       " + fmt("%.3f", s.total_s) + " s, " + std::to_string(s.steps) + " steps, " +
       std::to_string(s.generated_tokens) + " tokens generated\n";
  o += "memory:      weights " + format_bytes(setup.memory.weights) + " + KV cache " +
       format_bytes(setup.memory.kv) + " + activations " + format_bytes(setup.memory.activations) +
       " = " + format_bytes(setup.memory.total()) + " of " +
       (setup.memory_available == UINT64_MAX ? std::string("unknown") : format_bytes(setup.memory_available)) +
       " available\n";
  o += "user  prompt  new  ttft(s)  decode tok/s  finish\n";
  for (size_t i = 0; i < s.per_user.size(); ++i) {
    const DemoUserStats& u = s.per_user[i];
    char line[160];
    std::snprintf(line, sizeof line, "%4zu  %6d  %3zu  %7s  %12s  %s\n", i + 1, run.users[i].prompt_tokens,
                  run.users[i].generated.size(), u.ttft_s < 0 ? "-" : fmt("%.3f", u.ttft_s).c_str(),
                  u.decode_tok_s < 0 ? "-" : fmt("%.1f", u.decode_tok_s).c_str(),
                  finish_reason_name(run.users[i].finish).c_str());
    o += line;
  }
  return o;
}

nlohmann::json demo_json(const DemoSetup& setup, const std::vector<DemoPrompt>& prompts,
                         const DemoRun& run, const DemoSummary& s) {
  using nlohmann::json;
  json users = json::array();
  for (size_t i = 0; i < run.users.size(); ++i) {
    const DemoUser& u = run.users[i];
    const DemoUserStats& st = s.per_user[i];
    users.push_back({{"user", i + 1},
                     {"prompt_index", i < setup.prompt_index.size() ? setup.prompt_index[i] : 0},
                     {"prompt", prompts[i].text},
                     {"prompt_tokens", u.prompt_tokens},
                     {"original_prompt_tokens", prompts[i].original_tokens},
                     {"truncated", prompts[i].truncated},
                     {"output", u.text},
                     {"generated_tokens", u.generated.size()},
                     {"output_token_ids", u.generated},
                     {"finish_reason", finish_reason_name(u.finish)},
                     {"ttft_s", num_or_null(st.ttft_s)},
                     {"decode_tokens_per_s", num_or_null(st.decode_tok_s)}});
  }
  const json memory = {{"weights_bytes", setup.memory.weights},
                       {"kv_cache_bytes", setup.memory.kv},
                       {"activation_bytes", setup.memory.activations},
                       {"needed_bytes", setup.memory.total()},
                       {"available_bytes", setup.memory_available == UINT64_MAX
                                               ? json(nullptr)
                                               : json(setup.memory_available)},
                       {"available_source", setup.memory_source}};
  const json summary = {{"users", s.users},
                        {"context", setup.context},
                        {"mode", setup.mode},
                        {"prompt_tokens", s.prompt_tokens},
                        {"generated_tokens", s.generated_tokens},
                        {"prefill_s", s.prefill_s},
                        {"prefill_tokens_per_s", s.prefill_tok_s},
                        {"ttft_mean_s", s.ttft_mean_s},
                        {"decode_tokens", s.decode_tokens},
                        {"decode_s", s.decode_s},
                        {"decode_tokens_per_s_total", s.decode_tok_s_total},
                        {"decode_tokens_per_s_per_user_mean", s.decode_tok_s_user_mean},
                        {"total_s", s.total_s},
                        {"steps", s.steps}};
  return {{"model", setup.model},
          {"prompts", setup.prompts_source},
          {"mode", setup.mode},
          {"instruct", setup.instruct},
          {"long_context", setup.long_context},
          {"context", setup.context},
          {"batch", setup.batch},
          {"max_new_tokens", setup.max_new_tokens},
          {"prefill_cap", setup.prefill_cap},
          {"temperature", setup.temperature},
          {"threads", setup.threads},
          {"kv_dtype", setup.kv_dtype},
          {"memory", memory},
          {"notes", setup.notes},
          {"users", users},
          {"summary", summary}};
}

}  // namespace mx
