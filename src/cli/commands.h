// The CLI's commands. Each cmd_*.cc adds its subcommand and options to the app and returns a
// runner that is called when that subcommand was chosen.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <vector>

namespace mx::cli {

struct Command {
  CLI::App* app;
  std::function<int()> run;
};

Command add_generate(CLI::App& app);
Command add_chat(CLI::App& app);
Command add_score(CLI::App& app);
Command add_make_tiny(CLI::App& app);
Command add_repack(CLI::App& app);
Command add_demo(CLI::App& app);
Command add_bench(CLI::App& app);
Command add_serve(CLI::App& app);
Command add_perplexity(CLI::App& app);

std::vector<Command> all_commands(CLI::App& app);

}  // namespace mx::cli
