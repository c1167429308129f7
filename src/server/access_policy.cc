#include "server/access_policy.h"

#include <arpa/inet.h>

#include <algorithm>

namespace mx::server {

namespace {

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return r;
}

bool is_ip(const std::string& s) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, s.c_str(), buf) == 1 || ::inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// "name", "name:port", "[v6]", "[v6]:port" -> the name or address.
std::string host_name(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    const size_t close = host.find(']');
    return lower(host.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
  }
  const size_t colon = host.find(':');
  // More than one colon: a bare IPv6 address.
  if (colon != std::string_view::npos && host.find(':', colon + 1) == std::string_view::npos) host = host.substr(0, colon);
  std::string h = lower(host);
  if (!h.empty() && h.back() == '.') h.pop_back();
  return h;
}

ApiError refusal(int status, std::string msg, std::string param, std::string code = "") {
  ApiError e(status, std::move(msg), std::move(param));
  e.code = std::move(code);
  return e;
}

}  // namespace

bool key_matches(const std::vector<std::string>& keys, std::string_view given) {
  unsigned any = 0;
  for (const std::string& k : keys) {
    // Every byte of every key is compared; only the lengths (not secret enough to matter) differ.
    unsigned diff = k.size() != given.size() ? 1u : 0u;
    const size_t n = std::max(k.size(), given.size());
    for (size_t i = 0; i < n; ++i) {
      const unsigned char a = i < k.size() ? static_cast<unsigned char>(k[i]) : 0;
      const unsigned char b = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
      diff |= static_cast<unsigned>(a ^ b);
    }
    any |= diff == 0 ? 1u : 0u;
  }
  return any != 0 && !keys.empty();
}

bool host_allowed(std::string_view host, std::string_view bound_host) {
  if (host.empty()) return true;
  const std::string h = host_name(host);
  return h == "localhost" || (h.size() > 10 && h.ends_with(".localhost")) || is_ip(h) ||
         (!bound_host.empty() && h == host_name(bound_host));
}

bool origin_allowed(const AccessOptions& o, std::string_view origin) {
  for (const std::string& a : o.cors_origins)
    if (a == "*" || lower(a) == lower(origin)) return true;
  return false;
}

bool is_loopback(std::string_view host) {
  const std::string h = host_name(host);
  return h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0;
}

std::optional<ApiError> check_access(const AccessOptions& o, const RequestHead& h) {
  const std::string* host = h.find("host");
  if (o.api_keys.empty() && host && !host_allowed(*host, o.bound_host))
    return refusal(403, "Host '" + *host + "' is not this server: without an API key only localhost or an IP address is accepted (set --api-key to serve other names)", "Host");
  const std::string* origin = h.find("origin");
  if (origin && !origin_allowed(o, *origin))
    return refusal(403, "requests from web pages at origin '" + *origin + "' are not allowed (see --cors-origin)", "Origin");
  // /metrics tells who uses the server how much, so it is keyed like /v1.
  const bool v1 = h.path == "/v1" || h.path.rfind("/v1/", 0) == 0 || h.path == "/metrics";
  if (v1 && !o.api_keys.empty() && h.method != "OPTIONS") {
    const std::string* auth = h.find("authorization");
    if (!auth)
      return refusal(401, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", "", "invalid_api_key");
    std::string_view v = *auth;
    const bool bearer = v.size() > 7 && lower(v.substr(0, 7)) == "bearer ";
    if (!bearer || !key_matches(o.api_keys, v.substr(7)))
      return refusal(401, "Incorrect API key provided.", "", "invalid_api_key");
  }
  if (h.method == "POST") {
    if (const std::string* enc = h.find("content-encoding"); enc && lower(*enc) != "identity")
      return refusal(415, "Content-Encoding '" + *enc + "' is not supported; send the body uncompressed", "Content-Encoding");
    const std::string* type = h.find("content-type");
    const std::string t = type ? lower(type->substr(0, type->find(';'))) : "";
    const std::string_view tv = std::string_view(t).substr(0, t.find_last_not_of(" \t") + 1);
    if (tv != "application/json")
      return refusal(415, type ? "Content-Type '" + *type + "' is not supported; send the body as application/json"
                               : "the request has no Content-Type; send the body as application/json",
                     "Content-Type");
  }
  return std::nullopt;
}

std::vector<Header> cors_headers(const AccessOptions& o, const RequestHead& h, bool preflight) {
  std::vector<Header> out;
  const std::string* origin = h.find("origin");
  if (!origin || !origin_allowed(o, *origin)) return out;
  out.push_back({"Access-Control-Allow-Origin", *origin});
  out.push_back({"Vary", "Origin"});
  if (preflight) {
    out.push_back({"Access-Control-Allow-Methods", "GET, POST, OPTIONS"});
    // The OpenAI SDKs send their own x-stainless-* headers; the key, not the header list, guards.
    const std::string* asked = h.find("access-control-request-headers");
    out.push_back({"Access-Control-Allow-Headers", asked && !asked->empty() ? *asked : "Authorization, Content-Type"});
    out.push_back({"Access-Control-Max-Age", "600"});
  }
  return out;
}

}  // namespace mx::server
