// Helpers shared by the tests: fixture paths and running the CLI.
#pragma once
#include <string>

namespace mx::test {

std::string data_path(const std::string& rel);  // tests/data/<rel>
std::string tmp_dir(const std::string& tag);     // fresh empty folder under /tmp
struct RunResult {
  int exit_code;
  std::string out, err;
};
// Runs `build/bin/mixtral <args>` through the shell (args are pasted verbatim).
RunResult run_cli(const std::string& args);
std::string read_file(const std::string& path);

}  // namespace mx::test
