// `mixtral serve` prefix cache, n > 1 and /metrics end to end on the tiny model (the server as
// a child process on a loopback port, as in server_test.cc).
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "runtime/chat_format.h"
#include "runtime/tokenizer.h"
#include "server/httplib_abi.h"
#include "server_client.h"
#include "server_process.h"
#include "test_util.h"

namespace mx {
namespace {

using nlohmann::json;
using test::ServerProcess;

const std::string kHf = test::data_path("tiny-mixtral/hf");

using test::Reply;

std::unique_ptr<httplib::Client> client(int port) { return test::http_client(port, 30, 10); }

Reply post(int port, const std::string& path, const json& body) {
  return test::post_json(*client(port), path, body.dump());
}

json health(int port) {
  auto r = client(port)->Get("/health");
  return r ? json::parse(r->body) : json();
}

// The `data:` payloads of a streamed request, "[DONE]" last.
std::vector<std::string> post_stream(int port, const std::string& path, const json& body) {
  auto r = client(port)->Post(path.c_str(), body.dump(), "application/json");
  std::vector<std::string> out;
  if (!r) return out;
  size_t pos = 0;
  for (size_t end; (end = r->body.find("\n\n", pos)) != std::string::npos; pos = end + 2) {
    const std::string event = r->body.substr(pos, end - pos);
    if (event.rfind("data: ", 0) == 0) out.push_back(event.substr(6));
  }
  return out;
}

json chat(const std::vector<ChatMessage>& ms, int max_tokens) {
  json m = json::array();
  for (const ChatMessage& x : ms) m.push_back({{"role", x.role}, {"content", x.content}});
  return {{"messages", m}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

TEST(ServerPrefix, SecondChatTurnReusesTheFirstAndEqualsAFreshServer) {
  ServerProcess warm("--max-users 2");
  std::vector<ChatMessage> ms = {{"system", "Be brief."}, {"user", "Name three French cheeses."}};
  const Reply t1 = post(warm.port(), "/v1/chat/completions", chat(ms, 10));
  ASSERT_EQ(t1.status, 200) << t1.body.dump();
  const int p1 = t1.body["usage"]["prompt_tokens"];
  ms.push_back({"assistant", t1.body["choices"][0]["message"]["content"]});
  ms.push_back({"user", "And three Italian ones?"});
  const Reply t2 = post(warm.port(), "/v1/chat/completions", chat(ms, 12));
  ASSERT_EQ(t2.status, 200) << t2.body.dump();
  const json h = health(warm.port())["prefix_cache"];
  EXPECT_EQ(h["requests"], 2);
  EXPECT_EQ(h["hits"], 1);
  EXPECT_GE(h["reused_tokens"].get<int>(), p1);  // at least the whole first prompt

  ServerProcess cold("--max-users 2");
  const Reply c2 = post(cold.port(), "/v1/chat/completions", chat(ms, 12));
  ASSERT_EQ(c2.status, 200);
  EXPECT_EQ(health(cold.port())["prefix_cache"]["reused_tokens"], 0);
  EXPECT_EQ(c2.body["choices"][0]["message"]["content"], t2.body["choices"][0]["message"]["content"]);
  EXPECT_EQ(c2.body["usage"], t2.body["usage"]);

  // The same turn once more streamed on the warm server: now its whole prompt but one token is
  // cached, and the text is still the cold one.
  json s = chat(ms, 12);
  s["stream"] = true;
  const auto events = post_stream(warm.port(), "/v1/chat/completions", s);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) text += json::parse(events[i])["choices"][0]["delta"].value("content", "");
  EXPECT_EQ(text, c2.body["choices"][0]["message"]["content"]);
}

TEST(ServerPrefix, TenTurnChatPrefillsOnlyEachNewTurn) {
  ServerProcess s("--max-users 2");
  TokenizerSource src;
  src.model_path = kHf + "/tokenizer.model";
  const Tokenizer tok = Tokenizer::load(src);
  std::vector<ChatMessage> ms = {{"user", "Tell me a story."}};
  size_t previous = 0;  // the previous turn's prompt tokens
  int64_t prompt_seen = 0, reused_seen = 0;
  for (int turn = 0; turn < 10; ++turn) {
    const Reply r = post(s.port(), "/v1/chat/completions", chat(ms, 6));
    ASSERT_EQ(r.status, 200) << r.body.dump();
    const size_t n = r.body["usage"]["prompt_tokens"];
    ASSERT_EQ(n, encode_chat(tok, ms).size());
    const json h = health(s.port())["prefix_cache"];
    const int64_t prompt = h["prompt_tokens"].get<int64_t>() - prompt_seen;
    const int64_t reused = h["reused_tokens"].get<int64_t>() - reused_seen;
    prompt_seen += prompt;
    reused_seen += reused;
    EXPECT_EQ(prompt, static_cast<int64_t>(n)) << turn;
    // Everything up to this turn is cached; only the last reply and the new message (and at
    // most the reply's last token, never fed) are prefilled.
    EXPECT_GE(reused, static_cast<int64_t>(previous)) << "turn " << turn;
    EXPECT_LE(prompt - reused, static_cast<int64_t>(n - previous)) << "turn " << turn;
    previous = n;
    ms.push_back({"assistant", r.body["choices"][0]["message"]["content"]});
    ms.push_back({"user", "Go on, part " + std::to_string(turn + 2) + "."});
  }
  EXPECT_EQ(health(s.port())["prefix_cache"]["hits"], 9);
}

TEST(ServerPrefix, ChoicesShareThePromptAndSampleTheirOwnStreams) {
  ServerProcess s("--max-users 4");
  const json one = {{"prompt", "Once upon a time"}, {"max_tokens", 8}, {"temperature", 1.0}, {"seed", 11}};
  json three = one;
  three["n"] = 3;
  const Reply r1 = post(s.port(), "/v1/completions", one);
  const Reply r3 = post(s.port(), "/v1/completions", three);
  ASSERT_EQ(r3.status, 200) << r3.body.dump();
  ASSERT_EQ(r3.body["choices"].size(), 3u);
  std::set<std::string> texts;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r3.body["choices"][i]["index"], i);
    texts.insert(r3.body["choices"][i]["text"].get<std::string>());
  }
  EXPECT_GT(texts.size(), 1u);  // three streams, not one sample three times
  // Choice 0 is what n=1 samples; the prompt is counted once.
  EXPECT_EQ(r3.body["choices"][0]["text"], r1.body["choices"][0]["text"]);
  EXPECT_EQ(r3.body["usage"]["prompt_tokens"], r1.body["usage"]["prompt_tokens"]);
  EXPECT_EQ(r3.body["usage"]["completion_tokens"], 24);

  // Streamed: chunks name their choice and concatenate to the same texts.
  json st = three;
  st["stream"] = true;
  st["stream_options"] = {{"include_usage", true}};
  const auto events = post_stream(s.port(), "/v1/completions", st);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  std::map<int, std::string> by_index;
  std::map<int, int> finishes;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i]);
    if (c["choices"].empty()) {
      usage = c["usage"];
      continue;
    }
    const int idx = c["choices"][0]["index"];
    by_index[idx] += c["choices"][0]["text"].get<std::string>();
    if (!c["choices"][0]["finish_reason"].is_null()) ++finishes[idx];
  }
  ASSERT_EQ(by_index.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(by_index[i], r3.body["choices"][i]["text"]) << i;
    EXPECT_EQ(finishes[i], 1) << i;
  }
  EXPECT_EQ(usage["prompt_tokens"], r1.body["usage"]["prompt_tokens"]);

  // Choices after the first copy its prompt's KV: 2 x (prompt - 1) tokens reused per request at least.
  const int p = r1.body["usage"]["prompt_tokens"];
  EXPECT_GE(health(s.port())["prefix_cache"]["reused_tokens"].get<int>(), 4 * (p - 1));

  // Greedy choices are all the greedy text.
  const Reply rg = post(s.port(), "/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                                           {"max_tokens", 6}, {"temperature", 0}, {"n", 2}});
  ASSERT_EQ(rg.status, 200);
  EXPECT_EQ(rg.body["choices"][0]["message"], rg.body["choices"][1]["message"]);
  EXPECT_EQ(rg.body["choices"][1]["index"], 1);

  const Reply big = post(s.port(), "/v1/completions", {{"prompt", "Hi"}, {"n", 5}});
  EXPECT_EQ(big.status, 400);
  EXPECT_EQ(big.body["error"]["param"], "n");
}

// n > 1 with per-request hooks: every choice gets its own penalty counts, JSON state and
// log-probabilities, and an echo scores the prompt once for all of them.
TEST(ServerPrefix, ChoicesHaveTheirOwnHooks) {
  ServerProcess s("--max-users 4");
  // Greedy with a strong frequency penalty: a hook shared by the choices would count each
  // token twice and change the text; each choice must equal the n=1 reply.
  const json pen = {{"prompt", "the the the the"}, {"max_tokens", 12}, {"temperature", 0}, {"frequency_penalty", 2.0}};
  json pen2 = pen;
  pen2["n"] = 2;
  const Reply p1 = post(s.port(), "/v1/completions", pen);
  const Reply p2 = post(s.port(), "/v1/completions", pen2);
  ASSERT_EQ(p1.status, 200) << p1.body.dump();
  ASSERT_EQ(p2.status, 200) << p2.body.dump();
  ASSERT_EQ(p2.body["choices"].size(), 2u);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(p2.body["choices"][i]["text"], p1.body["choices"][0]["text"]) << i;

  // Echo with logprobs: each choice echoes the prompt with the same scores as n=1, then its own tokens.
  const json ech = {{"prompt", "Once upon a time there was"}, {"max_tokens", 4}, {"temperature", 0}, {"echo", true}, {"logprobs", 2}};
  json ech3 = ech;
  ech3["n"] = 3;
  const Reply e1 = post(s.port(), "/v1/completions", ech);
  const Reply e3 = post(s.port(), "/v1/completions", ech3);
  ASSERT_EQ(e1.status, 200) << e1.body.dump();
  ASSERT_EQ(e3.status, 200) << e3.body.dump();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(e3.body["choices"][i]["text"], e1.body["choices"][0]["text"]) << i;
    EXPECT_EQ(e3.body["choices"][i]["logprobs"], e1.body["choices"][0]["logprobs"]) << i;
  }
  const int prompt_tokens = e1.body["usage"]["prompt_tokens"];
  EXPECT_EQ(e1.body["choices"][0]["logprobs"]["tokens"].size(), static_cast<size_t>(prompt_tokens + 4));

  // Streamed: each choice's chunks carry its log-probabilities, and they add up to the reply's.
  json st = ech3;
  st["stream"] = true;
  const auto events = post_stream(s.port(), "/v1/completions", st);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  std::map<int, json> tokens, lps;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i]);
    if (c["choices"].empty()) continue;
    const json& ch = c["choices"][0];
    if (!ch.contains("logprobs") || ch["logprobs"].is_null()) continue;
    for (const auto& t : ch["logprobs"]["tokens"]) tokens[ch["index"].get<int>()].push_back(t);
    for (const auto& t : ch["logprobs"]["token_logprobs"]) lps[ch["index"].get<int>()].push_back(t);
  }
  ASSERT_EQ(tokens.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(tokens[i], e1.body["choices"][0]["logprobs"]["tokens"]) << i;
    EXPECT_EQ(lps[i], e1.body["choices"][0]["logprobs"]["token_logprobs"]) << i;
  }

  // Chat logprobs and JSON mode per choice: every choice lists its own tokens, and every
  // choice that finished (not cut by max_tokens) is a JSON object.
  const Reply j = post(s.port(), "/v1/chat/completions",
                       {{"messages", {{{"role", "user"}, {"content", "Give me JSON"}}}}, {"max_tokens", 24}, {"n", 3},
                        {"seed", 5}, {"temperature", 0.8}, {"logprobs", true}, {"top_logprobs", 1},
                        {"response_format", {{"type", "json_object"}}}});
  ASSERT_EQ(j.status, 200) << j.body.dump();
  ASSERT_EQ(j.body["choices"].size(), 3u);
  int generated = 0;
  for (int i = 0; i < 3; ++i) {
    const json& c = j.body["choices"][i];
    const std::string text = c["message"]["content"];
    generated += static_cast<int>(c["logprobs"]["content"].size());
    std::string joined;
    for (const auto& it : c["logprobs"]["content"]) joined += it["token"].get<std::string>();
    // The first piece's leading space (sentencepiece's word mark) is not part of the text.
    EXPECT_TRUE(joined == text || joined == " " + text) << i << ": " << joined << " vs " << text;
    if (c["finish_reason"] == "stop") EXPECT_TRUE(json::parse(text, nullptr, false).is_object()) << text;
    else EXPECT_EQ(text.rfind("{", 0), 0u) << text;
  }
  EXPECT_LE(generated, j.body["usage"]["completion_tokens"].get<int>());

  // Scoring only (max_tokens 0) would give n identical echoes: refused, naming n.
  const Reply z = post(s.port(), "/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 0}, {"n", 2}});
  EXPECT_EQ(z.status, 400);
  EXPECT_EQ(z.body["error"]["param"], "n");
}

// Prometheus text format: each line a comment or `name{labels} value`; returns name{labels} -> value.
std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> out;
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})?) ([-+0-9.eE]+|\+Inf|NaN)$)");
  const std::regex comment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$)");
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, comment)) continue;
    EXPECT_TRUE(std::regex_match(line, m, sample)) << "not a Prometheus line: " << line;
    if (!m.empty()) out[m[1]] = std::stod(m[4]);
  }
  return out;
}

TEST(ServerPrefix, MetricsAreParseableAndMove) {
  ServerProcess s("--max-users 2");
  auto c = client(s.port());
  auto r = c->Get("/metrics");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type").rfind("text/plain", 0), 0u);
  const auto before = parse_metrics(r->body);
  EXPECT_EQ(before.at("mixtral_generated_tokens_total"), 0);
  EXPECT_EQ(before.at("mixtral_max_users"), 2);
  ASSERT_EQ(post(s.port(), "/v1/completions", {{"prompt", "Hello there, this prompt is long enough to be cached"}, {"max_tokens", 5}, {"temperature", 0}}).status,
            200);
  ASSERT_EQ(post(s.port(), "/v1/completions", {{"prompt", "Hello there, this prompt is long enough to be cached"}, {"max_tokens", 5}, {"temperature", 0}}).status,
            200);
  EXPECT_EQ(post(s.port(), "/v1/completions", {{"prompt", ""}}).status, 400);
  r = c->Get("/metrics");
  ASSERT_TRUE(r);
  const auto after = parse_metrics(r->body);
  EXPECT_EQ(after.at("mixtral_requests_total{endpoint=\"POST /v1/completions\",status=\"200\"}"), 2);
  EXPECT_EQ(after.at("mixtral_requests_total{endpoint=\"POST /v1/completions\",status=\"400\"}"), 1);
  EXPECT_EQ(after.at("mixtral_requests_total{endpoint=\"GET /metrics\",status=\"200\"}"), 1);
  EXPECT_EQ(after.at("mixtral_generated_tokens_total"), 10);
  EXPECT_EQ(after.at("mixtral_time_to_first_token_seconds_count"), 2);
  EXPECT_EQ(after.at("mixtral_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 2);
  EXPECT_EQ(after.at("mixtral_inter_token_latency_seconds_count"), 8);
  EXPECT_GT(after.at("mixtral_kv_cache_bytes"), 0);
  EXPECT_EQ(after.at("mixtral_prefix_cache_requests_total"), 2);
  EXPECT_EQ(after.at("mixtral_prefix_cache_hits_total"), 1);
  const double prompt = after.at("mixtral_prompt_tokens_total");
  EXPECT_EQ(after.at("mixtral_prefix_cache_reused_tokens_total"), prompt / 2 - 1);
  EXPECT_EQ(after.at("mixtral_prefilled_tokens_total"), prompt / 2 + 1);
  EXPECT_EQ(after.at("mixtral_requests_running"), 0);
  // Buckets are cumulative.
  EXPECT_LE(after.at("mixtral_inter_token_latency_seconds_bucket{le=\"0.001\"}"),
            after.at("mixtral_inter_token_latency_seconds_bucket{le=\"60\"}"));
}

TEST(ServerPrefix, MetricsNeedTheKeyWhenOneIsSet) {
  ServerProcess s("--api-key sesame");
  auto c = client(s.port());
  auto r = c->Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = c->Get("/metrics", {{"Authorization", "Bearer sesame"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("mixtral_requests_total"), std::string::npos);
  r = c->Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(ServerPrefix, DisabledPrefixCacheReusesNothing) {
  ServerProcess s("--no-prefix-cache");
  const json req = {{"prompt", "Hello there, how are you"}, {"max_tokens", 3}, {"temperature", 0}};
  const Reply a = post(s.port(), "/v1/completions", req);
  const Reply b = post(s.port(), "/v1/completions", req);
  ASSERT_EQ(a.status, 200);
  EXPECT_EQ(a.body["choices"], b.body["choices"]);
  EXPECT_EQ(health(s.port())["prefix_cache"]["reused_tokens"], 0);
}

}  // namespace
}  // namespace mx
