// The HTTP side of `mixtral serve` (cpp-httplib): OpenAI-compatible routes that parse the
// request, hand it to the EngineLoop and turn its tokens into a JSON response or a stream of
// server-sent events. Handler threads never touch the model.
//
//   POST /v1/completions, POST /v1/chat/completions, GET /v1/models[/ID], GET /health
//   unknown paths: 404, wrong method: 405, bad input: 400, all with OpenAI's error object.
// Connections are read by a FrontDoor (deadlines, byte caps, /health without a worker) and
// requests checked by the access policy before httplib sees them.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace mx {
class Tokenizer;
}

namespace mx::server {

class EngineLoop;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;         // 0: any free port (bind() returns it)
  std::string model_name;  // the id /v1/models lists and responses carry
  int context = 0;         // tokens per request, prompt + max_tokens
  int max_users = 32;      // the engine's slots
  int max_queue = 0;       // generation requests waiting beyond the slots; more get 429 (0: 2 x max_users)
  std::vector<std::string> api_keys;      // /v1 needs one of them as a Bearer token (none: open)
  std::vector<std::string> cors_origins;  // browser origins allowed ("*": any)
  double header_timeout = 10;  // seconds from a request's start to the end of its headers
  double body_timeout = 60;    // seconds from a request's start to the end of its body
};

class HttpServer {
 public:
  HttpServer(EngineLoop& engine, const Tokenizer& tok, ServerOptions o);
  ~HttpServer();
  // Binds the listening socket; returns the port. Throws mx::Error when it cannot.
  int bind();
  // Serves until stop(); returns once every handler has returned.
  void listen();
  // Stops accepting and closes every connection (writes to clients fail at once); thread-safe,
  // idempotent, and safe to call before listen(). Stop the engine first so that handlers
  // waiting for tokens return.
  void stop();
  // After the engine stopped (or failed its jobs): waits up to `ms` for generation handlers
  // (streams writing their last error event) and replies being written to finish, so stop()
  // or an exit does not cut them off.
  void drain(int ms);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mx::server
