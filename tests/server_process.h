// `mixtral serve` as a child process for the server test suites (server_test.cc,
// server_hostile_test.cc): one fixture, so both start and stop the server the same way.
#pragma once
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "test_util.h"

namespace mx::test {

inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// `mixtral serve --port 0` as a child process; the port comes from its first line of stdout.
class ServerProcess {
 public:
  explicit ServerProcess(const std::string& extra = "", const std::string& env = "") {
    ::signal(SIGPIPE, SIG_IGN);
    err_path_ = tmp_dir("server") + "/stderr.txt";
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::close(out[0]);
      ::close(out[1]);
      const std::string cmd = env + " exec '" + MIXTRAL_BIN + "' serve --model " +
                              data_path("tiny-mixtral/hf") + " --port 0 --threads 2 " + extra + " 2>" +
                              err_path_;
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(out[1]);
    out_ = out[0];
    std::string line;
    const auto t0 = std::chrono::steady_clock::now();
    while (line.find('\n') == std::string::npos && seconds_since(t0) < 30) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      char buf[256];
      const ssize_t n = ::read(out_, buf, sizeof buf);
      if (n <= 0) break;
      line.append(buf, static_cast<size_t>(n));
    }
    const size_t at = line.find("http://");
    const size_t colon = at == std::string::npos ? at : line.find(':', at + 7);
    if (colon == std::string::npos) throw std::runtime_error("server did not start: " + line + "\n" + stderr_text());
    port_ = std::atoi(line.c_str() + colon + 1);
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(out_);
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string stderr_text() const { return read_file(err_path_); }
  // Sends `sig` and waits up to `seconds` for the exit: the exit code, or -1.
  int stop(int sig, double seconds) {
    ::kill(pid_, sig);
    const auto t0 = std::chrono::steady_clock::now();
    while (seconds_since(t0) < seconds) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }
  // Starts peak-RSS tracking afresh (VmHWM becomes the current RSS).
  void reset_peak() const { std::ofstream("/proc/" + std::to_string(pid_) + "/clear_refs") << "5"; }
  // Peak resident memory so far (VmHWM), in KiB.
  long peak_kib() const {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1, port_ = 0;
  std::string err_path_;
};

}  // namespace mx::test
