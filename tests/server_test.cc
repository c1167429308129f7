// `mixtral serve` end to end on the tiny model: the binary runs as a child process on a free
// loopback port and httplib::Client talks to it. Greedy results must equal `mixtral generate`
// and `mixtral chat`, streaming must equal non-streaming, batching must not change results,
// bad input gets OpenAI errors, a client leaving mid-stream frees its slot, SIGTERM exits 0.
// The JSON, stop-string, streaming-text and seed pieces are also tested in-process.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "formats/error.h"
#include "runtime/chat_format.h"
#include "runtime/sampling.h"
#include "runtime/tokenizer.h"
#include "server/api.h"
#include "server/engine_loop.h"
#include "server/httplib_abi.h"
#include "server_client.h"
#include "server/stop_matcher.h"
#include "server/text_stream.h"
#include "server_process.h"
#include "test_util.h"

namespace mx {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::string kHf = test::data_path("tiny-mixtral/hf");

Tokenizer tiny_tokenizer() {
  TokenizerSource src;
  src.model_path = kHf + "/tokenizer.model";
  return Tokenizer::load(src);
}

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- the server as a child process ----

using test::ServerProcess;

using test::Reply;

std::unique_ptr<httplib::Client> client(int port) { return test::http_client(port, 20, 20); }

Reply post(int port, const std::string& path, const std::string& body) {
  return test::post_json(*client(port), path, body);
}

Reply post(int port, const std::string& path, const json& body) { return post(port, path, body.dump()); }

// A streamed request: the `data:` payloads in order (the last one should be "[DONE]").
std::vector<std::string> post_stream(int port, const std::string& path, const json& body) {
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  std::string raw;
  req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
    raw.append(d, n);
    return true;
  };
  httplib::Response res;
  httplib::Error err;
  client(port)->send(req, res, err);
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    const size_t end = raw.find("\n\n", pos);
    if (end == std::string::npos) break;
    const std::string event = raw.substr(pos, end - pos);
    if (event.rfind("data: ", 0) == 0) out.push_back(event.substr(6));
    pos = end + 2;
  }
  return out;
}

// The text of a streamed completion or chat reply; checks the chunks' shape on the way.
std::string stream_text(const std::vector<std::string>& events, bool chat, std::string* finish = nullptr) {
  std::string text;
  EXPECT_FALSE(events.empty());
  if (events.empty()) return text;
  EXPECT_EQ(events.back(), "[DONE]");
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i]);
    if (c["choices"].empty()) continue;  // the usage chunk
    EXPECT_EQ(c["object"], chat ? "chat.completion.chunk" : "text_completion");
    const json& ch = c["choices"][0];
    if (chat) text += ch["delta"].value("content", "");
    else text += ch["text"].get<std::string>();
    if (!ch["finish_reason"].is_null() && finish) *finish = ch["finish_reason"];
  }
  return text;
}

json health(int port) {
  auto r = client(port)->Get("/health");
  return r ? json::parse(r->body) : json();
}

json completion(const std::string& prompt, int max_tokens) {
  return {{"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

// `mixtral generate --temperature 0 --json` for one prompt.
json generate_cli(const std::string& prompt, int n) {
  const std::string path = test::tmp_dir("server-prompt") + "/p.json";
  std::ofstream(path) << json::array({prompt}).dump();
  const auto r = test::run_cli("generate --model " + kHf + " --threads 2 --temperature 0 --json -n " +
                               std::to_string(n) + " --prompts-file " + path);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return json::parse(r.out)[0];
}

const std::vector<std::string> kPrompts = {
    "Mistral.ai is a company that",
    "Simply put, the theory of relativity states that ",
    "Translate English to French: cheese =>",
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "1, 2, 3, 4,",
    "Paris is the capital of",
    "def fibonacci(n):",
};

TEST(Server, GreedyCompletionMatchesGenerateAndStreams) {
  ServerProcess s;
  for (size_t i = 0; i < 2; ++i) {
    const int n = 12 + 5 * static_cast<int>(i);
    const json want = generate_cli(kPrompts[i], n);
    const Reply r = post(s.port(), "/v1/completions", completion(kPrompts[i], n));
    ASSERT_EQ(r.status, 200) << r.body.dump();
    EXPECT_EQ(r.body["object"], "text_completion");
    EXPECT_EQ(r.body["model"], "hf");
    EXPECT_TRUE(r.body["id"].is_string());
    EXPECT_TRUE(r.body["created"].is_number_integer());
    const json& c = r.body["choices"][0];
    EXPECT_EQ(c["index"], 0);
    EXPECT_EQ(c["text"], want["text"]) << kPrompts[i];
    EXPECT_EQ(c["finish_reason"], want["finish_reason"] == "stop" ? "stop" : "length");
    EXPECT_EQ(r.body["usage"]["prompt_tokens"], want["prompt_tokens"]);
    EXPECT_EQ(r.body["usage"]["completion_tokens"], want["tokens"].size());
    EXPECT_EQ(r.body["usage"]["total_tokens"], want["prompt_tokens"].get<int>() + static_cast<int>(want["tokens"].size()));

    json sreq = completion(kPrompts[i], n);
    sreq["stream"] = true;
    sreq["stream_options"] = {{"include_usage", true}};
    const auto events = post_stream(s.port(), "/v1/completions", sreq);
    std::string finish;
    EXPECT_EQ(stream_text(events, false, &finish), want["text"]);
    EXPECT_EQ(finish, c["finish_reason"]);
    ASSERT_GE(events.size(), 3u);
    const json usage = json::parse(events[events.size() - 2]);
    EXPECT_TRUE(usage["choices"].empty());
    EXPECT_EQ(usage["usage"], r.body["usage"]);
  }
  // Default max_tokens is 16, like OpenAI's.
  const Reply d = post(s.port(), "/v1/completions", json{{"prompt", "Hello"}, {"temperature", 0}});
  ASSERT_EQ(d.status, 200);
  EXPECT_EQ(d.body["usage"]["completion_tokens"], 16);
}

TEST(Server, TokenIdPromptEqualsTextPrompt) {
  ServerProcess s;
  const Reply a = post(s.port(), "/v1/completions", completion(kPrompts[2], 10));
  ASSERT_EQ(a.status, 200);
  const Tokenizer tok = tiny_tokenizer();
  const std::vector<int> ids = tok.encode(kPrompts[2], true);
  const Reply b = post(s.port(), "/v1/completions", json{{"prompt", ids}, {"max_tokens", 10}, {"temperature", 0}});
  ASSERT_EQ(b.status, 200) << b.body.dump();
  EXPECT_EQ(b.body["choices"][0]["text"], a.body["choices"][0]["text"]);
  EXPECT_EQ(b.body["usage"], a.body["usage"]);
}

TEST(Server, ChatMatchesChatCommandAndStreams) {
  ServerProcess s;
  // test::run_cli reads stdin from /dev/null; chat needs its turn on stdin.
  const std::string dir = test::tmp_dir("server-chat");
  std::ofstream(dir + "/in.txt") << "Write a haiku about the sea\n";
  const std::string cmd = std::string(MIXTRAL_BIN) + " chat --model " + kHf +
                          " --threads 2 --temperature 0 -n 14 --system 'Be brief.' <" + dir + "/in.txt >" + dir + "/out.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const std::string out = test::read_file(dir + "/out.txt");
  ASSERT_FALSE(out.empty());
  const std::string want = out.substr(0, out.size() - 1);  // the command ends the reply with a newline

  const json req = {{"messages",
                     {{{"role", "system"}, {"content", "Be brief."}},
                      {{"role", "user"}, {"content", "Write a haiku about the sea"}}}},
                    {"max_tokens", 14},
                    {"temperature", 0}};
  const Reply r = post(s.port(), "/v1/chat/completions", req);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["object"], "chat.completion");
  EXPECT_EQ(r.body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r.body["choices"][0]["message"]["content"], want);
  const Tokenizer tok = tiny_tokenizer();
  EXPECT_EQ(r.body["usage"]["prompt_tokens"],
            encode_chat(tok, {{"system", "Be brief."}, {"user", "Write a haiku about the sea"}}).size());

  json sreq = req;
  sreq["stream"] = true;
  const auto events = post_stream(s.port(), "/v1/chat/completions", sreq);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(json::parse(events[0])["choices"][0]["delta"]["role"], "assistant");
  std::string finish;
  EXPECT_EQ(stream_text(events, true, &finish), want);
  EXPECT_EQ(finish, r.body["choices"][0]["finish_reason"]);
}

TEST(Server, ConcurrentRequestsEqualSoloResults) {
  // 4 slots for 8 requests: half wait in the queue and join as others finish.
  ServerProcess s("--max-users 4");
  std::vector<json> reqs;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    json r = completion(kPrompts[i], 10 + 7 * static_cast<int>(i));
    if (i % 3 == 1) r = {{"messages", {{{"role", "user"}, {"content", kPrompts[i]}}}}, {"max_tokens", 20}, {"temperature", 0}};
    reqs.push_back(r);
  }
  auto path = [&](size_t i) { return reqs[i].contains("messages") ? "/v1/chat/completions" : "/v1/completions"; };
  auto text = [](const json& body) {
    const json& c = body["choices"][0];
    return c.contains("text") ? c["text"].get<std::string>() : c["message"]["content"].get<std::string>();
  };
  std::vector<std::string> solo;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const Reply r = post(s.port(), path(i), reqs[i]);
    ASSERT_EQ(r.status, 200) << r.body.dump();
    solo.push_back(text(r.body));
  }
  std::vector<Reply> together(reqs.size());
  std::vector<std::string> streamed(reqs.size());
  test::ClientThreads threads;
  for (size_t i = 0; i < reqs.size(); ++i)
    threads.spawn([&, i] {
      if (i % 2 == 0) {
        together[i] = post(s.port(), path(i), reqs[i]);
      } else {
        json r = reqs[i];
        r["stream"] = true;
        streamed[i] = stream_text(post_stream(s.port(), path(i), r), r.contains("messages"));
      }
    });
  threads.join();
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (i % 2 == 0) {
      ASSERT_EQ(together[i].status, 200) << i;
      EXPECT_EQ(text(together[i].body), solo[i]) << "request " << i;
    } else {
      EXPECT_EQ(streamed[i], solo[i]) << "request " << i;
    }
  }
}

TEST(Server, StopStringsAndSeeds) {
  ServerProcess s;
  const Reply full = post(s.port(), "/v1/completions", completion(kPrompts[0], 24));
  ASSERT_EQ(full.status, 200);
  const std::string text = full.body["choices"][0]["text"];
  ASSERT_GT(text.size(), 12u);
  const std::string stop = text.substr(8, 3);
  json req = completion(kPrompts[0], 24);
  req["stop"] = {"no such text", stop};
  const Reply r = post(s.port(), "/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["choices"][0]["text"], text.substr(0, text.find(stop)));
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "stop");
  EXPECT_LT(r.body["usage"]["completion_tokens"].get<int>(), 24);
  req["stream"] = true;
  std::string finish;
  EXPECT_EQ(stream_text(post_stream(s.port(), "/v1/completions", req), false, &finish), text.substr(0, text.find(stop)));
  EXPECT_EQ(finish, "stop");

  // A seed samples the same however many requests came before.
  const json seeded = {{"prompt", kPrompts[3]}, {"max_tokens", 16}, {"temperature", 1.0}, {"seed", 1234}};
  const Reply a = post(s.port(), "/v1/completions", seeded);
  post(s.port(), "/v1/completions", completion(kPrompts[1], 3));
  const Reply b = post(s.port(), "/v1/completions", seeded);
  ASSERT_EQ(a.status, 200);
  EXPECT_EQ(a.body["choices"][0]["text"], b.body["choices"][0]["text"]);
  json other = seeded;
  other["seed"] = 99;
  EXPECT_NE(post(s.port(), "/v1/completions", other).body["choices"][0]["text"], a.body["choices"][0]["text"]);
}

TEST(Server, BadInputGetsOpenAiErrors) {
  ServerProcess s("--context 64");
  struct Case {
    std::string path, body, param, says;
  };
  const std::vector<Case> cases = {
      {"/v1/completions", "{\"prompt\": \"hi\"", "", "invalid JSON"},
      {"/v1/completions", "[1, 2]", "", "JSON object"},
      {"/v1/completions", "{}", "prompt", "required"},
      {"/v1/completions", R"({"prompt": 5})", "prompt", "string or a list of token ids"},
      {"/v1/completions", R"({"prompt": ""})", "prompt", "empty"},
      {"/v1/completions", R"({"prompt": []})", "prompt", "empty"},
      {"/v1/completions", R"({"prompt": [1, 40000]})", "prompt", "unknown token id 40000"},
      {"/v1/completions", R"({"prompt": [1, -3]})", "prompt", "unknown token id -3"},
      {"/v1/completions", R"({"prompt": ["a", "b"]})", "prompt", "several prompts"},
      {"/v1/completions", R"({"prompt": "hi", "n": 0})", "n", "in [1, 128]"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": "8"})", "max_tokens", "integer"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": 0})", "max_tokens", ">= 1"},
      {"/v1/completions", R"({"prompt": "hi", "max_tokens": 63})", "max_tokens", "(2 tokens) + max_tokens (63) = 65 tokens exceeds the context of 64"},
      {"/v1/completions", R"({"prompt": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]})", "prompt", "66 tokens but the context is 64"},
      {"/v1/completions", R"({"prompt": "hi", "temperature": "hot"})", "temperature", "number"},
      {"/v1/completions", R"({"prompt": "hi", "temperature": 3})", "temperature", "[0"},
      {"/v1/completions", R"({"prompt": "hi", "top_p": 0})", "top_p", "(0"},
      {"/v1/completions", R"({"prompt": "hi", "top_k": -1})", "top_k", ">= 0"},
      {"/v1/completions", R"({"prompt": "hi", "seed": 1.5})", "seed", "integer"},
      {"/v1/completions", R"({"prompt": "hi", "stop": 3})", "stop", "string or a list"},
      {"/v1/completions", R"({"prompt": "hi", "stop": [""]})", "stop", "empty"},
      {"/v1/completions", R"({"prompt": "hi", "stream": "yes"})", "stream", "true or false"},
      {"/v1/completions", R"({"prompt": "hi", "logprobs": 9})", "logprobs", "[0, 5]"},
      {"/v1/completions", R"({"prompt": "hi", "model": 7})", "model", "string"},
      {"/v1/chat/completions", "{}", "messages", "required"},
      {"/v1/chat/completions", R"({"messages": []})", "messages", "empty"},
      {"/v1/chat/completions", R"({"messages": "hi"})", "messages", "list"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user"}]})", "messages", "messages[0].content"},
      {"/v1/chat/completions", R"({"messages": [{"content": "x"}]})", "messages", "messages[0].role"},
      {"/v1/chat/completions", R"({"messages": [{"role": "robot", "content": "x"}]})", "messages", "robot"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})", "messages", "out of order"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})", "messages", "last message"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}], "n": 33})", "n", "at most 32 sequences"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})", "max_tokens", "exceeds the context of 64"},
  };
  for (const Case& c : cases) {
    const Reply r = post(s.port(), c.path, c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    ASSERT_TRUE(r.body.is_object() && r.body.contains("error")) << c.body << " -> " << r.body.dump();
    const json& e = r.body["error"];
    EXPECT_EQ(e["type"], "invalid_request_error") << c.body;
    if (c.param.empty()) EXPECT_TRUE(e["param"].is_null()) << c.body;
    else EXPECT_EQ(e["param"], c.param) << c.body;
    EXPECT_NE(e["message"].get<std::string>().find(c.says), std::string::npos) << c.body << " -> " << e["message"];
  }
  // Deeply nested JSON is an error, not a stack overflow.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(post(s.port(), "/v1/completions", deep).status, 400);
  EXPECT_EQ(post(s.port(), "/v1/completions", "{\"prompt\": " + deep + "}").status, 400);
  auto cli = client(s.port());
  auto r = cli->Get("/v1/nothing");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_NE(json::parse(r->body)["error"]["message"].get<std::string>().find("/v1/nothing"), std::string::npos);
  r = cli->Post("/v2/completions", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  r = cli->Get("/v1/completions");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "POST");
  EXPECT_TRUE(json::parse(r->body)["error"].is_object());
  r = cli->Post("/v1/models", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  r = cli->Delete("/v1/chat/completions");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  // The server still works after all that, and the context allows prompt + max_tokens = 64.
  const Reply ok = post(s.port(), "/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 62}, {"temperature", 0}});
  EXPECT_EQ(ok.status, 200) << ok.body.dump();
  EXPECT_EQ(ok.body["usage"]["total_tokens"].get<int>() <= 64, true);
}

TEST(Server, SameResultsAfterSchedulerRenewal) {
  // The engine starts a fresh scheduler when idle after 1024 requests (engine_loop.cc).
  ServerProcess s("--max-users 4");
  const Reply before = post(s.port(), "/v1/completions", completion(kPrompts[4], 12));
  ASSERT_EQ(before.status, 200);
  std::atomic<int> ok{0};
  test::ClientThreads threads;
  for (int t = 0; t < 4; ++t)
    threads.spawn([&] {
      auto c = client(s.port());
      for (int i = 0; i < 260; ++i) {
        auto r = c->Post("/v1/completions", completion("Hi", 1).dump(), "application/json");
        if (r && r->status == 200) ++ok;
      }
    });
  threads.join();
  EXPECT_EQ(ok, 1040);
  const Reply after = post(s.port(), "/v1/completions", completion(kPrompts[4], 12));
  ASSERT_EQ(after.status, 200);
  EXPECT_EQ(after.body["choices"][0]["text"], before.body["choices"][0]["text"]);
  EXPECT_EQ(health(s.port())["completed"], 1042);
}

TEST(Server, ModelsAndHealth) {
  ServerProcess s;
  auto cli = client(s.port());
  auto r = cli->Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const json m = json::parse(r->body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "hf");
  EXPECT_EQ(m["data"][0]["object"], "model");
  r = cli->Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["status"], "ok");
}

TEST(Server, ClientLeavingMidStreamFreesItsSlot) {
  // One slot: if the abandoned request kept it, the next one would wait for 30000 tokens.
  ServerProcess s("--max-users 1");
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = json{{"prompt", "Once upon a time"}, {"max_tokens", 30000}, {"stream", true}}.dump();
  req.set_header("Content-Type", "application/json");
  int chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
  httplib::Response res;
  httplib::Error err;
  client(s.port())->send(req, res, err);
  EXPECT_EQ(chunks, 3);
  const auto t0 = Clock::now();
  json h;
  while (since(t0) < 20) {
    h = health(s.port());
    if (h.value("cancelled", 0) == 1 && h.value("running", -1) == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(h["cancelled"], 1) << h.dump();
  EXPECT_EQ(h["running"], 0) << h.dump();
  const Reply r = post(s.port(), "/v1/completions", completion("Hello", 4));
  EXPECT_EQ(r.status, 200);
  EXPECT_LT(since(t0), 20.0);
  EXPECT_EQ(health(s.port())["cancelled"], 1);  // a request that runs to its end is not cancelled
}

TEST(Server, SigtermEndsRunningRequestsAndExitsZero) {
  ServerProcess s("--max-users 2");
  std::vector<std::string> events;
  test::ClientThreads t;
  t.spawn([&] {
    events = post_stream(s.port(), "/v1/completions", json{{"prompt", "Once upon a time"}, {"max_tokens", 30000}, {"stream", true}});
  });
  const auto t0 = Clock::now();
  while (health(s.port()).value("running", 0) == 0 && since(t0) < 20) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(s.stop(SIGTERM, 10), 0) << s.stderr_text();
  t.join();
  ASSERT_FALSE(events.empty());
  EXPECT_NE(events.back().find("shutting down"), std::string::npos) << events.back();
}

// ---- in-process pieces ----

TEST(ServerParts, StopMatcherHoldsBackPossibleStops) {
  server::StopMatcher m({"abc", "xyz"});
  EXPECT_EQ(m.push("hello a"), "hello ");  // "a" may start "abc"
  EXPECT_EQ(m.push("b"), "");
  EXPECT_EQ(m.push("d"), "abd");
  EXPECT_EQ(m.push("x"), "");
  EXPECT_EQ(m.push("ya"), "xy");  // "xya" is no stop; "a" may start "abc"
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push("bc and more"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("later"), "");
  EXPECT_EQ(m.flush(), "");
  server::StopMatcher n({"é!"});
  EXPECT_EQ(n.push("café"), "caf");
  EXPECT_EQ(n.push("?"), "é?");
  EXPECT_EQ(n.push("é"), "");
  EXPECT_EQ(n.flush(), "é");
  server::StopMatcher none({});
  EXPECT_EQ(none.push("text"), "text");
}

TEST(ServerParts, TextStreamNeverSplitsUtf8) {
  const Tokenizer tok = tiny_tokenizer();
  int c3 = -1, a9 = -1;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    if (tok.byte_value(id) == 0xC3) c3 = id;
    if (tok.byte_value(id) == 0xA9) a9 = id;
  }
  ASSERT_GE(c3, 0);
  ASSERT_GE(a9, 0);
  const std::vector<int> word = tok.encode("caf", false);
  server::TextStream ts(tok, {});
  std::string out = ts.push(word);
  EXPECT_EQ(ts.push({c3}), "");
  out += ts.push({a9});
  EXPECT_EQ(out, "café");
  out += ts.push({tok.eos_id()});
  out += ts.finish();
  EXPECT_EQ(out, "café");
  EXPECT_EQ(ts.tokens(), static_cast<int>(word.size()) + 3);
}

TEST(ServerParts, SeedForStreamReproducesStreamZero) {
  for (uint64_t seed : {0ULL, 1ULL, 1234ULL, ~0ULL})
    for (uint64_t stream : {0ULL, 1ULL, 7ULL, 100000ULL}) {
      Rng want(seed, 0), got(server::seed_for_stream(seed, stream), stream);
      for (int i = 0; i < 4; ++i) EXPECT_EQ(got.next(), want.next()) << seed << " " << stream;
    }
}

TEST(ServerParts, ParsesDefaultsAndFields) {
  const Tokenizer tok = tiny_tokenizer();
  server::GenerationRequest r = server::parse_completion_request(R"({"prompt": "Hello", "model": "x", "user": "u"})", tok, 100);
  EXPECT_EQ(r.prompt, tok.encode("Hello", true));
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.6f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_FALSE(r.stream);
  r = server::parse_completion_request(
      R"({"prompt": "Hello", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": 9, "stop": "x", "stream": true})",
      tok, 100);
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_EQ(r.sampling.top_k, 3);
  EXPECT_EQ(r.sampling.seed, 9u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
  EXPECT_TRUE(r.stream);
  // Chat without max_tokens may use the rest of the context.
  r = server::parse_chat_request(R"({"messages": [{"role": "user", "content": "Hi"}]})", tok, 100);
  EXPECT_EQ(r.prompt, encode_instruct(tok, "Hi"));
  EXPECT_EQ(r.max_tokens, 100 - static_cast<int>(r.prompt.size()));
  EXPECT_EQ(server::parse_completion_request(R"({"prompt": "Hello", "n": 2})", tok, 100).n, 2);
  try {
    server::parse_completion_request(R"({"prompt": "Hello", "n": 129})", tok, 100);
    FAIL() << "n=129 accepted";
  } catch (const server::ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(server::error_json(e)["error"]["param"], "n");
  }
}

}  // namespace
}  // namespace mx
