// The connection side of `mixtral serve`: one thread accepts every connection and reads every
// request head and body, with deadlines measured from the start of the request (not reset per
// byte) and byte caps on the wire whatever the framing, and hands only complete requests to a
// fixed pool of worker threads. A slow or idle client then costs a buffer, never a worker, and
// replies that need no worker (/health, refusals) go out from the reader thread at once.
// No HTTP routing here: `early` and `serve` (http_server.cc) decide what a request gets.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace mx::server {

struct Header {
  std::string name, value;  // name lower-cased, value trimmed
};

struct RequestHead {
  std::string method, target, path, version;  // path: target without the query
  std::vector<Header> headers;
  const std::string* find(std::string_view lower_name) const;  // the first one, or null
};

// Parses the request line and headers (`text` ends before the blank line). Returns "" or what
// is wrong with it.
std::string parse_head(std::string_view text, RequestHead& h);

// Where a chunked body ends, scanned incrementally as bytes arrive: `pos` is the offset (in
// the body) of the next chunk-size line; `end` is set once the last chunk and trailers are in.
struct ChunkScan {
  size_t pos = 0, end = 0;
  bool trailers = false;
};
enum class Framing { NeedMore, Done, Bad };
Framing scan_chunked(std::string_view body, ChunkScan& s);

// A complete small reply the reader thread sends itself.
struct Reply {
  int status = 200;
  std::string content_type = "application/json", body;
  std::vector<Header> headers;
  bool close = false;
};
std::string serialize(const Reply& r);

struct FrontDoorOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  int backlog = 512;
  int workers = 8;
  int max_connections = 900;   // file descriptors stay under FD_SETSIZE (httplib uses select)
  int max_pending = 64;        // complete requests waiting for a worker; more get 503
  size_t max_head = 16 << 10;  // request line + headers
  size_t max_body = 64 << 20;  // on the wire, before any decoding
  std::string max_body_why;    // appended to the 413 message
  size_t max_buffered = 256u << 20;  // request bytes held over all connections
  double head_seconds = 10;    // from the request's first byte (or the accept) to its blank line
  double body_seconds = 60;    // from the request's first byte to its last
  double idle_seconds = 5;     // a keep-alive connection with no request
  double write_seconds = 10;   // a worker's write that makes no progress
};

// One client connection. The reader thread owns it while reading; a worker while serving.
struct Connection {
  int fd = -1;
  std::string in;          // bytes received: the current request, then any pipelined ones
  size_t request_end = 0;  // the current request is in[0, request_end)
  std::string remote_ip, local_ip;
  int remote_port = 0, local_port = 0;
  // Reader state.
  // Drain: a refusal was sent before the body; what the client still sends is read and dropped
  // for a moment, so that it sees the reply rather than a reset.
  enum class Phase { Idle, Head, Body, Drain } phase = Phase::Head;
  double t_start = 0;  // seconds (steady clock) when the current request started
  size_t head_scan = 0, body_start = 0, content_length = 0, drained = 0;
  bool chunked = false;
  ChunkScan chunks;
  size_t counted = 0;  // bytes of this request counted against max_buffered
};

class FrontDoor {
 public:
  // Called by the reader thread once a request head is parsed: a reply here is sent at once and
  // the body is not read (the connection closes unless the request has no body and !close).
  using Early = std::function<std::optional<Reply>(const RequestHead&)>;
  // Called on a worker with a complete request in c.in[0, c.request_end); `close` asks for
  // Connection: close. Returns true to keep the connection for another request.
  using Serve = std::function<bool(Connection& c, bool close)>;
  using Log = std::function<void(const std::string&)>;

  FrontDoor(FrontDoorOptions o, Early early, Serve serve, Log log);
  ~FrontDoor();
  FrontDoor(const FrontDoor&) = delete;
  FrontDoor& operator=(const FrontDoor&) = delete;

  // Binds and listens; returns the port. Throws mx::Error when it cannot.
  int bind();
  int listen_fd() const { return listen_fd_; }
  // Accepts and reads until stop(); returns once every worker has finished.
  void run();
  // Thread-safe and idempotent, also before run(): closes every connection (a worker's write
  // then fails at once) and makes run() return.
  void stop();
  bool stopping() const { return stopping_; }

 private:
  void worker();
  void accept_all(double now);
  bool read_some(Connection& c);  // false: the peer closed or failed
  // Advances c's request; false when c was closed or handed to a worker (drop it from the set).
  bool advance(Connection& c, double now);
  bool refuse(Connection& c, const Reply& r);  // sends r, then drains; false when c is gone
  void close_conn(Connection& c);
  void release(Connection& c);  // gives back c's max_buffered bytes
  bool reserve(Connection& c, size_t bytes);  // counts c's request as `bytes` long; false: over max_buffered
  bool dispatch(Connection& c);
  void wake();

  FrontDoorOptions opt_;
  Early early_;
  Serve serve_;
  Log log_;
  int listen_fd_ = -1, wake_[2] = {-1, -1};
  std::atomic<bool> stopping_{false}, running_{false};
  std::atomic<size_t> buffered_{0};
  std::atomic<int> open_{0};  // connections
  std::vector<Connection*> reading_;  // reader thread only

  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Connection*> pending_;    // complete requests waiting for a worker
  std::vector<Connection*> serving_;   // held by workers (shut down on stop)
  std::vector<Connection*> returned_;  // kept alive by a worker, back to the reader
  std::vector<std::thread> workers_;
};

}  // namespace mx::server
