#include "server/front_door.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "formats/error.h"

namespace mx::server {

namespace {

// How long a refused connection's remaining body is read and dropped.
constexpr double kDrainSeconds = 5;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return r;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

const char* reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 421: return "Misdirected Request";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

void addr_of(const sockaddr_storage& a, std::string& ip, int& port) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof buf);
    port = ntohs(v4->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof buf);
    port = ntohs(v6->sin6_port);
  }
  ip = buf;
}

// Non-blocking best effort: the reader thread never waits on a client. Replies it sends are
// small, so they fit the socket buffer unless the client stopped reading (then it is dropped).
bool send_now(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

Reply error_reply(int status, const std::string& message) {
  Reply r;
  r.status = status;
  std::string esc;
  for (char c : message) {
    if (c == '"' || c == '\\') esc += '\\';
    esc += c >= 0x20 && c < 0x7f ? c : '?';  // header bytes quoted in a message stay valid JSON
  }
  r.body = "{\"error\":{\"message\":\"" + esc + "\",\"type\":\"" +
           (status >= 500 ? "server_error" : "invalid_request_error") + "\",\"param\":null,\"code\":null}}";
  r.close = true;
  return r;
}

}  // namespace

const std::string* RequestHead::find(std::string_view lower_name) const {
  for (const Header& h : headers)
    if (h.name == lower_name) return &h.value;
  return nullptr;
}

std::string parse_head(std::string_view text, RequestHead& h) {
  size_t eol = text.find('\n');
  std::string_view line = trim(text.substr(0, eol));
  const size_t a = line.find(' '), b = line.rfind(' ');
  if (a == std::string_view::npos || a == b) return "malformed request line";
  h.method = std::string(line.substr(0, a));
  h.target = std::string(trim(line.substr(a + 1, b - a - 1)));
  h.version = std::string(line.substr(b + 1));
  if (h.method.empty() || h.target.empty() || h.version.rfind("HTTP/1.", 0) != 0)
    return "malformed request line (HTTP/1.x expected)";
  h.path = h.target.substr(0, h.target.find('?'));
  while (eol != std::string_view::npos) {
    const size_t start = eol + 1;
    eol = text.find('\n', start);
    std::string_view l = text.substr(start, eol == std::string_view::npos ? std::string_view::npos : eol - start);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty()) continue;
    const size_t colon = l.find(':');
    if (colon == std::string_view::npos || colon == 0 || l.front() == ' ' || l.front() == '\t')
      return "malformed header line";
    h.headers.push_back({lower(l.substr(0, colon)), std::string(trim(l.substr(colon + 1)))});
  }
  return "";
}

Framing scan_chunked(std::string_view body, ChunkScan& s) {
  while (true) {
    const size_t eol = body.find("\r\n", s.pos);
    // A chunk-size or trailer line longer than 4096 bytes is not HTTP, however the reads split
    // it: a complete one is measured without its CRLF, an unfinished one may still end in the
    // CR of its CRLF.
    if (eol == std::string_view::npos) return body.size() - s.pos > 4097 ? Framing::Bad : Framing::NeedMore;
    if (eol - s.pos > 4096) return Framing::Bad;
    if (s.trailers) {  // after the last chunk: trailer lines up to an empty one
      const bool blank = eol == s.pos;
      s.pos = eol + 2;
      if (blank) {
        s.end = s.pos;
        return Framing::Done;
      }
      continue;
    }
    std::string_view size_line = body.substr(s.pos, eol - s.pos);
    size_line = trim(size_line.substr(0, size_line.find(';')));
    if (size_line.empty() || size_line.size() > 15) return Framing::Bad;
    uint64_t n = 0;
    for (char c : size_line) {
      const int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
      if (d < 0) return Framing::Bad;
      n = n * 16 + static_cast<uint64_t>(d);
    }
    if (n == 0) {
      s.pos = eol + 2;
      s.trailers = true;
      continue;
    }
    const uint64_t need = eol + 2 + n + 2;
    if (need > body.size()) return Framing::NeedMore;
    if (body.compare(eol + 2 + n, 2, "\r\n") != 0) return Framing::Bad;
    s.pos = need;
  }
}

std::string serialize(const Reply& r) {
  std::string s = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) + "\r\n";
  if (r.status != 204)
    s += "Content-Type: " + r.content_type + "\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\n";
  for (const Header& h : r.headers) s += h.name + ": " + h.value + "\r\n";
  s += r.close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n";
  return s + r.body;
}

FrontDoor::FrontDoor(FrontDoorOptions o, Early early, Serve serve, Log log)
    : opt_(std::move(o)), early_(std::move(early)), serve_(std::move(serve)), log_(std::move(log)) {
  if (::pipe2(wake_, O_NONBLOCK | O_CLOEXEC) != 0) fail(std::string("serve: pipe: ") + std::strerror(errno));
}

FrontDoor::~FrontDoor() {
  stop();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
}

int FrontDoor::bind() {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string where = opt_.host + ":" + std::to_string(opt_.port);
  if (::getaddrinfo(opt_.host.c_str(), std::to_string(opt_.port).c_str(), &hints, &res) != 0 || !res)
    fail("cannot listen on " + where + ": not an address of this host");
  int fd = -1, err = 0;
  for (addrinfo* ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, opt_.backlog) != 0) {
      err = errno;
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(res);
  if (fd < 0) fail("cannot listen on " + where + " (" + std::strerror(err) + ")");
  set_nonblocking(fd);
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  std::string ip;
  int port = 0;
  addr_of(a, ip, port);
  listen_fd_ = fd;
  return port;
}

void FrontDoor::wake() {
  const char b = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_[1], &b, 1);
}

void FrontDoor::stop() {
  if (stopping_.exchange(true)) return;
  cv_.notify_all();
  wake();
  std::unique_lock lk(m_);
  // Replies being written (a 503, a stream's last event) get a moment to go out; then workers
  // blocked writing to a client that does not read fail at once.
  cv_.wait_for(lk, std::chrono::milliseconds(500), [&] { return serving_.empty(); });
  for (Connection* c : serving_) ::shutdown(c->fd, SHUT_RDWR);
}

bool FrontDoor::reserve(Connection& c, size_t bytes) {
  if (bytes <= c.counted) return true;
  const size_t more = bytes - c.counted;
  size_t cur = buffered_.load();
  do {
    if (cur + more > opt_.max_buffered) return false;
  } while (!buffered_.compare_exchange_weak(cur, cur + more));
  c.counted = bytes;
  return true;
}

void FrontDoor::release(Connection& c) {
  buffered_ -= c.counted;
  c.counted = 0;
}

void FrontDoor::close_conn(Connection& c) {
  release(c);
  ::close(c.fd);
  delete &c;
  --open_;
}

bool FrontDoor::refuse(Connection& c, const Reply& r) {
  Reply rr = r;
  rr.close = true;
  log_(c.remote_ip + ":" + std::to_string(c.remote_port) + " -> " + std::to_string(r.status) + " " +
       (r.body.size() > 300 ? r.body.substr(0, 300) : r.body));
  if (!send_now(c.fd, serialize(rr))) {
    close_conn(c);
    return false;
  }
  // Linger: read and drop what the client still sends, briefly, then close.
  ::shutdown(c.fd, SHUT_WR);
  release(c);
  c.in.clear();
  c.in.shrink_to_fit();
  c.phase = Connection::Phase::Drain;
  c.t_start = now_s();
  return true;
}

bool FrontDoor::read_some(Connection& c) {
  char buf[65536];
  size_t got = 0;
  // At most 1 MiB per turn, so one fast client cannot hold the reader thread.
  while (got < (1u << 20)) {
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return false;
    got += static_cast<size_t>(n);
    if (c.phase == Connection::Phase::Drain) {
      c.drained += static_cast<size_t>(n);
      if (c.drained > (65u << 20)) return false;  // a client sending a 64 MiB body still sees the reply
    } else {
      c.in.append(buf, static_cast<size_t>(n));
    }
  }
  return true;
}

bool FrontDoor::dispatch(Connection& c) {
  {
    std::lock_guard lk(m_);
    if (pending_.size() < static_cast<size_t>(opt_.max_pending)) {
      pending_.push_back(&c);
      cv_.notify_one();
      return false;
    }
  }
  Reply r = error_reply(503, "every worker is busy; retry later");
  r.headers.push_back({"Retry-After", "1"});
  return refuse(c, r);
}

bool FrontDoor::advance(Connection& c, double now) {
  using P = Connection::Phase;
  auto fmt = [](double s) { return std::to_string(static_cast<int>(s)); };
  while (true) {
    if (c.phase == P::Drain) {
      if (now - c.t_start > kDrainSeconds) {
        close_conn(c);
        return false;
      }
      return true;
    }
    if (c.phase == P::Idle) {
      if (c.in.empty()) {
        if (now - c.t_start > opt_.idle_seconds) {
          close_conn(c);
          return false;
        }
        return true;
      }
      c.phase = P::Head;
      c.t_start = now;
      c.head_scan = 0;
    }
    if (c.phase == P::Head) {
      const size_t end = c.in.find("\r\n\r\n", c.head_scan);
      if (end == std::string::npos || end + 4 > opt_.max_head) {
        if (c.in.size() > opt_.max_head || end != std::string::npos) {
          return refuse(c, error_reply(431, "the request line and headers exceed " + std::to_string(opt_.max_head) + " bytes"));
        }
        c.head_scan = c.in.size() < 3 ? 0 : c.in.size() - 3;
        if (now - c.t_start > opt_.head_seconds) {
          return refuse(c, error_reply(408, "the request headers did not arrive within " + fmt(opt_.head_seconds) + " s"));
        }
        return true;
      }
      RequestHead h;
      const std::string err = parse_head(std::string_view(c.in).substr(0, end), h);
      if (!err.empty()) {
        return refuse(c, error_reply(400, err));
      }
      c.body_start = end + 4;
      c.chunked = false;
      c.content_length = 0;
      c.chunks = {};
      const std::string* cl = nullptr;
      for (const Header& x : h.headers) {
        if (x.name == "transfer-encoding") {
          if (lower(x.value) != "chunked" || c.chunked) {
            return refuse(c, error_reply(501, "Transfer-Encoding '" + x.value + "' is not supported (only chunked)"));
          }
          c.chunked = true;
        } else if (x.name == "content-length") {
          if (cl && *cl != x.value) {
            return refuse(c, error_reply(400, "two different Content-Length headers"));
          }
          cl = &x.value;
        }
      }
      if (cl) {
        if (c.chunked) {
          return refuse(c, error_reply(400, "both Content-Length and Transfer-Encoding: chunked"));
        }
        if (cl->empty() || cl->size() > 18 || cl->find_first_not_of("0123456789") != std::string::npos) {
          return refuse(c, error_reply(400, "Content-Length '" + *cl + "' is not a byte count"));
        }
        c.content_length = std::stoull(*cl);
      }
      const bool has_body = c.chunked || c.content_length > 0;
      std::optional<Reply> r;
      try {
        r = early_(h);
      } catch (const std::exception& e) {
        return refuse(c, error_reply(500, std::string("internal error: ") + e.what()));
      }
      if (r) {
        if (r->close || has_body) {
          return refuse(c, *r);
        }
        if (!send_now(c.fd, serialize(*r))) {
          close_conn(c);
          return false;
        }
        c.in.erase(0, c.body_start);
        c.phase = P::Idle;
        c.t_start = now;
        continue;  // a pipelined request may follow
      }
      if (c.content_length > opt_.max_body) {
        return refuse(c, error_reply(413, "the request body is " + std::to_string(c.content_length) +
                                              " bytes; the limit is " + std::to_string(opt_.max_body) + " bytes" + opt_.max_body_why));
      }
      if (!reserve(c, c.chunked ? c.in.size() : c.body_start + c.content_length)) {
        Reply r = error_reply(503, "the server holds too many request bodies; retry later");
        r.headers.push_back({"Retry-After", "1"});
        return refuse(c, r);
      }
      if (const std::string* e = h.find("expect"); e && lower(*e) == "100-continue") {
        // Answered here, so the line goes: httplib would answer it again in the middle of the reply.
        const size_t at = lower(std::string_view(c.in).substr(0, end)).find("\r\nexpect:");
        if (at != std::string::npos) {
          const size_t eol = c.in.find("\r\n", at + 2);
          c.in.erase(at, eol - at);
          c.body_start -= eol - at;
        }
        send_now(c.fd, "HTTP/1.1 100 Continue\r\n\r\n");
      }
      c.phase = P::Body;
    }
    // P::Body
    if (c.chunked) {
      const size_t wire = c.in.size() - c.body_start;
      const Framing f = scan_chunked(std::string_view(c.in).substr(c.body_start), c.chunks);
      if (f == Framing::Bad) {
        return refuse(c, error_reply(400, "malformed chunked request body"));
      }
      if (f == Framing::Done) {
        if (c.chunks.end > opt_.max_body) {
          return refuse(c, error_reply(413, "the chunked request body exceeds " + std::to_string(opt_.max_body) + " bytes" + opt_.max_body_why));
        }
        c.request_end = c.body_start + c.chunks.end;
        return dispatch(c);
      }
      if (wire > opt_.max_body) {
        return refuse(c, error_reply(413, "the chunked request body exceeds " + std::to_string(opt_.max_body) + " bytes" + opt_.max_body_why));
      }
      if (!reserve(c, c.in.size())) {
        Reply r = error_reply(503, "the server holds too many request bodies; retry later");
        r.headers.push_back({"Retry-After", "1"});
        return refuse(c, r);
      }
    } else if (c.in.size() >= c.body_start + c.content_length) {
      c.request_end = c.body_start + c.content_length;
      return dispatch(c);
    }
    if (now - c.t_start > opt_.body_seconds) {
      return refuse(c, error_reply(408, "the request body did not arrive within " + fmt(opt_.body_seconds) + " s"));
    }
    return true;
  }
}

void FrontDoor::accept_all(double now) {
  for (int i = 0; i < 256; ++i) {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (open_ >= opt_.max_connections) {
      // Make room by closing the connection that has waited longest without a complete
      // request: slow clients are the ones that hold connections.
      Connection* oldest = nullptr;
      for (Connection* c : reading_)
        if (c->phase != Connection::Phase::Body && (!oldest || c->t_start < oldest->t_start)) oldest = c;
      if (!oldest) {
        send_now(fd, serialize(error_reply(503, "too many open connections; retry later")));
        ::close(fd);
        continue;
      }
      reading_.erase(std::find(reading_.begin(), reading_.end(), oldest));
      log_("too many connections: closing " + oldest->remote_ip + ":" + std::to_string(oldest->remote_port));
      close_conn(*oldest);
    }
    auto* c = new Connection;
    ++open_;
    c->fd = fd;
    c->t_start = now;
    addr_of(a, c->remote_ip, c->remote_port);
    sockaddr_storage l{};
    len = sizeof l;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&l), &len);
    addr_of(l, c->local_ip, c->local_port);
    int yes = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);  // stream chunks go out at once
    reading_.push_back(c);
  }
}

void FrontDoor::worker() {
  while (true) {
    Connection* c = nullptr;
    {
      std::unique_lock lk(m_);
      cv_.wait(lk, [&] { return stopping_ || !pending_.empty(); });
      if (stopping_) return;
      c = pending_.front();
      pending_.pop_front();
      serving_.push_back(c);
    }
    bool keep = false;
    const bool big = c->request_end > (1u << 20);
    try {
      keep = serve_(*c, stopping_);
    } catch (const std::exception& e) {
      log_(std::string("a worker failed: ") + e.what());
    }
    {
      std::lock_guard lk(m_);
      serving_.erase(std::find(serving_.begin(), serving_.end(), c));
      if (serving_.empty()) cv_.notify_all();  // stop() may wait for this
      if (keep && !stopping_) {
        release(*c);
        c->in.erase(0, c->request_end);
        c->request_end = 0;
        c->phase = Connection::Phase::Idle;
        c->t_start = now_s();
        returned_.push_back(c);
        wake();
      } else {
        close_conn(*c);
      }
    }
    // A big body's buffers would otherwise stay in this thread's malloc arena.
    if (big) ::malloc_trim(0);
  }
}

void FrontDoor::run() {
  running_ = true;
  for (int i = 0; i < opt_.workers; ++i) workers_.emplace_back([this] { worker(); });
  std::vector<pollfd> fds;
  while (!stopping_) {
    {
      std::lock_guard lk(m_);
      reading_.insert(reading_.end(), returned_.begin(), returned_.end());
      returned_.clear();
    }
    fds.clear();
    fds.push_back({listen_fd_, POLLIN, 0});
    fds.push_back({wake_[0], POLLIN, 0});
    for (Connection* c : reading_) fds.push_back({c->fd, POLLIN, 0});
    // Deadlines are checked at least this often.
    ::poll(fds.data(), fds.size(), 200);
    if (stopping_) break;
    if (fds[1].revents) {
      char b[256];
      while (::read(wake_[0], b, sizeof b) > 0) {
      }
    }
    const double now = now_s();
    std::vector<Connection*> keep;
    keep.reserve(reading_.size());
    for (size_t i = 0; i < reading_.size(); ++i) {
      Connection& c = *reading_[i];
      const short ev = fds[i + 2].revents;
      if (ev & (POLLIN | POLLHUP | POLLERR)) {
        if (!read_some(c)) {
          close_conn(c);
          continue;
        }
      } else if (!c.in.empty() && c.phase == Connection::Phase::Idle) {
        // A pipelined request a worker left behind.
      } else {
        const double limit = c.phase == Connection::Phase::Idle ? opt_.idle_seconds
                             : c.phase == Connection::Phase::Head ? opt_.head_seconds
                             : c.phase == Connection::Phase::Body ? opt_.body_seconds
                                                                  : kDrainSeconds;
        if (now - c.t_start <= limit) {
          keep.push_back(&c);
          continue;
        }
      }
      if (advance(c, now)) keep.push_back(&c);
    }
    reading_.swap(keep);
    if (fds[0].revents & POLLIN) accept_all(now);
  }
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
  }
  for (Connection* c : reading_) close_conn(*c);
  reading_.clear();
  {
    std::lock_guard lk(m_);
    for (Connection* c : pending_) close_conn(*c);
    pending_.clear();
    for (Connection* c : serving_) ::shutdown(c->fd, SHUT_RDWR);
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  std::lock_guard lk(m_);
  for (Connection* c : returned_) close_conn(*c);
  returned_.clear();
  running_ = false;
}

}  // namespace mx::server
