// HTTP client helpers shared by the server test suites: a loopback client with bounded timeouts,
// a POST whose reply body is parsed as JSON (discarded-on-error parse, so a non-JSON body
// shows up as a failed assertion rather than an exception), and client threads that are always
// joined, so a failed check ends one test, never the whole binary.
#pragma once
#include <gtest/gtest.h>

#include <exception>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "server/httplib_abi.h"

namespace mx::test {

struct Reply {
  int status = 0;  // -1: no reply (connection failed or timed out)
  nlohmann::json body;
  httplib::Headers headers;
};

inline Reply to_reply(const httplib::Result& r) {
  if (!r) return {-1, {}, {}};
  return {r->status, nlohmann::json::parse(r->body, nullptr, false), r->headers};
}

inline std::unique_ptr<httplib::Client> http_client(int port, int read_s, int connect_s) {
  auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
  c->set_read_timeout(read_s, 0);
  c->set_connection_timeout(connect_s, 0);
  return c;
}

inline Reply post_json(httplib::Client& c, const std::string& path, const std::string& body) {
  return to_reply(c.Post(path.c_str(), body, "application/json"));
}

// A test's client threads. When the test leaves its scope, however it leaves (a failed ASSERT, an
// exception), `stop` runs first (e.g. tells streaming clients to hang up) and every thread is
// joined: a joinable std::thread's destructor would call std::terminate and take every later
// test down with it. An exception inside a thread is reported as a test failure. Declare it
// after what the threads use, so it is destroyed (and joins) first.
class ClientThreads {
 public:
  explicit ClientThreads(std::function<void()> stop = {}) : stop_(std::move(stop)) {}
  ClientThreads(const ClientThreads&) = delete;
  ClientThreads& operator=(const ClientThreads&) = delete;
  ~ClientThreads() {
    if (stop_) stop_();
    join();
  }
  template <typename F>
  void spawn(F f) {
    threads_.emplace_back([f = std::move(f)]() mutable {
      try {
        f();
      } catch (const std::exception& e) {
        ADD_FAILURE() << "client thread threw: " << e.what();
      }
    });
  }
  void join() {
    for (std::thread& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

 private:
  std::function<void()> stop_;
  std::vector<std::thread> threads_;
};

}  // namespace mx::test
