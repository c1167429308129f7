// `mixtral serve`: an OpenAI-compatible HTTP server (src/server/, docs/server.md). One engine
// thread runs the scheduler over all requests (continuous batching); HTTP threads only parse,
// enqueue and stream. SIGINT/SIGTERM stop it: running requests are cancelled, exit code 0.
// Under mpirun, a lost rank fails every request with a 503 naming it and exits non-zero.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/error.h"
#include "runtime/expert_parallel.h"
#include "runtime/scheduler.h"
#include "runtime/tokenizer.h"
#include "server/access_policy.h"
#include "server/engine_loop.h"
#include "server/http_server.h"

namespace mx::cli {

namespace {

struct ServeArgs {
  EngineOptions engine;
  std::string host = "127.0.0.1";
  int port = 8080, max_users = 32, context = 0, max_queue = 0;
  std::vector<std::string> api_keys, cors_origins;
  double header_timeout = 10, body_timeout = 60;
  bool no_prefix_cache = false;
};

// --api-key values, then MIXTRAL_API_KEY's comma-separated ones; empty ones are dropped.
std::vector<std::string> api_keys(const std::vector<std::string>& flags) {
  std::vector<std::string> keys;
  for (const std::string& k : flags)
    if (!k.empty()) keys.push_back(k);
  if (const char* env = std::getenv("MIXTRAL_API_KEY")) {
    std::string all = env;
    size_t start = 0;
    while (start <= all.size()) {
      const size_t comma = std::min(all.find(',', start), all.size());
      std::string k = all.substr(start, comma - start);
      while (!k.empty() && (k.back() == ' ' || k.back() == '\t')) k.pop_back();
      while (!k.empty() && (k.front() == ' ' || k.front() == '\t')) k.erase(0, 1);
      if (!k.empty()) keys.push_back(k);
      start = comma + 1;
    }
  }
  return keys;
}

// A flag, not sigwait: under mpirun, MPI's own threads exist before we could block signals.
volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_signal(int sig) { g_signal = sig; }

// The id /v1/models lists: the model folder's name (or the file's, for a GGUF).
std::string model_name(const std::string& path) {
  std::filesystem::path p(path);
  while (p.has_parent_path() && p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  return name.empty() ? path : name;
}

int run(ServeArgs& a) {
  if (a.port < 0 || a.port > 65535) fail("--port must be in 0..65535 (0: any free port)");
  if (a.max_users < 1) fail("--max-users must be >= 1");
  if (a.max_queue < 0) fail("--max-queue must be >= 0 (0: twice --max-users)");
  if (!(a.header_timeout > 0) || !(a.body_timeout > 0)) fail("--header-timeout and --body-timeout must be > 0 seconds");
  // httplib writes with flags 0: a client that hung up must not kill the server with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  Engine e = open_engine(a.engine);
  const ModelConfig& c = e.model->config;
  const int ctx = a.context > 0 ? a.context : c.max_seq_len;
  if (ctx < 2) fail("--context must be >= 2 tokens");
  KvCache kv(c.n_layers, c.n_kv_heads * c.head_dim, ctx, e.kv_dtype);
  SchedulerOptions so;
  so.max_users = a.max_users;
  so.prefix_cache = !a.no_prefix_cache;
  server::EngineLoop engine(make_forward(e, kv), c.vocab, e.tokenizer->eos_id(), ctx, so,
                            [&kv] { return kv.bytes_allocated(); });

  server::ServerOptions o;
  o.host = a.host;
  o.port = a.port;
  o.model_name = model_name(a.engine.model);
  o.context = ctx;
  o.max_users = a.max_users;
  o.max_queue = a.max_queue;
  o.api_keys = api_keys(a.api_keys);
  o.cors_origins = a.cors_origins;
  o.header_timeout = a.header_timeout;
  o.body_timeout = a.body_timeout;
  if (o.api_keys.empty() && !server::is_loopback(a.host))
    std::fprintf(stderr,
                 "mixtral serve: warning: listening on %s without an API key: anyone who can reach this port can use "
                 "the model (set --api-key or MIXTRAL_API_KEY)\n",
                 a.host.c_str());
  server::HttpServer http(engine, *e.tokenizer, o);
  // Under mpirun a lost rank ends the job (ep::abort_job). Before that, every request (running,
  // streaming, queued, or arriving meanwhile) gets a 503 naming the rank and host, so clients
  // and a supervisor see why; the abort then exits non-zero.
  struct FatalHook {
    FatalHook(server::EngineLoop& engine, server::HttpServer& http) {
      ep::set_fatal_hook([&engine, &http](const std::string& cause) {
        std::fprintf(stderr, "mixtral serve: the expert-parallel job failed; answering every request with 503 and exiting\n");
        engine.fail_all("the expert-parallel job failed, the server is exiting: " + cause, 503);
        http.drain(1000);
      });
    }
    ~FatalHook() { ep::set_fatal_hook({}); }
  } fatal_hook(engine, http);
  const int port = http.bind();
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  std::printf("mixtral serve: listening on http://%s:%d (model %s, context %d, %d users)\n", a.host.c_str(), port,
              o.model_name.c_str(), ctx, a.max_users);
  std::fflush(stdout);

  std::atomic<bool> listening{true};
  std::thread t([&] {
    http.listen();
    listening = false;
  });
  while (g_signal == 0 && listening) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (g_signal != 0 && ep::distributed()) {
    // mpirun sends SIGTERM to every rank when one dies: that is a lost rank, not a shutdown.
    // A lost rank ends the job through the fatal hook (503s naming it, non-zero exit).
    const std::string lost = ep::check_peers(0.4);
    if (!lost.empty())
      ep::abort_job(lost + " does not answer: that rank died or its host is unreachable (mpirun then ends the job)");
  }
  if (g_signal != 0) std::fprintf(stderr, "mixtral serve: %s, shutting down\n", strsignal(g_signal));
  else std::fprintf(stderr, "mixtral serve: error: the HTTP server stopped accepting connections\n");
  // Shutdown closes every connection and waits only for bounded work (a forward step, a
  // tokenization); should anything still hold it, the process exits anyway.
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    std::fprintf(stderr, "mixtral serve: shutdown is taking too long; exiting now\n");
    std::_Exit(g_signal != 0 ? 0 : 1);
  }).detach();
  // Engine first: handlers waiting for tokens get "shutting down" and return, so the HTTP
  // server can join its threads.
  engine.stop();
  http.drain(500);
  http.stop();
  t.join();
  return g_signal != 0 ? 0 : 1;
}

}  // namespace

Command add_serve(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* sub = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching and streaming");
  add_engine_options(sub, a->engine);
  sub->add_option("--host", a->host, "address to listen on")->default_val("127.0.0.1");
  sub->add_option("--port", a->port, "TCP port (0: any free port, printed at start)")->default_val(8080);
  sub->add_option("--max-users", a->max_users, "requests generating at once (KV-cache slots)")->default_val(32);
  sub->add_option("--context", a->context, "tokens per request, prompt + max_tokens (default: the model's)");
  sub->add_option("--max-queue", a->max_queue,
                  "generation requests that may wait for a slot; more get 429 (default: twice --max-users)");
  sub->add_option("--api-key", a->api_keys,
                  "require 'Authorization: Bearer KEY' on /v1 (repeatable; MIXTRAL_API_KEY adds comma-separated keys)");
  sub->add_option("--cors-origin", a->cors_origins, "let web pages from ORIGIN call the API (repeatable; * for any)");
  sub->add_flag("--no-prefix-cache", a->no_prefix_cache,
               "prefill every prompt in full instead of reusing the KV of earlier requests that share a prefix");
  sub->add_option("--header-timeout", a->header_timeout, "seconds a request may take to send its headers")
      ->default_val(10);
  sub->add_option("--body-timeout", a->body_timeout, "seconds a request may take to send headers and body")
      ->default_val(60);
  return {sub, [a] { return run(*a); }};
}

}  // namespace mx::cli
