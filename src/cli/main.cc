// `mixtral <command>`: the single binary. Each command lives in its own cmd_*.cc file.
//
// Under `mpirun -np N` only rank 0 runs the command; the other ranks parse the same command
// line for --model/--threads and serve rank 0's forward steps (runtime/expert_parallel.h).
#include <CLI/CLI.hpp>
#include <malloc.h>

#include <cstdio>
#include <exception>
#include <new>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/error.h"
#include "runtime/expert_parallel.h"

namespace {

int follower(CLI::App& app, std::vector<mx::cli::Command>& cmds, int argc, char** argv) {
  mx::ep::FollowerOptions fo;
  try {
    app.parse(argc, argv);
    for (auto& c : cmds)
      if (c.app->parsed())
        if (const mx::cli::EngineOptions* o = mx::cli::engine_options_of(c.app)) {
          fo.has_model = true;
          fo.model = o->model;
          fo.threads = o->threads;
          fo.interleave = !o->no_interleave;
        }
  } catch (const CLI::ParseError&) {
    // Rank 0 parses the same line and reports it; this rank just waits for the exit.
  }
  return mx::ep::follower_main(fo);
}

}  // namespace

int main(int argc, char** argv) {
  // Every forward step allocates and frees activation buffers of up to tens of MB. By default
  // glibc maps each with mmap and unmaps it on free, so every step faults in and zeroes fresh
  // pages (~4% of batch-32 decode time). Keeping them in the heap makes reuse free; the peak
  // stays one step's working set.
  mallopt(M_MMAP_THRESHOLD, 512 << 20);
  mallopt(M_TRIM_THRESHOLD, 1024 << 20);
  const mx::ep::World& world = mx::ep::init(&argc, &argv);
  CLI::App app{"mixtral: Mixtral-8x7B inference on CPUs, with experts sharded over MPI ranks"};
  app.set_version_flag("--version", std::string("mixtral ") + MIXTRAL_VERSION);
  app.require_subcommand(1);
  app.fallthrough(false);
  std::vector<mx::cli::Command> cmds = mx::cli::all_commands(app);
  if (world.rank != 0) return follower(app, cmds, argc, argv);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return mx::ep::finish(app.exit(e));
  }
  for (auto& c : cmds) {
    if (c.app->parsed()) {
      int code = 1;
      try {
        code = c.run();
      } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "mixtral %s: error: out of memory\n", c.app->get_name().c_str());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "mixtral %s: error: %s\n", c.app->get_name().c_str(), e.what());
      }
      // Tells the other ranks to exit with the same code (or aborts a half-done step).
      return mx::ep::finish(code);
    }
  }
  return mx::ep::finish(1);
}
