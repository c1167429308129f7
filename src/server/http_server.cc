#include "server/http_server.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <thread>

#include "formats/error.h"
#include "runtime/tokenizer.h"
#include "server/api.h"
#include "server/engine_loop.h"
#include "server/httplib_abi.h"
#include "server/text_stream.h"

namespace mx::server {

using nlohmann::json;

namespace {

// While a stream waits for tokens (queued behind other users) it sends an SSE comment this
// often; a failed write is how a disconnected client is noticed, so its slot is freed.
constexpr auto kPing = std::chrono::milliseconds(1000);

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(error_json(e)), "application/json");
}

std::string finish_name(FinishReason r, bool stopped) {
  if (stopped) return "stop";
  return r == FinishReason::Eos ? "stop" : "length";  // Length and Context both ran out of room
}

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

}  // namespace

struct HttpServer::Impl {
  EngineLoop& engine;
  const Tokenizer& tok;
  ServerOptions opt;
  httplib::Server svr;
  std::atomic<uint64_t> next_id{0};
  std::atomic<bool> listen_called{false}, listen_done{false}, stopped{false};
  int64_t started = std::time(nullptr);

  Impl(EngineLoop& e, const Tokenizer& t, ServerOptions o) : engine(e), tok(t), opt(std::move(o)) {}

  ResponseMeta meta(bool chat) {
    char id[48];
    std::snprintf(id, sizeof id, "%s-%llx%06llx", chat ? "chatcmpl" : "cmpl", static_cast<unsigned long long>(started),
                  static_cast<unsigned long long>(next_id++));
    return {chat, id, std::time(nullptr), opt.model_name};
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    GenerationRequest g;
    try {
      g = chat ? parse_chat_request(req.body, tok, opt.context) : parse_completion_request(req.body, tok, opt.context);
    } catch (const ApiError& e) {
      send_error(res, e);
      return;
    }
    Request r;
    r.prompt = g.prompt;
    r.max_new_tokens = g.max_tokens;
    r.sampling = g.sampling;
    std::shared_ptr<Job> job = engine.submit(std::move(r));
    const ResponseMeta m = meta(chat);
    const int prompt_tokens = static_cast<int>(g.prompt.size());
    if (g.stream) {
      stream(res, job, m, g, prompt_tokens);
      return;
    }
    TextStream ts(tok, g.stop);
    std::string text;
    std::vector<int> tokens;
    while (true) {
      tokens.clear();
      job->wait(tokens, kPing);
      text += ts.push(tokens);
      if (ts.stopped()) {
        engine.cancel(job);
        break;
      }
      if (job->done()) break;
    }
    if (!ts.stopped() && !job->error().empty()) {
      const int status = job->error_status();
      send_error(res, ApiError(status, job->error(), "", status >= 500 ? "server_error" : "invalid_request_error"));
      return;
    }
    text += ts.finish();
    const json body = response_json(m, text, finish_name(job->finish(), ts.stopped()), {prompt_tokens, ts.tokens()});
    res.set_content(dump(body), "application/json");
  }

  // Server-sent events: one chunk per piece of text, a last chunk with finish_reason, then
  // [DONE]. A write that fails means the client left: the request is cancelled.
  void stream(httplib::Response& res, std::shared_ptr<Job> job, const ResponseMeta& m, const GenerationRequest& g,
              int prompt_tokens) {
    auto ts = std::make_shared<TextStream>(tok, g.stop);
    const bool include_usage = g.include_usage;
    EngineLoop* eng = &engine;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [eng, job, ts, m, include_usage, prompt_tokens](size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
          auto leave = [&] {
            eng->cancel(job);
            return false;
          };
          if (m.chat && !write(sse(chunk_json(m, "", "", true)))) return leave();
          std::vector<int> tokens;
          while (true) {
            tokens.clear();
            const bool changed = job->wait(tokens, kPing);
            const std::string piece = ts->push(tokens);
            if (!piece.empty() && !write(sse(chunk_json(m, piece, "", false)))) return leave();
            if (ts->stopped()) {
              eng->cancel(job);
              break;
            }
            if (job->done()) break;
            if (!changed && !write(": ping\n\n")) return leave();
          }
          if (!ts->stopped() && !job->error().empty()) {
            const ApiError e(job->error_status(), job->error(), "", "server_error");
            write(sse(error_json(e)));
            sink.done();
            return true;
          }
          const std::string rest = ts->finish();
          if (!write(sse(chunk_json(m, rest, finish_name(job->finish(), ts->stopped()), false)))) return leave();
          if (include_usage && !write(sse(usage_chunk_json(m, {prompt_tokens, ts->tokens()})))) return leave();
          if (!write("data: [DONE]\n\n")) return leave();
          sink.done();
          return true;
        },
        [eng, job](bool success) {
          if (!success) eng->cancel(job);
        });
  }

  void models(httplib::Response& res) {
    const json body = {{"object", "list"},
                       {"data", json::array({{{"id", opt.model_name},
                                              {"object", "model"},
                                              {"created", started},
                                              {"owned_by", "mixtral"}}})}};
    res.set_content(dump(body), "application/json");
  }

  void health(httplib::Response& res) {
    const EngineStats s = engine.stats();
    const json body = {{"status", "ok"},
                       {"running", s.running},
                       {"waiting", s.waiting},
                       {"completed", s.completed},
                       {"cancelled", s.cancelled},
                       {"max_users", opt.max_users}};
    res.set_content(dump(body), "application/json");
  }

  void routes() {
    using H = httplib::Server::Handler;
    auto not_allowed = [](const char* allow) {
      return H([allow](const httplib::Request& req, httplib::Response& res) {
        res.set_header("Allow", allow);
        send_error(res, ApiError(405, "method " + req.method + " is not allowed on " + req.path + "; use " + allow));
      });
    };
    // Every other method on a known path is a 405 naming the allowed one.
    auto others = [&](const char* path, const char* allow) {
      if (std::string(allow) != "GET") svr.Get(path, not_allowed(allow));
      if (std::string(allow) != "POST") svr.Post(path, not_allowed(allow));
      svr.Put(path, not_allowed(allow));
      svr.Patch(path, not_allowed(allow));
      svr.Delete(path, not_allowed(allow));
      svr.Options(path, not_allowed(allow));
    };
    auto post_only = [&](const char* path, H h) {
      svr.Post(path, h);
      others(path, "POST");
    };
    auto get_only = [&](const char* path, H h) {
      svr.Get(path, h);
      others(path, "GET");
    };
    post_only("/v1/completions", [this](const httplib::Request& q, httplib::Response& s) { generate(q, s, false); });
    post_only("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& s) { generate(q, s, true); });
    get_only("/v1/models", [this](const httplib::Request&, httplib::Response& s) { models(s); });
    get_only("/health", [this](const httplib::Request&, httplib::Response& s) { health(s); });

    // Errors httplib produces itself (no route, bad request line, body too large) get the
    // same JSON error object; our own errors already have a body.
    svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string msg = res.status == 404 ? "unknown endpoint: " + req.method + " " + req.path
                        : res.status == 413 ? "the request body is too large (64 MiB at most)"
                                            : "HTTP error " + std::to_string(res.status);
      // httplib caps form-encoded bodies (curl -d without a Content-Type) at 8 KiB.
      if (res.status == 413 && req.get_header_value("Content-Type").find("x-www-form-urlencoded") != std::string::npos)
        msg = "a form-encoded request body is limited to 8192 bytes; send it with Content-Type: application/json";
      res.set_content(dump(error_json(ApiError(res.status, msg))), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        msg = std::string("internal error: ") + e.what();
      } catch (...) {
      }
      send_error(res, ApiError(500, msg, "", "server_error"));
    });
    svr.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::fprintf(stderr, "mixtral serve: %s %s -> %d\n", req.method.c_str(), req.path.c_str(), res.status);
    });
  }
};

HttpServer::HttpServer(EngineLoop& engine, const Tokenizer& tok, ServerOptions o)
    : impl_(std::make_unique<Impl>(engine, tok, std::move(o))) {
  // Every streaming or waiting request holds a handler thread, so there are more threads than
  // slots: requests beyond the slots wait in the scheduler's queue, and /health still answers.
  const size_t threads = static_cast<size_t>(std::max(8, 2 * impl_->opt.max_users + 4));
  impl_->svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  impl_->svr.set_payload_max_length(64u << 20);
  impl_->svr.set_keep_alive_timeout(2);
  impl_->routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const ServerOptions& o = impl_->opt;
  if (o.port == 0) {
    const int port = impl_->svr.bind_to_any_port(o.host);
    if (port <= 0) fail("cannot listen on " + o.host + " (any port)");
    return port;
  }
  if (!impl_->svr.bind_to_port(o.host, o.port))
    fail("cannot listen on " + o.host + ":" + std::to_string(o.port) + " (in use, or not an address of this host)");
  return o.port;
}

void HttpServer::listen() {
  impl_->listen_called = true;
  if (!impl_->stopped) impl_->svr.listen_after_bind();
  impl_->listen_done = true;
}

void HttpServer::stop() {
  // httplib's stop() does nothing before its loop runs, and must not run twice.
  if (impl_->stopped.exchange(true)) return;
  while (impl_->listen_called && !impl_->listen_done && !impl_->svr.is_running())
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  impl_->svr.stop();
}

}  // namespace mx::server
