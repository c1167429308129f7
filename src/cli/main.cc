// `mixtral <command>`: the single binary. Each command lives in its own cmd_*.cc file.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "formats/error.h"

int main(int argc, char** argv) {
  CLI::App app{"mixtral: Mixtral-8x7B inference on CPUs, with experts sharded over MPI ranks"};
  app.set_version_flag("--version", std::string("mixtral ") + MIXTRAL_VERSION);
  app.require_subcommand(1);
  app.fallthrough(false);
  std::vector<mx::cli::Command> cmds = mx::cli::all_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (auto& c : cmds) {
    if (c.app->parsed()) {
      try {
        return c.run();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "mixtral %s: error: %s\n", c.app->get_name().c_str(), e.what());
        mx::cli::abort_all_ranks(1);
        return 1;
      }
    }
  }
  return 1;
}
