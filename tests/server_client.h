// HTTP client helpers shared by the server test suites: a loopback client with bounded timeouts
// and a POST whose reply body is parsed as JSON (discarded-on-error parse, so a non-JSON body
// shows up as a failed assertion rather than an exception).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "server/httplib_abi.h"

namespace mx::test {

struct Reply {
  int status = 0;  // -1: no reply (connection failed or timed out)
  nlohmann::json body;
};

inline std::unique_ptr<httplib::Client> http_client(int port, int read_s, int connect_s) {
  auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
  c->set_read_timeout(read_s, 0);
  c->set_connection_timeout(connect_s, 0);
  return c;
}

inline Reply post_json(httplib::Client& c, const std::string& path, const std::string& body) {
  auto r = c.Post(path.c_str(), body, "application/json");
  if (!r) return {-1, {}};
  return {r->status, nlohmann::json::parse(r->body, nullptr, false)};
}

}  // namespace mx::test
