#include "server/http_server.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <thread>

#include "formats/error.h"
#include "runtime/tokenizer.h"
#include "server/access_policy.h"
#include "server/api.h"
#include "server/choice_stream.h"
#include "server/engine_loop.h"
#include "server/front_door.h"
#include "server/httplib_abi.h"
#include "server/metrics.h"
#include "server/text_stream.h"
#include "server/request_hook.h"

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

// httplib's request processing, without its accept loop and its per-byte read timeouts: the
// FrontDoor has already read the whole request.
class RequestProcessor : public httplib::Server {
 public:
  using httplib::Server::process_request;
  // Streamed replies stop when this is invalid, as they would when httplib's listener closes.
  void set_listening(int fd) { svr_sock_ = fd; }
};

// A request already in memory; replies go to the socket, each write giving up after
// `write_seconds` without progress.
class BufferedStream : public httplib::Stream {
 public:
  BufferedStream(Connection& c, double write_seconds) : c_(c), write_ms_(static_cast<int>(write_seconds * 1000)) {}
  bool is_readable() const override { return pos_ < c_.request_end; }
  bool is_writable() const override {
    pollfd p{c_.fd, POLLOUT, 0};
    return ::poll(&p, 1, write_ms_) > 0 && !(p.revents & (POLLERR | POLLHUP));
  }
  ssize_t read(char* ptr, size_t size) override {
    const size_t n = std::min(size, c_.request_end - pos_);
    std::memcpy(ptr, c_.in.data() + pos_, n);
    pos_ += n;
    if (pos_ == c_.request_end && c_.request_end > (1u << 20)) {
      // httplib has its own copy of a big body now; ours goes before the handler runs.
      c_.in.erase(0, c_.request_end);
      c_.in.shrink_to_fit();
      c_.request_end = pos_ = 0;
    }
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    while (true) {
      const ssize_t n = ::send(c_.fd, ptr, size, MSG_NOSIGNAL);
      if (n > 0) return n;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pollfd p{c_.fd, POLLOUT, 0};
        if (::poll(&p, 1, write_ms_) > 0 && !(p.revents & (POLLERR | POLLHUP | POLLNVAL))) continue;
      }
      return -1;  // never 0: httplib's write loop would spin
    }
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = c_.remote_ip;
    port = c_.remote_port;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = c_.local_ip;
    port = c_.local_port;
  }
  socket_t socket() const override { return c_.fd; }

 private:
  Connection& c_;
  int write_ms_;
  size_t pos_ = 0;
};

// One choice of a request: its job and what the client sees of it.
struct Choice {
  std::shared_ptr<Job> job;
  std::shared_ptr<ChoiceStream> cs;
  bool echoed = false;  // cs->start() was taken
  bool ended = false;   // done, stopped or failed; its last chunk is out
};

// The text these tokens add to the choice (the echoed prompt first, once the prompt is scored:
// by the step that yields its first token or ends it).
std::string advance(Choice& c, const std::vector<int>& tokens) {
  std::string piece;
  if (!c.echoed && (!tokens.empty() || c.job->done())) {
    piece = c.cs->start();
    c.echoed = true;
  }
  return piece + c.cs->push(tokens);
}

bool has_logprobs(const nlohmann::json& lp) {
  return lp.is_object() && ((lp.contains("content") && !lp["content"].empty()) ||
                            (lp.contains("tokens") && !lp["tokens"].empty()));
}

bool all_ended(const std::vector<Choice>& cs) {
  for (const Choice& c : cs)
    if (!c.ended) return false;
  return true;
}

// Counts the generation requests a handler holds (parsing, queued, running, streaming): one per
// request, shared by the handler and its stream provider, which outlives the handler.
// `place` is this request's count including itself, taken atomically when it arrived.
struct Admission {
  std::atomic<int>& n;
  const int place;
  explicit Admission(std::atomic<int>& count) : n(count), place(++count) {}
  ~Admission() { --n; }
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;
};
using AdmissionPtr = std::shared_ptr<Admission>;

}  // namespace

struct HttpServer::Impl {
  EngineLoop& engine;
  const Tokenizer& tok;
  ServerOptions opt;
  AccessOptions access;
  size_t per_token;  // max_bytes_per_token(tok), computed once
  JsonVocab vocab;  // token_texts(tok) and what JSON mode precomputes from them
  RequestProcessor svr;
  std::unique_ptr<FrontDoor> door;
  std::atomic<int> generating{0};
  std::atomic<int> replying{0};  // requests inside process_request (handler, then writing the reply)
  std::atomic<uint64_t> next_id{0};
  RequestCounter requests;
  int64_t started = std::time(nullptr);

  Impl(EngineLoop& e, const Tokenizer& t, ServerOptions o)
      : engine(e), tok(t), opt(std::move(o)), per_token(max_bytes_per_token(t)), vocab(json_vocab(token_texts(t))) {
    if (opt.max_queue <= 0) opt.max_queue = 2 * opt.max_users;
    access.api_keys = opt.api_keys;
    access.cors_origins = opt.cors_origins;
    access.bound_host = opt.host;
  }

  ResponseMeta meta(bool chat) {
    char id[48];
    std::snprintf(id, sizeof id, "%s-%llx%06llx", chat ? "chatcmpl" : "cmpl", static_cast<unsigned long long>(started),
                  static_cast<unsigned long long>(next_id++));
    return {chat, id, std::time(nullptr), opt.model_name};
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    // Bounded before any work: a request over the queue bound costs nothing but this reply.
    auto held = std::make_shared<Admission>(generating);
    if (held->place > opt.max_users + opt.max_queue) {
      ApiError e(429, "the server has " + std::to_string(opt.max_users) + " requests generating and " +
                          std::to_string(opt.max_queue) + " waiting; retry later",
                 "", "requests");
      e.code = "rate_limit_exceeded";
      res.set_header("Retry-After", "1");
      send_error(res, e);
      return;
    }
    GenerationRequest g;
    try {
      g = chat ? parse_chat_request(req.body, tok, opt.context, per_token)
               : parse_completion_request(req.body, tok, opt.context, per_token);
    } catch (const ApiError& e) {
      send_error(res, e);
      return;
    }
    if (g.n > opt.max_users) {
      send_error(res, ApiError(400, "'n' is " + std::to_string(g.n) + " but this server runs at most " +
                                        std::to_string(opt.max_users) + " sequences at once (--max-users)",
                               "n"));
      return;
    }
    Request r;
    r.prompt = g.prompt;
    r.max_new_tokens = g.max_tokens;
    r.sampling = g.sampling;
    HookOptions ho;
    ho.top_logprobs = g.logprobs;
    ho.score_prompt = g.echo && g.logprobs >= 0;
    ho.adjust = g.adjust;
    ho.json = g.json;
    ho.vocab = &vocab;
    ho.eos_id = tok.eos_id();
    if (g.n > 1) {
      if (g.score_only) {
        send_error(res, ApiError(400, "'n' > 1 with max_tokens 0 would score the same prompt n times; send n=1", "n"));
        return;
      }
      // Each choice has its own hook (penalty counts, JSON state, its log-probabilities). Only
      // choice 0 prefills the prompt (the others copy its KV), so only it scores the prompt.
      std::vector<std::shared_ptr<RequestHook>> hooks;
      for (int i = 0; i < g.n; ++i) {
        HookOptions hi = ho;
        hi.score_prompt = ho.score_prompt && i == 0;
        auto h = std::make_shared<RequestHook>(std::move(hi), g.prompt);
        hooks.push_back(h->active() ? h : nullptr);
      }
      generate_choices(res, std::move(r), std::make_shared<GenerationRequest>(std::move(g)), chat, hooks, held);
      return;
    }
    auto hook = std::make_shared<RequestHook>(std::move(ho), g.prompt);
    if (hook->active()) r.hook = hook;
    else hook.reset();
    std::shared_ptr<Job> job = engine.submit(std::move(r));
    const ResponseMeta m = meta(chat);
    const int prompt_tokens = static_cast<int>(g.prompt.size());
    auto gp = std::make_shared<GenerationRequest>(std::move(g));
    auto cs = std::make_shared<ChoiceStream>(tok, vocab.texts, *gp, hook);
    if (gp->stream) {
      stream(res, job, m, gp, cs, prompt_tokens, std::move(held));
      return;
    }
    std::string text;
    std::vector<int> tokens;
    bool echoed = false;
    while (true) {
      tokens.clear();
      job->wait(tokens, kPing);
      // The prompt is scored by the step that yields the first token (or ends the job).
      if (!echoed && (!tokens.empty() || job->done())) {
        text += cs->start();
        echoed = true;
      }
      text += cs->push(tokens);
      if (cs->stopped()) {
        engine.cancel(job, false);
        break;
      }
      if (job->done()) break;
    }
    if (!cs->stopped() && !job->error().empty()) {
      const int status = job->error_status();
      send_error(res, ApiError(status, job->error(), "", status >= 500 ? "server_error" : "invalid_request_error"));
      return;
    }
    text += cs->finish();
    const json body = response_json(m, text, finish_name(job->finish(), cs->stopped()), {prompt_tokens, cs->tokens()},
                                    cs->take_logprobs());
    res.set_content(dump(body), "application/json");
  }

  // Server-sent events: one chunk per piece of text, a last chunk with finish_reason, then
  // [DONE]. A write that fails means the client left: the request is cancelled.
  void stream(httplib::Response& res, std::shared_ptr<Job> job, const ResponseMeta& m,
              std::shared_ptr<GenerationRequest> g, std::shared_ptr<ChoiceStream> ts, int prompt_tokens,
              AdmissionPtr held) {
    const bool include_usage = g->include_usage;
    EngineLoop* eng = &engine;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    // The provider runs after the handler returns, so it keeps the request's admission (one
    // count: a second one here would count the request twice until the handler returns).
    res.set_chunked_content_provider(
        "text/event-stream",
        [eng, job, g, ts, m, include_usage, prompt_tokens, held](size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
          auto leave = [&] {
            eng->cancel(job);
            return false;
          };
          if (m.chat && !write(sse(chunk_json(m, "", "", true)))) return leave();
          std::vector<int> tokens;
          bool echoed = false;
          while (true) {
            tokens.clear();
            const bool changed = job->wait(tokens, kPing);
            std::string piece;
            if (!echoed && (!tokens.empty() || job->done())) {
              piece = ts->start();
              echoed = true;
            }
            piece += ts->push(tokens);
            // Chunks carry the log-probabilities of the tokens they were decoded from.
            const json lp = ts->take_logprobs();
            const bool has_lp = has_logprobs(lp);
            if ((!piece.empty() || has_lp) && !write(sse(chunk_json(m, piece, "", false, has_lp ? lp : json(nullptr)))))
              return leave();
            if (ts->stopped()) {
              eng->cancel(job, false);
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
          const json lp = ts->take_logprobs();
          if (!write(sse(chunk_json(m, rest, finish_name(job->finish(), ts->stopped()), false, lp)))) return leave();
          if (include_usage && !write(sse(usage_chunk_json(m, {prompt_tokens, ts->tokens()})))) return leave();
          if (!write("data: [DONE]\n\n")) return leave();
          sink.done();
          return true;
        },
        [eng, job](bool success) {
          if (!success) eng->cancel(job);
        });
  }

  json model_json() const {
    return {{"id", opt.model_name}, {"object", "model"}, {"created", started}, {"owned_by", "mixtral"}};
  }

  // n > 1: the choices share the prompt's KV (engine.submit_choices), each with its own hook.
  void generate_choices(httplib::Response& res, Request r, std::shared_ptr<GenerationRequest> g, bool chat,
                        const std::vector<std::shared_ptr<RequestHook>>& hooks, AdmissionPtr held) {
    std::vector<std::shared_ptr<TokenHook>> job_hooks(hooks.begin(), hooks.end());
    auto choices = std::make_shared<std::vector<Choice>>();
    const auto jobs = engine.submit_choices(std::move(r), g->n, job_hooks);
    for (size_t i = 0; i < jobs.size(); ++i)
      choices->push_back(Choice{jobs[i], std::make_shared<ChoiceStream>(tok, vocab.texts, *g, hooks[i], hooks[0])});
    const ResponseMeta m = meta(chat);
    const int prompt_tokens = static_cast<int>(g->prompt.size());
    if (g->stream) {
      stream_choices(res, choices, m, g, prompt_tokens, std::move(held));
      return;
    }
    std::vector<std::string> texts(choices->size());
    std::vector<json> lps(choices->size());
    // Round robin over the choices (they advance in the same engine steps), so a stop string in
    // any of them ends that one at once.
    while (!all_ended(*choices)) {
      bool waited = false;
      for (size_t i = 0; i < choices->size(); ++i) {
        Choice& c = (*choices)[i];
        if (c.ended) continue;
        std::vector<int> tokens;
        c.job->wait(tokens, waited ? std::chrono::milliseconds(0) : kPing);
        waited = true;
        texts[i] += advance(c, tokens);
        if (c.cs->stopped()) engine.cancel(c.job, false);
        c.ended = c.cs->stopped() || c.job->done();
      }
    }
    Usage usage{prompt_tokens, 0};
    for (size_t i = 0; i < choices->size(); ++i) {
      Choice& c = (*choices)[i];
      if (!c.cs->stopped() && !c.job->error().empty()) {
        for (Choice& o : *choices) engine.cancel(o.job, false);
        const int status = c.job->error_status();
        send_error(res, ApiError(status, c.job->error(), "", status >= 500 ? "server_error" : "invalid_request_error"));
        return;
      }
      texts[i] += c.cs->finish();
      lps[i] = c.cs->take_logprobs();
      usage.completion_tokens += c.cs->tokens();  // the prompt is counted once, in prompt_tokens
    }
    json body;
    for (size_t i = 0; i < choices->size(); ++i) {
      Choice& c = (*choices)[i];
      json one = response_json(m, texts[i], finish_name(c.job->finish(), c.cs->stopped()), usage, lps[i]);
      if (i == 0) {
        body = std::move(one);
      } else {
        one["choices"][0]["index"] = i;
        body["choices"].push_back(one["choices"][0]);
      }
    }
    res.set_content(dump(body), "application/json");
  }

  // Server-sent events: one chunk per piece of text (choices[0].index says whose), a last chunk
  // per choice with finish_reason, then [DONE]. A write that fails means the client left: the
  // request is cancelled.
  void stream_choices(httplib::Response& res, std::shared_ptr<std::vector<Choice>> choices, const ResponseMeta& m,
                      std::shared_ptr<GenerationRequest> g, int prompt_tokens, AdmissionPtr held) {
    const bool include_usage = g->include_usage;
    EngineLoop* eng = &engine;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    // The provider runs after the handler returns, so it keeps the request's admission.
    auto cancel_all = [eng, choices] {
      for (Choice& c : *choices) eng->cancel(c.job);
    };
    res.set_chunked_content_provider(
        "text/event-stream",
        [eng, choices, g, m, include_usage, prompt_tokens, held, cancel_all](size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
          auto leave = [&] {
            cancel_all();
            return false;
          };
          auto chunk = [&](size_t i, const std::string& text, const std::string& finish, bool first,
                           const json& lp = nullptr) {
            json j = chunk_json(m, text, finish, first, lp);
            j["choices"][0]["index"] = i;
            return write(sse(j));
          };
          if (m.chat)
            for (size_t i = 0; i < choices->size(); ++i)
              if (!chunk(i, "", "", true)) return leave();
          while (!all_ended(*choices)) {
            bool waited = false, changed = false;
            for (size_t i = 0; i < choices->size(); ++i) {
              Choice& c = (*choices)[i];
              if (c.ended) continue;
              std::vector<int> tokens;
              changed |= c.job->wait(tokens, waited ? std::chrono::milliseconds(0) : kPing);
              waited = true;
              const std::string piece = advance(c, tokens);
              // Chunks carry the log-probabilities of the tokens they were decoded from.
              const json lp = c.cs->take_logprobs();
              const bool has_lp = has_logprobs(lp);
              if ((!piece.empty() || has_lp) && !chunk(i, piece, "", false, has_lp ? lp : json(nullptr)))
                return leave();
              if (c.cs->stopped()) eng->cancel(c.job, false);
              c.ended = c.cs->stopped() || c.job->done();
              if (!c.ended) continue;
              if (!c.cs->stopped() && !c.job->error().empty()) {
                cancel_all();
                const ApiError e(c.job->error_status(), c.job->error(), "", "server_error");
                write(sse(error_json(e)));
                sink.done();
                return true;
              }
              const std::string rest = c.cs->finish();
              if (!chunk(i, rest, finish_name(c.job->finish(), c.cs->stopped()), false, c.cs->take_logprobs()))
                return leave();
            }
            if (!changed && !all_ended(*choices) && !write(": ping\n\n")) return leave();
          }
          Usage u{prompt_tokens, 0};
          for (const Choice& c : *choices) u.completion_tokens += c.cs->tokens();
          if (include_usage && !write(sse(usage_chunk_json(m, u)))) return leave();
          if (!write("data: [DONE]\n\n")) return leave();
          sink.done();
          return true;
        },
        [cancel_all](bool success) {
          if (!success) cancel_all();
        });
  }

  void models(httplib::Response& res) {
    res.set_content(dump(json{{"object", "list"}, {"data", json::array({model_json()})}}), "application/json");
  }

  void model(const std::string& id, httplib::Response& res) {
    if (id != opt.model_name) {
      ApiError e(404, "The model '" + id + "' does not exist; this server has '" + opt.model_name + "'", "model");
      e.code = "model_not_found";
      send_error(res, e);
      return;
    }
    res.set_content(dump(model_json()), "application/json");
  }

  std::string health_body() const {
    const EngineStats s = engine.stats();
    const EngineCounters& c = s.counters;
    auto ratio = [](int64_t a, int64_t b) { return b > 0 ? static_cast<double>(a) / static_cast<double>(b) : 0.0; };
    return dump(json{{"status", "ok"},
                     {"running", s.running},
                     {"waiting", s.waiting},
                     {"completed", s.completed},
                     {"cancelled", s.cancelled},
                     {"max_users", opt.max_users},
                     {"max_queue", opt.max_queue},
                     {"prefix_cache",
                      {{"requests", c.prefix_requests},
                       {"hits", c.prefix_hits},
                       {"prompt_tokens", c.prompt_tokens},
                       {"reused_tokens", c.reused_tokens},
                       {"token_hit_rate", ratio(c.reused_tokens, c.prompt_tokens)},
                       {"request_hit_rate", ratio(c.prefix_hits, c.prefix_requests)}}}});
  }

  std::string metrics_body() const {
    const EngineStats s = engine.stats();
    MetricsInput in;
    in.requests = requests.snapshot();
    in.engine = s.counters;
    in.running = s.running;
    in.waiting = s.waiting;
    in.max_users = opt.max_users;
    return render_metrics(in);
  }

  // On the FrontDoor's thread, before the body is read: refusals, CORS preflights and /health.
  std::optional<Reply> early(const RequestHead& h) {
    std::optional<Reply> r = early_reply(h);
    if (r) requests.count(h.method, h.path, r->status);
    return r;
  }

  std::optional<Reply> early_reply(const RequestHead& h) {
    Reply r;
    if (std::optional<ApiError> e = check_access(access, h)) {
      r.status = e->status;
      r.body = dump(error_json(*e));
      r.close = true;
      if (e->status == 401) r.headers.push_back({"WWW-Authenticate", "Bearer"});
      return r;
    }
    if (h.method == "OPTIONS" && h.find("origin") && h.find("access-control-request-method")) {
      r.status = 204;
      r.headers = cors_headers(access, h, true);
      return r;
    }
    if (h.method == "GET" && (h.path == "/health" || h.path == "/metrics")) {
      // Answered here, never queued behind requests that hold workers.
      r.body = h.path == "/health" ? health_body() : metrics_body();
      r.headers = cors_headers(access, h, false);
      if (h.path == "/metrics") r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      return r;
    }
    return std::nullopt;
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
    get_only(R"(/v1/models/(.+))", [this](const httplib::Request& q, httplib::Response& s) { model(q.matches[1], s); });
    get_only("/health", [this](const httplib::Request&, httplib::Response& s) {
      s.set_content(health_body(), "application/json");
    });
    get_only("/metrics", [this](const httplib::Request&, httplib::Response& s) {
      s.set_content(metrics_body(), "text/plain; version=0.0.4; charset=utf-8");
    });

    // Requests from an allowed browser origin (the FrontDoor refused the others) may read replies.
    svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      RequestHead h;
      if (req.has_header("Origin")) h.headers.push_back({"origin", req.get_header_value("Origin")});
      for (const Header& x : cors_headers(access, h, false)) res.set_header(x.name.c_str(), x.value);
      return httplib::Server::HandlerResponse::Unhandled;
    });

    // Errors httplib produces itself (no route, bad request line, body too large) get the
    // same JSON error object; our own errors already have a body.
    svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string msg = res.status == 404 ? "unknown endpoint: " + req.method + " " + req.path
                        : res.status == 413 ? "the request body is too large"
                                            : "HTTP error " + std::to_string(res.status);
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
    // Counted before the reply is written (the logger runs after it), so a client that got its
    // reply always finds it in /metrics.
    svr.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      requests.count(req.method, req.path, res.status);
    });
    svr.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::fprintf(stderr, "mixtral serve: %s %s -> %d\n", req.method.c_str(), req.path.c_str(), res.status);
    });
  }
};

HttpServer::HttpServer(EngineLoop& engine, const Tokenizer& tok, ServerOptions o)
    : impl_(std::make_unique<Impl>(engine, tok, std::move(o))) {
  Impl& m = *impl_;
  const size_t max_body = max_body_bytes(m.opt.context, m.per_token);
  m.svr.set_payload_max_length(max_body);
  m.routes();
  FrontDoorOptions f;
  f.host = m.opt.host;
  f.port = m.opt.port;
  f.head_seconds = m.opt.header_timeout;
  f.body_seconds = m.opt.body_timeout;
  f.max_body = max_body;
  f.max_body_why = " (the most a request that fits the context of " + std::to_string(m.opt.context) + " tokens can need)";
  // Every generation request (running, queued or streaming) holds a worker, up to the 429
  // bound; the spare ones serve everything else.
  const int generation = m.opt.max_users + m.opt.max_queue;
  f.workers = generation + 4;
  f.max_pending = std::max(64, generation);
  f.backlog = std::max(512, 4 * generation);
  // httplib refuses sockets >= FD_SETSIZE (it may use select), so connections stay below it.
  rlimit nofile{};
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  f.max_connections = static_cast<int>(std::min<rlim_t>(FD_SETSIZE - 124, nofile.rlim_cur > 200 ? nofile.rlim_cur - 124 : 76));
  m.door = std::make_unique<FrontDoor>(
      f, [&m](const RequestHead& h) { return m.early(h); },
      [&m, write_s = f.write_seconds](Connection& c, bool close) {
        BufferedStream strm(c, write_s);
        bool closed = false;
        const Admission replying(m.replying);
        const bool ok = m.svr.process_request(strm, close, closed, nullptr);
        return ok && !closed && !close;
      },
      [](const std::string& line) { std::fprintf(stderr, "mixtral serve: %s\n", line.c_str()); });
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const int port = impl_->door->bind();
  impl_->svr.set_listening(impl_->door->listen_fd());
  return port;
}

void HttpServer::listen() { impl_->door->run(); }

void HttpServer::drain(int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while ((impl_->generating.load() > 0 || impl_->replying.load() > 0) && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

void HttpServer::stop() {
  impl_->svr.set_listening(-1);
  impl_->door->stop();
}

}  // namespace mx::server
