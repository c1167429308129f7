#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <vector>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace mx::test {

std::string data_path(const std::string& rel) { return std::string(MIXTRAL_TEST_DATA) + "/" + rel; }

namespace {

// Every folder tmp_dir made, removed when the test process exits (MIXTRAL_KEEP_TEST_DIRS=1
// keeps them for a post-mortem).
struct TmpDirs {
  std::mutex mu;
  std::vector<std::string> dirs;
  ~TmpDirs() {
    if (std::getenv("MIXTRAL_KEEP_TEST_DIRS")) return;
    std::error_code ec;
    for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
  }
};
TmpDirs& tmp_dirs() {
  static TmpDirs t;
  return t;
}

}  // namespace

std::string tmp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  std::string p = "/tmp/mixtral-test-" + tag + "-" + std::to_string(::getpid()) + "-" +
                  std::to_string(counter++);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  {
    std::lock_guard<std::mutex> lock(tmp_dirs().mu);
    tmp_dirs().dirs.push_back(p);
  }
  return p;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

RunResult run_cli(const std::string& args) {
  const std::string dir = tmp_dir("cli");
  const std::string cmd = std::string(MIXTRAL_BIN) + " " + args + " >" + dir + "/out 2>" + dir +
                          "/err </dev/null";
  const int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(dir + "/out");
  r.err = read_file(dir + "/err");
  std::filesystem::remove_all(dir);
  return r;
}

}  // namespace mx::test
