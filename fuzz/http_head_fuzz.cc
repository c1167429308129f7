// libFuzzer harness: the server's own HTTP framing (server/front_door.cc), which reads bytes
// from anyone who can reach the port before any key or JSON check: the request line and
// headers through parse_head, and what follows the blank line as a chunked body through
// scan_chunked, once whole and once fed in small growing pieces as a socket delivers it.
// Both scans must agree (framing may not depend on how the bytes were split), and a finished
// body must end inside what was read.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "server/front_door.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using mx::server::Framing;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t end = in.find("\r\n\r\n");
  mx::server::RequestHead h;
  const std::string err = mx::server::parse_head(in.substr(0, end), h);
  if (err.empty() && (h.method.empty() || h.target.empty() || h.version.rfind("HTTP/1.", 0) != 0 ||
                      h.target.rfind(h.path, 0) != 0)) {
    std::fprintf(stderr, "parse_head accepted a malformed request line\n");
    std::abort();
  }
  for (const mx::server::Header& x : h.headers)
    if (x.name.empty() || x.name.find(':') != std::string::npos) std::abort();

  const std::string_view body = end == std::string_view::npos ? in : in.substr(end + 4);
  mx::server::ChunkScan whole;
  const Framing fw = mx::server::scan_chunked(body, whole);
  mx::server::ChunkScan parts;
  Framing fp = Framing::NeedMore;
  const size_t step = 1 + (size > 0 ? data[0] % 7 : 0);
  for (size_t n = 0;;) {
    n = std::min(body.size(), n + step);
    fp = mx::server::scan_chunked(body.substr(0, n), parts);
    if (fp != Framing::NeedMore || n == body.size()) break;
  }
  if (fw == Framing::Done && whole.end > body.size()) {
    std::fprintf(stderr, "chunked body ends at %zu, past the %zu bytes read\n", whole.end, body.size());
    std::abort();
  }
  if (fw != fp || (fw == Framing::Done && whole.end != parts.end)) {
    std::fprintf(stderr, "framing differs whole (%d, end %zu) and in pieces of %zu (%d, end %zu)\n",
                 static_cast<int>(fw), whole.end, step, static_cast<int>(fp), parts.end);
    std::abort();
  }
  return 0;
}
