// `mixtral repack`: writes the weight cache (docs/cache-format.md) from any checkpoint.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <memory>

#include "cli/commands.h"
#include "formats/error.h"
#include "formats/repack.h"

namespace mx::cli {

namespace {

// "[#######.............]  1.2 / 3.4 GB  35%  ETA 12 s" (ETA from the average rate so far).
std::string progress_bar(uint64_t done, uint64_t total, double elapsed_s) {
  constexpr int kWidth = 30;
  const double f = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const int fill = static_cast<int>(f * kWidth + 0.5);
  std::string s = "[" + std::string(static_cast<size_t>(fill), '#') + std::string(static_cast<size_t>(kWidth - fill), '.') + "]";
  char buf[96];
  const bool gb = total >= 1000000000;
  const double unit = gb ? 1e9 : 1e6;
  std::snprintf(buf, sizeof buf, " %.*f / %.*f %s %3d%%", gb ? 2 : 1, static_cast<double>(done) / unit,
                gb ? 2 : 1, static_cast<double>(total) / unit, gb ? "GB" : "MB", static_cast<int>(f * 100));
  s += buf;
  if (done > 0 && done < total && elapsed_s > 0) {
    std::snprintf(buf, sizeof buf, "  ETA %.0f s", elapsed_s * static_cast<double>(total - done) / static_cast<double>(done));
    s += buf;
  }
  return s;
}

int run(RepackOptions& o, bool ranks_given) {
  if (ranks_given && o.ranks < 1) fail("--ranks must be >= 1");
  // On a terminal: a bar with bytes and ETA, redrawn in place under the per-file lines.
  // Otherwise (logs, pipes): only the plain per-file lines.
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  const auto t0 = std::chrono::steady_clock::now();
  bool bar_shown = false;
  o.log = [&](const std::string& s) {
    std::fprintf(stderr, "%s%s\n", bar_shown ? "\r\033[K" : "", s.c_str());
    bar_shown = false;
  };
  if (tty) {
    auto last = t0 - std::chrono::seconds(1);
    o.progress = [&, last](uint64_t done, uint64_t total) mutable {
      const auto now = std::chrono::steady_clock::now();
      if (done < total && now - last < std::chrono::milliseconds(100)) return;  // ~10 redraws/s
      last = now;
      std::fprintf(stderr, "\r\033[K%s", progress_bar(done, total,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
      std::fflush(stderr);
      bar_shown = true;
    };
  }
  const RepackResult r = repack(o);
  if (bar_shown) std::fprintf(stderr, "\n");
  if (r.cache_hit) {
    std::printf("cache hit: %s is up to date\n", o.out.c_str());
    return 0;
  }
  // Per-tensor notes can repeat for every layer; show a few and count the rest.
  const size_t show = 6;
  for (size_t i = 0; i < r.notes.size() && i < show; ++i)
    std::fprintf(stderr, "note: %s\n", r.notes[i].c_str());
  if (r.notes.size() > show)
    std::fprintf(stderr, "note: ... and %zu more (see \"notes\" in the manifest)\n",
                 r.notes.size() - show);
  std::printf("wrote %s: %d weight files, %.1f MB, dtype %s, in %.1f s\n", r.out.c_str(), r.files,
              static_cast<double>(r.bytes) / 1e6, o.dtype.c_str(), r.seconds);
  return 0;
}

}  // namespace

Command add_repack(CLI::App& app) {
  auto o = std::make_shared<RepackOptions>();
  CLI::App* sub = app.add_subcommand(
      "repack", "convert a checkpoint into the mmap-ready weight cache (one file per expert)");
  sub->add_option("--model,-m", o->model, "source: any folder or file load_model reads")->required();
  sub->add_option("--out,-o", o->out, "cache folder to create (replaced atomically)")->required();
  sub->add_option("--dtype", o->dtype,
                  "keep (each tensor's source type), f32, bf16, q8 (Q8_0, matrices 16 rows interleaved), "
                  "q4 (Q4_0, interleaved too; LM head and attention wk/wv in 8 bits), "
                  "or the k-quant mixes of llama-quantize: q4k (its Q4_K_M: Q4_K, with Q6_K for the "
                  "LM head and some expert w2, Q5_K for wo, Q8_0 for wk/wv), q5k (Q5_K_M), q6k (Q6_K); "
                  "k-quant rows not a multiple of 256 wide fall back to Q5_0/Q5_1/Q8_0 as in llama.cpp; "
                  "norms are always f32, the router f32 in every quantized mode")
      ->default_val("keep");
  CLI::Option* ranks = sub->add_option("--ranks", o->ranks, "also list which files each of N ranks needs");
  sub->add_option("--threads,-t", o->threads, "conversion threads (default: all cores)");
  return {sub, [o, ranks] { return run(*o, ranks->count() > 0); }};
}

}  // namespace mx::cli
