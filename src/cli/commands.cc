#include "cli/commands.h"

namespace mx::cli {

std::vector<Command> all_commands(CLI::App& app) {
  return {add_generate(app), add_chat(app), add_score(app), add_make_tiny(app), add_repack(app), add_bench(app), add_demo(app), add_serve(app), add_perplexity(app)};
}

}  // namespace mx::cli
