// `mixtral perplexity`: PPL of a text file as llama-perplexity computes it, and KL divergence
// against saved base log-probabilities (runtime/perplexity.h has the rules and file format).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/error.h"
#include "runtime/perplexity.h"
#include "runtime/tokenizer.h"

namespace mx::cli {

namespace {

struct PerplexityArgs {
  EngineOptions engine;
  std::string file, save_logits, kl_base;
  int ctx = 512;
  int chunks = -1;
  bool json = false;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path + ": cannot open the text file");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string bar(int done, int total) {
  constexpr int kWidth = 30;
  const int fill = total ? done * kWidth / total : kWidth;
  return "[" + std::string(static_cast<size_t>(fill), '=') + std::string(static_cast<size_t>(kWidth - fill), ' ') + "]";
}

int run(PerplexityArgs& a) {
  if (!a.save_logits.empty() && !a.kl_base.empty()) fail("give --save-logits or --kl-base, not both");
  if (a.chunks == 0 || a.chunks < -1) fail("--chunks must be at least 1");
  const std::string text = read_text(a.file);  // before loading, so a bad path fails fast
  if (!a.kl_base.empty()) read_logits_header(a.kl_base);
  Engine e = open_engine(a.engine);
  const std::vector<int> tokens = e.tokenizer->encode(text, true);
  PerplexityOptions o;
  o.ctx = a.ctx;
  o.max_chunks = a.chunks;
  o.kv_dtype = e.kv_dtype;
  o.save_logits = a.save_logits;
  o.kl_base = a.kl_base;
  // Running value on stderr: redrawn in place on a terminal, one line per chunk otherwise.
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  const auto t0 = std::chrono::steady_clock::now();
  o.progress = [&](int done, int total, double ppl, double err) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "%s%s %d/%d chunks  PPL %.4f ± %.4f  %.1f s%s", tty ? "\r\033[K" : "",
                 bar(done, total).c_str(), done, total, ppl, err, s, tty ? "" : "\n");
    std::fflush(stderr);
  };
  const PerplexityResult r = run_perplexity(*e.model, tokens, e.tokenizer->bos_id(), o, a.file, *e.pool);
  if (tty) std::fprintf(stderr, "\n");
  if (a.json)
    std::printf("%s\n", perplexity_json(r).c_str());
  else
    std::printf("%s", perplexity_report(r).c_str());
  return 0;
}

}  // namespace

Command add_perplexity(CLI::App& app) {
  auto a = std::make_shared<PerplexityArgs>();
  CLI::App* sub = app.add_subcommand(
      "perplexity", "perplexity of a text file as llama-perplexity computes it; KL divergence "
                    "against a base model's saved log-probabilities");
  add_engine_options(sub, a->engine, "f32");
  sub->add_option("--file,-f", a->file, "text file to score (tokenized whole, BOS first)")->required();
  sub->add_option("--ctx,-c", a->ctx, "tokens per chunk; the second half of each is scored")->default_val(512);
  sub->add_option("--chunks", a->chunks, "score at most this many chunks (default: all that fit)");
  sub->add_option("--save-logits", a->save_logits,
                  "write this run's log-probabilities (f16) for a later --kl-base comparison");
  sub->add_option("--kl-base", a->kl_base,
                  "compare against the log-probabilities saved by --save-logits: KL divergence, "
                  "same top token, Δp, PPL ratio");
  sub->add_flag("--json", a->json, "print the result as one JSON object");
  return {sub, [a] { return run(*a); }};
}

}  // namespace mx::cli
