// The OpenAI fields beyond plain generation, end to end on the tiny model: logprobs (echo
// scores equal `mixtral score`), logit_bias, penalties, JSON mode (always parses), and the
// 400s for fields the server does not honour or know.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "runtime/json_constraint.h"
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

Reply post(int port, const std::string& path, const json& body) {
  return test::post_json(*test::http_client(port, 60, 20), path, body.dump());
}

// The `data:` payloads of a streamed reply, [DONE] excluded, parsed.
std::vector<json> post_stream(int port, const std::string& path, json body) {
  body["stream"] = true;
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(60, 0);
  auto r = c.Post(path.c_str(), body.dump(), "application/json");
  std::vector<json> out;
  if (!r) return out;
  size_t pos = 0;
  while (true) {
    const size_t end = r->body.find("\n\n", pos);
    if (end == std::string::npos) break;
    const std::string ev = r->body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind("data: ", 0) == 0 && ev != "data: [DONE]") out.push_back(json::parse(ev.substr(6)));
  }
  return out;
}

Tokenizer tiny_tokenizer() {
  TokenizerSource src;
  src.model_path = kHf + "/tokenizer.model";
  return Tokenizer::load(src);
}

json user(const std::string& text) { return json::array({{{"role", "user"}, {"content", text}}}); }

TEST(ServerApi, EchoLogprobsEqualMixtralScore) {
  ServerProcess s("--kv-dtype f32");
  const std::string prompt = "The quick brown fox jumps over the lazy dog";
  const auto sc = test::run_cli("score --model " + kHf + " --threads 2 --top 3 --text '" + prompt + "'");
  ASSERT_EQ(sc.exit_code, 0) << sc.err;
  const json score = json::parse(sc.out);
  const size_t n = score["tokens"].size();

  // max_tokens 0: pure scoring.
  const Reply r = post(s.port(), "/v1/completions",
                       {{"prompt", prompt}, {"echo", true}, {"logprobs", 3}, {"max_tokens", 0}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const json& c = r.body["choices"][0];
  EXPECT_EQ(c["text"], prompt);
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 0);
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], n);
  const json& lp = c["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), n);
  ASSERT_EQ(lp["token_logprobs"].size(), n);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_EQ(lp["tokens"][0], "<s>");
  const Tokenizer tok = tiny_tokenizer();
  for (size_t j = 0; j + 1 < n; ++j) {
    const double want = score["positions"][j]["next_logprob"].get<double>();
    EXPECT_NEAR(lp["token_logprobs"][j + 1].get<double>(), want, 1e-6) << "token " << j + 1;
    // The best alternative is score's top-1, at its log-probability.
    const json& top = lp["top_logprobs"][j + 1];
    EXPECT_EQ(top.size(), 3u);
    const json& best = score["positions"][j]["top"][0];
    const double best_lp = best[1].get<double>() - score["positions"][j]["lse"].get<double>();
    std::string best_text = tok.piece(best[0].get<int>());
    for (size_t at = best_text.find("\u2581"); at != std::string::npos; at = best_text.find("\u2581"))
      best_text.replace(at, 3, " ");
    ASSERT_TRUE(top.contains(best_text)) << top.dump() << " lacks " << best_text;
    EXPECT_NEAR(top[best_text].get<double>(), best_lp, 1e-5);
  }
  // text_offset points at each token's text in the echoed prompt.
  for (size_t j = 1; j < n; ++j) {
    const size_t off = lp["text_offset"][j].get<size_t>();
    std::string t = lp["tokens"][j];
    if (j == 1 && t[0] == ' ') t = t.substr(1);  // the leading space of the first word is dropped
    EXPECT_EQ(prompt.substr(off, t.size()), t) << j;
  }

  // Echo with generation: the generated tokens follow, each scored under the model's own
  // distribution; greedy picks the top alternative.
  const Reply g = post(s.port(), "/v1/completions",
                       {{"prompt", prompt}, {"echo", true}, {"logprobs", 1}, {"max_tokens", 4}, {"temperature", 0}});
  ASSERT_EQ(g.status, 200);
  const json& gl = g.body["choices"][0]["logprobs"];
  ASSERT_EQ(gl["tokens"].size(), n + 4);
  for (size_t j = 1; j < n; ++j) EXPECT_EQ(gl["token_logprobs"][j], lp["token_logprobs"][j]);
  for (size_t j = n; j < n + 4; ++j) {
    const json& top = gl["top_logprobs"][j];
    ASSERT_EQ(top.size(), 1u);
    EXPECT_NEAR(top.begin().value().get<double>(), gl["token_logprobs"][j].get<double>(), 1e-9);
    EXPECT_LE(gl["token_logprobs"][j].get<double>(), 0.0);
  }
  EXPECT_EQ(g.body["choices"][0]["text"].get<std::string>().rfind(prompt, 0), 0u);
}

TEST(ServerApi, ChatLogprobsStreamedEqualNonStreamed) {
  ServerProcess s;
  const json req = {{"messages", user("Name a colour")}, {"max_tokens", 12}, {"temperature", 0},
                    {"logprobs", true}, {"top_logprobs", 2}};
  const Reply r = post(s.port(), "/v1/chat/completions", req);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const json& content = r.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), r.body["usage"]["completion_tokens"].get<size_t>() -
                                (r.body["choices"][0]["finish_reason"] == "stop" ? 1 : 0));
  std::string joined;
  for (const json& e : content) {
    ASSERT_EQ(e["top_logprobs"].size(), 2u);
    EXPECT_EQ(e["top_logprobs"][0]["token"], e["token"]);  // greedy: the most likely one
    EXPECT_EQ(e["top_logprobs"][0]["logprob"], e["logprob"]);
    EXPECT_GE(e["top_logprobs"][0]["logprob"].get<double>(), e["top_logprobs"][1]["logprob"].get<double>());
    std::string bytes;
    for (int b : e["bytes"]) bytes += static_cast<char>(b);
    joined += bytes;
  }
  // The tokens' bytes spell the reply (its first leading space aside).
  const std::string text = r.body["choices"][0]["message"]["content"];
  EXPECT_NE(joined.find(text), std::string::npos) << joined << " vs " << text;

  std::string streamed;
  json streamed_lp = json::array();
  for (const json& c : post_stream(s.port(), "/v1/chat/completions", req)) {
    if (c["choices"].empty()) continue;
    streamed += c["choices"][0]["delta"].value("content", "");
    const json& l = c["choices"][0]["logprobs"];
    if (l.is_object())
      for (const json& e : l["content"]) streamed_lp.push_back(e);
  }
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(streamed_lp, content);
  // Without logprobs, choices carry null.
  const Reply plain = post(s.port(), "/v1/chat/completions", {{"messages", user("hi")}, {"max_tokens", 3}});
  EXPECT_TRUE(plain.body["choices"][0]["logprobs"].is_null());
}

TEST(ServerApi, LogitBiasBansAndForcesTokens) {
  ServerProcess s;
  const json base = {{"prompt", "Once upon a time"}, {"max_tokens", 6}, {"temperature", 0}, {"logprobs", 0},
                     {"echo", false}};
  const Reply a = post(s.port(), "/v1/completions", base);
  ASSERT_EQ(a.status, 200) << a.body.dump();
  const Tokenizer tok = tiny_tokenizer();
  // Ban the greedy first token: another comes first.
  const std::string first = a.body["choices"][0]["logprobs"]["tokens"][0];
  json banned = base;
  int first_id = -1;
  for (int id = 0; id < tok.vocab_size() && first_id < 0; ++id) {
    std::string p = tok.piece(id);
    for (size_t at = p.find("\u2581"); at != std::string::npos; at = p.find("\u2581")) p.replace(at, 3, " ");
    if (p == first) first_id = id;
  }
  ASSERT_GE(first_id, 0);
  banned["logit_bias"] = {{std::to_string(first_id), -100}};
  const Reply b = post(s.port(), "/v1/completions", banned);
  ASSERT_EQ(b.status, 200) << b.body.dump();
  EXPECT_NE(b.body["choices"][0]["logprobs"]["tokens"][0], first);
  for (const json& t : b.body["choices"][0]["logprobs"]["tokens"]) EXPECT_NE(t, first);
  // +100 on one token makes it every token; its reported logprob is still the model's own.
  const int forced = tok.encode("banana", false).back();
  json force = base;
  force["logit_bias"] = {{std::to_string(forced), 100}};
  const Reply f = post(s.port(), "/v1/completions", force);
  ASSERT_EQ(f.status, 200);
  const json& fl = f.body["choices"][0]["logprobs"];
  ASSERT_EQ(fl["tokens"].size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_LT(fl["token_logprobs"][i].get<double>(), -1.0);  // unlikely to the model
  const std::string piece = fl["tokens"][0];
  for (const json& t : fl["tokens"]) EXPECT_EQ(t, piece);
  // A frequency penalty of 2 against a bias of 3: the token is taken once, then penalised
  // below the model's own choice (3 - 2n falls under the gap), so it does not repeat forever.
  json pen = base;
  pen["logit_bias"] = {{std::to_string(forced), 100}};
  pen["frequency_penalty"] = 2;
  pen["presence_penalty"] = 2;
  const Reply p = post(s.port(), "/v1/completions", pen);
  ASSERT_EQ(p.status, 200);
  EXPECT_EQ(p.body["choices"][0]["logprobs"]["tokens"], fl["tokens"]);  // +100 outweighs 6 * 2 + 2
}

TEST(ServerApi, JsonModeAlwaysParses) {
  ServerProcess s("--max-users 8");
  int complete = 0;
  for (int seed = 0; seed < 24; ++seed) {
    const bool chat = seed % 2 == 0;
    json req = {{"max_tokens", 120}, {"temperature", 1}, {"top_p", 1}, {"seed", seed},
                {"response_format", {{"type", "json_object"}}}};
    if (chat) req["messages"] = user("Give me a JSON object");
    else req["prompt"] = "{";
    const Reply r = post(s.port(), chat ? "/v1/chat/completions" : "/v1/completions", req);
    ASSERT_EQ(r.status, 200) << r.body.dump();
    const json& c = r.body["choices"][0];
    const std::string text = chat ? c["message"]["content"].get<std::string>() : c["text"].get<std::string>();
    if (c["finish_reason"] == "stop") {
      ++complete;
      const json doc = json::parse(text, nullptr, false);
      EXPECT_TRUE(doc.is_object()) << text;
    } else {
      // Cut by max_tokens: still a prefix of a JSON object.
      JsonMachine m(std::make_shared<JsonSchema>(json_object_schema()));
      EXPECT_TRUE(m.feed(text)) << text;
    }
  }
  EXPECT_GT(complete, 0);
  // A schema whose documents are short: every one completes, parses and conforms.
  const json schema = json::parse(R"({"type":"object","properties":{"ok":{"type":"boolean"},
      "kind":{"enum":["a","b"]},"n":{"type":"integer"}},"required":["ok","kind"],"additionalProperties":false})");
  for (int seed = 0; seed < 12; ++seed) {
    const json req = {{"messages", user("JSON please")}, {"max_tokens", 200}, {"temperature", 1}, {"seed", seed},
                      {"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "t"}, {"schema", schema}}}}}};
    const Reply r = post(s.port(), "/v1/chat/completions", req);
    ASSERT_EQ(r.status, 200) << r.body.dump();
    const std::string text = r.body["choices"][0]["message"]["content"];
    if (r.body["choices"][0]["finish_reason"] != "stop") {
      EXPECT_TRUE(JsonMachine(std::make_shared<JsonSchema>(compile_json_schema(schema))).feed(text)) << text;
      continue;
    }
    const json doc = json::parse(text, nullptr, false);
    ASSERT_TRUE(doc.is_object()) << text;
    EXPECT_TRUE(doc["ok"].is_boolean()) << text;
    EXPECT_TRUE(doc["kind"] == "a" || doc["kind"] == "b") << text;
    if (doc.contains("n")) {
      EXPECT_TRUE(doc["n"].is_number_integer()) << text;
    }
    for (auto it = doc.begin(); it != doc.end(); ++it) EXPECT_TRUE(it.key() == "ok" || it.key() == "kind" || it.key() == "n");
  }
}

TEST(ServerApi, UnhonouredAndUnknownFieldsAre400sNamingThem) {
  ServerProcess s;
  struct Case {
    const char* path;
    json body;
    const char* param;
    const char* says;
  };
  const json m = user("hi");
  const json tool = {{"type", "function"}, {"function", {{"name", "f"}, {"parameters", json::object()}}}};
  json pattern = {{"messages", m}};
  pattern["response_format"] = json::parse(R"({"type":"json_schema","json_schema":{"schema":{"type":"string","pattern":"a+"}}})");
  const std::vector<Case> cases = {
      {"/v1/chat/completions", {{"messages", m}, {"tools", {tool}}}, "tools", "tool"},
      {"/v1/chat/completions", {{"messages", m}, {"tool_choice", "auto"}}, "tool_choice", "tool"},
      {"/v1/chat/completions", {{"messages", m}, {"functions", {tool["function"]}}}, "functions", "function"},
      {"/v1/chat/completions", {{"messages", m}, {"function_call", "auto"}}, "function_call", "function"},
      {"/v1/chat/completions", {{"messages", m}, {"audio", {{"voice", "x"}}}}, "audio", "not supported"},
      {"/v1/chat/completions", {{"messages", m}, {"store", true}}, "store", "not supported"},
      {"/v1/chat/completions", {{"messages", m}, {"frobnicate", 1}}, "frobnicate", "Unrecognized request argument"},
      {"/v1/chat/completions", {{"messages", m}, {"echo", true}}, "echo", "Unrecognized"},
      {"/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}, {"name", "bob"}}}}}, "messages", "name"},
      {"/v1/chat/completions", {{"messages", m}, {"top_logprobs", 2}}, "top_logprobs", "logprobs"},
      {"/v1/chat/completions", {{"messages", m}, {"logprobs", true}, {"top_logprobs", 21}}, "top_logprobs", "[0, 20]"},
      {"/v1/chat/completions", {{"messages", m}, {"response_format", {{"type", "yaml"}}}}, "response_format", "yaml"},
      {"/v1/chat/completions", pattern, "response_format", "'pattern'"},
      {"/v1/chat/completions", {{"messages", m}, {"presence_penalty", 2.5}}, "presence_penalty", "[-2, 2]"},
      {"/v1/chat/completions", {{"messages", m}, {"logit_bias", {{"abc", 1}}}}, "logit_bias", "abc"},
      {"/v1/chat/completions", {{"messages", m}, {"logit_bias", {{"32000", 1}}}}, "logit_bias", "32000"},
      {"/v1/chat/completions", {{"messages", m}, {"logit_bias", {{"5", 101}}}}, "logit_bias", "[-100, 100]"},
      {"/v1/completions", {{"prompt", "hi"}, {"logprobs", 6}}, "logprobs", "[0, 5]"},
      {"/v1/completions", {{"prompt", "hi"}, {"suffix", "x"}}, "suffix", "not supported"},
      {"/v1/completions", {{"prompt", "hi"}, {"max_tokens", 0}}, "max_tokens", ">= 1"},
      {"/v1/completions", {{"prompt", "hi"}, {"messages", m}}, "messages", "Unrecognized"},
  };
  for (const Case& c : cases) {
    const Reply r = post(s.port(), c.path, c.body);
    EXPECT_EQ(r.status, 400) << c.body.dump();
    ASSERT_TRUE(r.body.contains("error")) << c.body.dump();
    EXPECT_EQ(r.body["error"]["param"], c.param) << c.body.dump();
    EXPECT_NE(r.body["error"]["message"].get<std::string>().find(c.says), std::string::npos)
        << c.body.dump() << " -> " << r.body["error"]["message"];
  }
  // Harmless ones are accepted.
  const Reply ok = post(s.port(), "/v1/chat/completions",
                        {{"messages", m}, {"max_tokens", 2}, {"user", "u"}, {"metadata", {{"k", "v"}}}, {"store", false},
                         {"tool_choice", "none"}, {"tools", json::array()}, {"parallel_tool_calls", true},
                         {"service_tier", "auto"}, {"modalities", {"text"}}, {"response_format", {{"type", "text"}}}});
  EXPECT_EQ(ok.status, 200) << ok.body.dump();
}

}  // namespace
}  // namespace mx
