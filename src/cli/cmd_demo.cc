// `mixtral demo`: the seed accelerator demo on CPUs. A batch of users (one prompt each, from
// demo/prompts-*.json, or the long-context book prompt) runs greedily through the scheduler
// together; the terminal shows each user's text as it grows, then the timing summary.
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/error.h"
#include "kernels/dtype.h"
#include "demo/demo_limits.h"
#include "demo/demo_prompts.h"
#include "demo/demo_report.h"
#include "demo/demo_run.h"
#include "demo/demo_view.h"
#include "runtime/tokenizer.h"

namespace mx::cli {

namespace {

constexpr int kBookTokens = 16384;  // the seed demo's excerpt: the novel's first 16k tokens

struct DemoArgs {
  EngineOptions engine;
  std::string prompts_file, mode = "prefill", context, prefill_cap = "0";
  bool instruct = false, long_context = false, json = false;
  int max_new_tokens = 128, batch = 0, top_k = 0;
  float temperature = 0.f, top_p = 1.f;
  uint64_t seed = 0;
  // Hidden, for tests: another novel file, a shorter excerpt.
  std::string book_file;
  int book_tokens = kBookTokens;
};

// The demo/ folder: $MIXTRAL_DEMO_DIR, the source tree this binary was built from, next to the
// binary (build/bin/mixtral -> ../../demo), or ./demo, whichever holds `file` first.
std::string demo_file(const std::string& file) {
  namespace fs = std::filesystem;
  std::vector<fs::path> dirs;
  if (const char* d = std::getenv("MIXTRAL_DEMO_DIR"); d && *d) dirs.emplace_back(d);
#ifdef MIXTRAL_SOURCE_DIR
  dirs.emplace_back(fs::path(MIXTRAL_SOURCE_DIR) / "demo");
#endif
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    dirs.push_back(exe.parent_path().parent_path().parent_path() / "demo");
    dirs.push_back(exe.parent_path().parent_path() / "share" / "mixtral" / "demo");
  }
  dirs.emplace_back("demo");
  std::string tried;
  for (const auto& d : dirs) {
    const fs::path p = d / file;
    if (fs::is_regular_file(p, ec)) return p.string();
    tried += (tried.empty() ? "" : ", ") + p.string();
  }
  fail("cannot find demo/" + file + " (looked at " + tried + "); set MIXTRAL_DEMO_DIR or pass the file");
}

int run(DemoArgs& a) {
  DemoOptions o;
  if (a.mode == "prefill") {
    o.mode = FeedMode::PrefillDecode;
  } else if (a.mode == "decode-only") {
    o.mode = FeedMode::DecodeOnly;
  } else {
    fail("--mode must be prefill or decode-only, not '" + a.mode + "'");
  }
  if (a.long_context && !a.prompts_file.empty())
    fail("--long-context uses the book prompt; give it or --prompts, not both");
  o.context = parse_token_count(a.context.empty() ? (a.long_context ? "32k" : "4k") : a.context, "--context");
  o.prefill_cap = parse_token_count(a.prefill_cap, "--prefill-cap");
  if (a.max_new_tokens < 1) fail("--max-new-tokens must be at least 1");
  if (a.max_new_tokens >= o.context)
    fail("--max-new-tokens " + std::to_string(a.max_new_tokens) + " leaves no room for a prompt in a context of " +
         std::to_string(o.context) + " tokens");
  if (a.book_tokens < 1) fail("--book-tokens must be at least 1");
  if (a.temperature < 0) fail("--temperature must be >= 0");
  o.max_new_tokens = a.max_new_tokens;
  o.sampling = {a.temperature, a.top_p, a.top_k, a.seed};

  std::vector<std::string> texts;
  std::string source;
  if (a.long_context) {
    source = a.book_file.empty() ? demo_file("a-tale-of-two-cities.txt") : a.book_file;
  } else {
    source = a.prompts_file.empty() ? demo_file(a.instruct ? "prompts-instruct.json" : "prompts-general.json")
                                    : a.prompts_file;
    texts = read_prompts_file(source);
  }
  const int limit = max_batch_for_context(o.context);
  int batch = a.batch;
  if (batch == 0) batch = a.long_context ? limit : std::min<int>({32, limit, static_cast<int>(texts.size())});
  if (limit == 0 && a.batch == 0) batch = 1;  // let check_batch_limit name the context problem
  check_batch_limit(batch, o.context);

  // Read before the model is mapped, so its pages are not counted as ours twice.
  std::string mem_source;
  const uint64_t available = available_memory_bytes(&mem_source);

  Engine e = open_engine(a.engine);
  const ModelConfig& c = e.model->config;
  if (o.context > c.max_seq_len)
    fail("--context " + std::to_string(o.context) + " is over the model's maximum of " +
         std::to_string(c.max_seq_len) + " tokens");
  // Room for the new tokens is kept, so prompts are cut to context - max_new_tokens.
  const Tokenizer& tok = *e.tokenizer;
  const int budget = o.context - o.max_new_tokens;
  std::vector<DemoPrompt> prompts;
  std::vector<std::string> notes;
  if (a.long_context) {
    const DemoPrompt p = make_book_prompt(tok, read_text_file(source), a.book_tokens, a.instruct, budget);
    prompts.assign(static_cast<size_t>(batch), p);
    notes.push_back("every user gets the book prompt: \"" + std::string(kBookQuestion) + "\" and " +
                    "the first " + std::to_string(a.book_tokens) + " tokens of " +
                    std::filesystem::path(source).filename().string() + " (" +
                    std::to_string(p.tokens.size()) + " prompt tokens)");
  } else {
    const std::vector<std::string> users = assign_prompts(texts, batch);
    std::vector<DemoPrompt> built(texts.size());
    std::vector<bool> done(texts.size(), false);
    for (size_t i = 0; i < users.size(); ++i) {
      const size_t k = i % texts.size();
      if (!done[k]) built[k] = make_demo_prompt(tok, texts[k], a.instruct, budget);
      done[k] = true;
      prompts.push_back(built[k]);
    }
    if (texts.size() > users.size())
      notes.push_back("running the first " + std::to_string(users.size()) + " of " +
                      std::to_string(texts.size()) + " prompts (one per user; see --batch)");
    else if (texts.size() < users.size())
      notes.push_back(std::to_string(users.size()) + " users share " + std::to_string(texts.size()) +
                      " prompts (user i gets prompt i mod " + std::to_string(texts.size()) + ")");
  }
  for (const std::string& n : truncation_notes(prompts, a.instruct)) notes.push_back(n);

  KvCache kv(c.n_layers, c.n_kv_heads * c.head_dim, o.context, e.kv_dtype);
  MemoryPlan plan;
  plan.config = c;
  plan.weights = weights_bytes(e.loaded->store);
  plan.kv_bytes_per_position = kv.bytes_per_slot(1);
  // Decode-only steps carry one token per user; prefill steps at most a chunk of the longest prompt.
  plan.prefill_chunk = o.mode == FeedMode::DecodeOnly ? 1 : o.prefill_chunk;
  for (const DemoPrompt& p : prompts) plan.longest_prompt = std::max(plan.longest_prompt, static_cast<int>(p.tokens.size()));
  check_memory(plan, batch, o.context, available, mem_source);

  DemoSetup setup;
  setup.model = a.engine.model;
  setup.mode = a.mode;
  setup.kv_dtype = dtype_info(e.kv_dtype).name;
  setup.prompts_source = source;
  setup.instruct = a.instruct;
  setup.long_context = a.long_context;
  setup.context = o.context;
  setup.batch = batch;
  setup.max_new_tokens = o.max_new_tokens;
  setup.prefill_cap = o.prefill_cap;
  setup.threads = e.pool->size();
  setup.temperature = a.temperature;
  setup.memory = plan.need(batch, o.context);
  setup.memory_available = available;
  setup.memory_source = mem_source;
  setup.notes = notes;
  for (int i = 0; i < batch; ++i)
    setup.prompt_index.push_back(a.long_context ? 0 : i % static_cast<int>(texts.size()));

  const bool live = !a.json && ::isatty(STDOUT_FILENO);
  if (!a.json) {
    for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
    std::fflush(stdout);
  }
  DemoRun run;
  if (live) {
    LiveView view(stdout, STDOUT_FILENO);
    run = run_demo(make_forward(e, kv), tok, c.vocab, prompts, o, [&view](const DemoRun& r) { view.draw(r); });
    view.finish(run);
  } else {
    run = run_demo(make_forward(e, kv), tok, c.vocab, prompts, o);
  }
  const DemoSummary s = summarize(run);
  if (a.json) {
    // Prompts and replies may hold invalid UTF-8 (a reply cut inside a character): U+FFFD.
    std::printf("%s\n", demo_json(setup, prompts, run, s).dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    if (!live) std::fputs(outputs_text(prompts, run).c_str(), stdout);
    std::fputs("\n", stdout);
    std::fputs(summary_text(setup, s, run).c_str(), stdout);
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

Command add_demo(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  CLI::App* sub = app.add_subcommand(
      "demo", "the seed demo: a batch of users decoding together, live per-user text and a timing summary");
  add_engine_options(sub, a->engine);
  sub->add_option("--prompts", a->prompts_file,
                  "JSON list of {\"prompt\": ...} (default: demo/prompts-general.json, or "
                  "demo/prompts-instruct.json with --instruct)");
  sub->add_flag("--instruct", a->instruct, "wrap each prompt as [INST] prompt [/INST] (for instruct models)");
  sub->add_option("--mode", a->mode,
                  "prefill: prompts prefilled in chunks, then decode; decode-only: prompt tokens fed "
                  "one per step")
      ->default_str("prefill");
  sub->add_option("-n,--max-new-tokens", a->max_new_tokens, "new tokens per user")->default_val(128);
  sub->add_option("--context", a->context,
                  "context per user: 4k, 8k, 16k or 32k (or a token count); default 4k, 32k with --long-context");
  sub->add_option("--batch", a->batch,
                  "users (default: min(32, the context's limit, number of prompts); prompts repeat "
                  "when there are fewer); limits: 4k 32, 8k 16, 16k 8, 32k 4");
  sub->add_flag("--long-context", a->long_context,
                "every user asks which book a 16k-token excerpt of A Tale of Two Cities is from");
  sub->add_option("--prefill-cap", a->prefill_cap,
                  "prefill at most this many prompt tokens in chunks (e.g. 16k, as the seed demo); "
                  "the rest are fed one per decode step (default: no cap)")
      ->default_str("0");
  sub->add_option("--temperature", a->temperature, "0 for greedy (the demo's default)")->default_val(0.f);
  sub->add_option("--top-p", a->top_p, "nucleus sampling mass (with --temperature)")->default_val(1.f);
  sub->add_option("--top-k", a->top_k, "keep the k most likely tokens (0: off)")->default_val(0);
  sub->add_option("--seed", a->seed, "sampling seed")->default_val(0);
  sub->add_flag("--json", a->json, "print the results and summary as one JSON object (see docs/demo.md)");
  sub->add_option("--book-file", a->book_file, "novel for --long-context (tests)")->group("");
  sub->add_option("--book-tokens", a->book_tokens, "excerpt length for --long-context (tests)")->group("");
  return {sub, [a] { return run(*a); }};
}

}  // namespace mx::cli
