// `mixtral repack`: writes the weight cache (docs/cache-format.md) from any checkpoint.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "formats/error.h"
#include "formats/repack.h"

namespace mx::cli {

namespace {

int run(RepackOptions& o, bool ranks_given) {
  if (ranks_given && o.ranks < 1) fail("--ranks must be >= 1");
  o.log = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  const RepackResult r = repack(o);
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
                  "keep (each tensor's source type), f32, bf16, q8 (Q8_0) or q4 (Q4_0); "
                  "norms are always f32")
      ->default_val("keep");
  CLI::Option* ranks = sub->add_option("--ranks", o->ranks, "also list which files each of N ranks needs");
  sub->add_option("--threads,-t", o->threads, "conversion threads (default: all cores)");
  return {sub, [o, ranks] { return run(*o, ranks->count() > 0); }};
}

}  // namespace mx::cli
