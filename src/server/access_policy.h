// Who may use `mixtral serve`, decided from a request's head before its body is read: the API
// keys (/v1 needs `Authorization: Bearer KEY` when any is set), the Host header (DNS
// rebinding: a web page that renamed itself to 127.0.0.1 sends its own name), the Origin
// header (browser pages only from --cors-origin), and a JSON Content-Type on POST (a browser
// sends text/plain or form bodies cross-site without asking first).
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/api.h"
#include "server/front_door.h"

namespace mx::server {

struct AccessOptions {
  std::vector<std::string> api_keys;      // none: no authentication
  std::vector<std::string> cors_origins;  // "*" allows any origin
  std::string bound_host;                 // --host: its name is accepted as Host too
};

// The refusal for this request, or nothing when it may go on. OPTIONS is never asked for a key
// (a CORS preflight carries none and has no effect).
std::optional<ApiError> check_access(const AccessOptions& o, const RequestHead& h);

// Whether `given` equals one of `keys`, in time that does not depend on where they differ.
bool key_matches(const std::vector<std::string>& keys, std::string_view given);

// Without a key, Host must name this machine: an IP literal (a DNS-rebinding page has a name),
// localhost, the name the server was bound to, or nothing (HTTP/1.0).
bool host_allowed(std::string_view host, std::string_view bound_host = "");

bool origin_allowed(const AccessOptions& o, std::string_view origin);

// Headers for a request from an allowed Origin; `preflight` adds what OPTIONS answers.
std::vector<Header> cors_headers(const AccessOptions& o, const RequestHead& h, bool preflight);

// Loopback names and addresses, for the warning about serving the network without a key.
bool is_loopback(std::string_view host);

}  // namespace mx::server
