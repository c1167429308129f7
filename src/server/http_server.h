// The HTTP side of `mixtral serve` (cpp-httplib): OpenAI-compatible routes that parse the
// request, hand it to the EngineLoop and turn its tokens into a JSON response or a stream of
// server-sent events. Handler threads never touch the model.
//
//   POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health
//   unknown paths: 404, wrong method: 405, bad input: 400, all with OpenAI's error object.
#pragma once
#include <memory>
#include <string>

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
  int max_users = 32;      // the engine's slots; sizes the handler thread pool
};

class HttpServer {
 public:
  HttpServer(EngineLoop& engine, const Tokenizer& tok, ServerOptions o);
  ~HttpServer();
  // Binds the listening socket; returns the port. Throws mx::Error when it cannot.
  int bind();
  // Serves until stop(); returns once every handler has returned.
  void listen();
  // Stops accepting and ends keep-alive connections; thread-safe, idempotent, and safe to call
  // before listen() has started (it waits for it). Stop the engine first so that handlers
  // waiting for tokens return.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mx::server
