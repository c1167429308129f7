#include "server/api.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <limits>

#include "formats/error.h"
#include "runtime/chat_format.h"
#include "runtime/tokenizer.h"

namespace mx::server {

using nlohmann::json;

ApiError::ApiError(int s, std::string message, std::string p, std::string t)
    : std::runtime_error(std::move(message)), status(s), type(std::move(t)), param(std::move(p)) {}

json error_json(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

json parse_body(const std::string& body, int context) {
  // The callback sees every value as it is parsed, so a body of a million tiny values or deep
  // nesting is refused before its DOM exists; `key` names the field a bad number belongs to.
  const size_t max_values = max_json_values(context);
  size_t values = 0;
  std::string key;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1) key = parsed.get<std::string>();
    if (depth > 64) bad(key, "the request JSON is nested more than 64 levels deep");
    if ((ev == json::parse_event_t::value || ev == json::parse_event_t::object_start ||
         ev == json::parse_event_t::array_start) && ++values > max_values)
      bad(key, "the request JSON has more than " + std::to_string(max_values) + " values (in or after '" + key +
                   "'); nothing that long fits the context of " + std::to_string(context) + " tokens");
    return true;
  };
  json j;
  try {
    j = json::parse(body, cb);
  } catch (const json::parse_error& e) {
    bad("", std::string("invalid JSON in the request body: ") + e.what());
  } catch (const json::out_of_range& e) {
    // A number that does not fit a double (1e309) or a 64-bit integer.
    bad(key, (key.empty() ? std::string("a number") : "'" + key + "'") + " is out of range: " + e.what());
  } catch (const json::exception& e) {
    bad(key, std::string("invalid JSON in the request body: ") + e.what());
  }
  if (!j.is_object()) bad("", "the request body must be a JSON object");
  return j;
}

// A field that is present and not null.
bool given(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

std::string num(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", x);
  return b;
}

double number(const json& j, const char* key, double lo, double hi, bool lo_open = false) {
  const json& v = j[key];
  if (!v.is_number()) bad(key, std::string("'") + key + "' must be a number");
  const double x = v.get<double>();
  if (x < lo || x > hi || (lo_open && x == lo))
    bad(key, std::string("'") + key + "' must be in " + (lo_open ? "(" : "[") + num(lo) + ", " + num(hi) + "], not " +
                 v.dump());
  return x;
}

int64_t integer(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json& v = j[key];
  if (!v.is_number_integer()) bad(key, std::string("'") + key + "' must be an integer");
  const bool too_big = v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(hi) : v.get<int64_t>() > hi;
  const bool too_small = v.is_number_unsigned() ? lo > 0 && v.get<uint64_t>() < static_cast<uint64_t>(lo) : v.get<int64_t>() < lo;
  if (too_big || too_small) {
    const std::string range = hi == std::numeric_limits<int>::max() ? ">= " + std::to_string(lo)
                                                                    : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    bad(key, std::string("'") + key + "' must be an integer " + range + ", not " + v.dump());
  }
  return v.get<int64_t>();
}

bool boolean(const json& j, const char* key) {
  if (!j[key].is_boolean()) bad(key, std::string("'") + key + "' must be true or false");
  return j[key].get<bool>();
}

// The request fields each endpoint knows (OpenAI's, plus our top_k). Anything else is a 400,
// as OpenAI answers "Unrecognized request argument supplied".
const char* const kCompletionFields[] = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options",
    "n", "best_of", "logprobs", "echo", "suffix", "logit_bias", "presence_penalty", "frequency_penalty", "user",
    "response_format"};
const char* const kChatFields[] = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
    "stream", "stream_options", "n", "logprobs", "top_logprobs", "logit_bias", "presence_penalty",
    "frequency_penalty", "user", "response_format", "metadata", "store", "service_tier", "parallel_tool_calls",
    "prompt_cache_key", "safety_identifier", "modalities", "tools", "tool_choice", "functions", "function_call",
    "audio", "prediction", "reasoning_effort", "web_search_options", "verbosity"};

template <size_t N>
void refuse_unknown(const json& j, const char* const (&known)[N]) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool ok = false;
    for (const char* k : known) ok |= it.key() == k;
    if (!ok) bad(it.key(), "Unrecognized request argument supplied: " + it.key());
  }
}

// Chat fields OpenAI has that this server cannot honour: refused unless absent, null or the
// value that asks for nothing.
void refuse_unhonoured_chat(const json& j) {
  const char* const tools_msg =
      " is not supported: Mixtral-8x7B-Instruct v0.1 was not trained for tool or function calls";
  if (given(j, "tools") && !(j["tools"].is_array() && j["tools"].empty())) bad("tools", std::string("'tools'") + tools_msg);
  if (given(j, "functions") && !(j["functions"].is_array() && j["functions"].empty()))
    bad("functions", std::string("'functions'") + tools_msg);
  if (given(j, "tool_choice") && j["tool_choice"] != "none") bad("tool_choice", std::string("'tool_choice'") + tools_msg);
  if (given(j, "function_call") && j["function_call"] != "none")
    bad("function_call", std::string("'function_call'") + tools_msg);
  if (given(j, "parallel_tool_calls") && !j["parallel_tool_calls"].is_boolean())
    bad("parallel_tool_calls", "'parallel_tool_calls' must be true or false");
  for (const char* k : {"audio", "prediction", "reasoning_effort", "web_search_options", "verbosity"})
    if (given(j, k)) bad(k, std::string("'") + k + "' is not supported by this server");
  if (given(j, "store") && j["store"] != false) bad("store", "'store' is not supported: nothing is stored");
  if (given(j, "modalities") && j["modalities"] != json::array({"text"}))
    bad("modalities", "only 'modalities': [\"text\"] is supported");
  if (given(j, "service_tier") && j["service_tier"] != "auto" && j["service_tier"] != "default")
    bad("service_tier", "'service_tier' must be 'auto' or 'default'");
  if (given(j, "metadata")) {
    if (!j["metadata"].is_object()) bad("metadata", "'metadata' must be an object of strings");
    for (const auto& v : j["metadata"])
      if (!v.is_string()) bad("metadata", "'metadata' must be an object of strings");
  }
  for (const char* k : {"prompt_cache_key", "safety_identifier"})
    if (given(j, k) && !j[k].is_string()) bad(k, std::string("'") + k + "' must be a string");
}

void parse_adjust(const json& j, GenerationRequest& r, int vocab) {
  if (given(j, "presence_penalty")) r.adjust.presence = static_cast<float>(number(j, "presence_penalty", -2, 2));
  if (given(j, "frequency_penalty")) r.adjust.frequency = static_cast<float>(number(j, "frequency_penalty", -2, 2));
  if (given(j, "logit_bias")) {
    const json& b = j["logit_bias"];
    if (!b.is_object()) bad("logit_bias", "'logit_bias' must be an object mapping token ids to numbers");
    for (auto it = b.begin(); it != b.end(); ++it) {
      const std::string& k = it.key();
      char* end = nullptr;
      errno = 0;
      const long id = k.empty() ? -1 : std::strtol(k.c_str(), &end, 10);
      if (k.empty() || *end != 0 || errno != 0 || id < 0 || id >= vocab)
        bad("logit_bias", "'logit_bias' key '" + k + "' is not a token id in [0, " + std::to_string(vocab) + ")");
      const json& v = it.value();
      if (!v.is_number()) bad("logit_bias", "'logit_bias' values must be numbers");
      const double x = v.get<double>();
      if (!(x >= -100 && x <= 100)) bad("logit_bias", "'logit_bias' values must be in [-100, 100], not " + v.dump());
      r.adjust.bias.emplace_back(static_cast<int>(id), static_cast<float>(x));
    }
  }
}

void parse_response_format(const json& j, GenerationRequest& r) {
  if (!given(j, "response_format")) return;
  const json& f = j["response_format"];
  if (!f.is_object() || !f.contains("type") || !f["type"].is_string())
    bad("response_format", "'response_format' must be an object with a 'type'");
  const std::string type = f["type"].get<std::string>();
  for (auto it = f.begin(); it != f.end(); ++it)
    if (it.key() != "type" && !(type == "json_schema" && it.key() == "json_schema"))
      bad("response_format", "'response_format." + it.key() + "' is not supported");
  if (type == "text") return;
  if (type == "json_object") {
    r.json = std::make_shared<JsonSchema>(json_object_schema());
    return;
  }
  if (type != "json_schema")
    bad("response_format", "'response_format.type' must be 'text', 'json_object' or 'json_schema', not '" + type + "'");
  if (!given(f, "json_schema") || !f["json_schema"].is_object())
    bad("response_format", "'response_format.json_schema' must be an object with a 'schema'");
  const json& js = f["json_schema"];
  for (auto it = js.begin(); it != js.end(); ++it)
    if (it.key() != "name" && it.key() != "schema" && it.key() != "strict" && it.key() != "description")
      bad("response_format", "'response_format.json_schema." + it.key() + "' is not supported");
  if (!given(js, "schema")) bad("response_format", "'response_format.json_schema.schema' is required");
  try {
    r.json = std::make_shared<JsonSchema>(compile_json_schema(js["schema"]));
  } catch (const JsonSchemaError& e) {
    bad("response_format", std::string("response_format.json_schema.schema: ") + e.what() +
                               " (supported: type, properties, required, additionalProperties: false/true, items, "
                               "enum, const, title, description)");
  }
}

// The fields both endpoints share. max_tokens is left at `default_max` (0: up to the context).
void parse_common(const json& j, GenerationRequest& r, int default_max) {
  if (given(j, "model") && !j["model"].is_string()) bad("model", "'model' must be a string");
  if (given(j, "n")) r.n = static_cast<int>(integer(j, "n", 1, 128));
  if (given(j, "user") && !j["user"].is_string()) bad("user", "'user' must be a string");
  if (given(j, "best_of") && j["best_of"] != 1) bad("best_of", "only best_of=1 is supported");
  r.max_tokens = default_max;
  const char* max_key = given(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (given(j, max_key)) {
    // 0 is pure scoring (echo with logprobs); parse_completion_request checks it is that.
    const bool zero_ok = given(j, "echo") && j["echo"] == true;
    r.max_tokens = static_cast<int>(integer(j, max_key, zero_ok ? 0 : 1, std::numeric_limits<int>::max()));
    if (r.max_tokens == 0) {
      r.score_only = true;
      r.max_tokens = 1;  // the scheduler always samples one token; it is not returned
    }
  }
  if (given(j, "temperature")) r.sampling.temperature = static_cast<float>(number(j, "temperature", 0, 2));
  if (given(j, "top_p")) r.sampling.top_p = static_cast<float>(number(j, "top_p", 0, 1, true));
  if (given(j, "top_k")) r.sampling.top_k = static_cast<int>(integer(j, "top_k", 0, std::numeric_limits<int>::max()));
  if (given(j, "seed"))
    r.sampling.seed = static_cast<uint64_t>(
        integer(j, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
  if (given(j, "stop")) {
    const json& s = j["stop"];
    std::vector<json> items;
    if (s.is_string()) items = {s};
    else if (s.is_array()) items.assign(s.begin(), s.end());
    else bad("stop", "'stop' must be a string or a list of strings");
    for (const json& x : items) {
      if (!x.is_string()) bad("stop", "'stop' must be a string or a list of strings");
      if (x.get<std::string>().empty()) bad("stop", "'stop' strings must not be empty");
      r.stop.push_back(x.get<std::string>());
    }
  }
  if (given(j, "stream")) r.stream = boolean(j, "stream");
  if (given(j, "stream_options")) {
    const json& o = j["stream_options"];
    if (!o.is_object()) bad("stream_options", "'stream_options' must be an object");
    if (given(o, "include_usage")) {
      if (!o["include_usage"].is_boolean()) bad("stream_options", "'stream_options.include_usage' must be true or false");
      r.include_usage = o["include_usage"].get<bool>();
    }
  }
}

// Prompt text that cannot fit whatever its tokens is refused before tokenizing it.
void check_text_size(size_t bytes, int context, size_t per_token, const char* param) {
  const size_t most = static_cast<size_t>(context) * per_token;
  if (bytes > most)
    bad(param, std::string("'") + param + "' has " + std::to_string(bytes) + " bytes of text, more than " +
                   std::to_string(context) + " tokens (the context) can hold (at most " + std::to_string(most) +
                   " bytes)");
}

// prompt + max_tokens must fit; max_tokens 0 means "the rest of the context".
void fit_context(GenerationRequest& r, int context, const char* prompt_param) {
  const long n = static_cast<long>(r.prompt.size());
  if (n >= context)
    bad(prompt_param, "the prompt has " + std::to_string(n) + " tokens but the context is " + std::to_string(context) +
                          " tokens (room is needed for at least one new token)");
  if (r.max_tokens == 0) {
    r.max_tokens = static_cast<int>(context - n);
  } else if (n + r.max_tokens > context) {
    bad("max_tokens", "the prompt (" + std::to_string(n) + " tokens) + max_tokens (" + std::to_string(r.max_tokens) +
                          ") = " + std::to_string(n + r.max_tokens) + " tokens exceeds the context of " +
                          std::to_string(context) + " tokens");
  }
}

}  // namespace

size_t max_bytes_per_token(const Tokenizer& tok) {
  size_t longest = 0;
  bool byte_fallback = false;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    if (tok.byte_value(id) >= 0) {
      byte_fallback = true;
      continue;  // "<0x41>" stands for one byte
    }
    const std::string p = tok.piece(id);
    size_t bytes = p.size();
    for (size_t at = p.find("\u2581"); at != std::string::npos; at = p.find("\u2581", at + 3)) bytes -= 2;  // "▁": one space
    longest = std::max(longest, bytes);
  }
  // Without byte pieces, a run of unknown characters may become one <unk>: no useful bound.
  return byte_fallback ? std::max<size_t>(longest, 4) : 4096;
}

size_t max_body_bytes(int context, size_t per_token) {
  // Text escaped as \u00XX takes 6 bytes a byte; every other JSON value gets 64 bytes.
  const size_t need = 6 * static_cast<size_t>(std::max(context, 0)) * per_token + 64 * max_json_values(context) + (64u << 10);
  return std::clamp<size_t>(need, 1u << 20, 64u << 20);
}

// A prompt of `context` token ids, or messages of at least a few tokens each, and a few dozen
// other fields.
size_t max_json_values(int context) { return 2 * static_cast<size_t>(std::max(context, 0)) + 1024; }

GenerationRequest parse_completion_request(const std::string& body, const Tokenizer& tok, int context,
                                           size_t per_token) {
  if (per_token == 0) per_token = max_bytes_per_token(tok);
  const json j = parse_body(body, context);
  refuse_unknown(j, kCompletionFields);
  GenerationRequest r;
  parse_common(j, r, 16);  // OpenAI's default for completions
  parse_adjust(j, r, tok.vocab_size());
  parse_response_format(j, r);
  if (given(j, "echo")) r.echo = boolean(j, "echo");
  if (given(j, "logprobs")) r.logprobs = static_cast<int>(integer(j, "logprobs", 0, 5));
  if (given(j, "suffix") && j["suffix"] != "") bad("suffix", "'suffix' is not supported (no fill-in-the-middle)");
  if (r.score_only && r.json) bad("max_tokens", "'max_tokens' 0 generates nothing, so 'response_format' cannot apply");
  if (!given(j, "prompt")) bad("prompt", "'prompt' is required");
  const json& p = j["prompt"];
  auto from_text = [&](const std::string& s) {
    if (s.empty()) bad("prompt", "'prompt' is empty");
    check_text_size(s.size(), context, per_token, "prompt");
    return tok.encode(s, true);
  };
  if (p.is_string()) {
    r.prompt = from_text(p.get<std::string>());
  } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
    r.prompt = from_text(p[0].get<std::string>());
  } else if (p.is_array()) {
    if (p.empty()) bad("prompt", "'prompt' is empty");
    for (size_t i = 0; i < p.size(); ++i) {
      const json& t = p[i];
      if (t.is_string()) bad("prompt", "a list of several prompts is not supported; send one request per prompt");
      if (!t.is_number_integer()) bad("prompt", "'prompt' must be a string or a list of token ids (integers)");
      // Checked as JSON numbers: any integer, 2^31 or 2^64 - 1 included, is reported as sent.
      const bool valid = t.is_number_unsigned() ? t.get<uint64_t>() < static_cast<uint64_t>(tok.vocab_size())
                                                : t.get<int64_t>() >= 0 && t.get<int64_t>() < tok.vocab_size();
      if (!valid)
        bad("prompt", "'prompt' has unknown token id " + t.dump() + " at index " + std::to_string(i) +
                          " (the vocabulary has " + std::to_string(tok.vocab_size()) + " tokens)");
      r.prompt.push_back(static_cast<int>(t.get<int64_t>()));
    }
  } else {
    bad("prompt", "'prompt' must be a string or a list of token ids");
  }
  fit_context(r, context, "prompt");
  return r;
}

GenerationRequest parse_chat_request(const std::string& body, const Tokenizer& tok, int context,
                                     size_t per_token) {
  if (per_token == 0) per_token = max_bytes_per_token(tok);
  const json j = parse_body(body, context);
  GenerationRequest r;
  refuse_unknown(j, kChatFields);
  refuse_unhonoured_chat(j);
  r.chat = true;
  parse_common(j, r, 0);  // OpenAI's chat default: as long as the context allows
  parse_adjust(j, r, tok.vocab_size());
  parse_response_format(j, r);
  const bool logprobs = given(j, "logprobs") && boolean(j, "logprobs");
  if (given(j, "top_logprobs")) {
    const int n = static_cast<int>(integer(j, "top_logprobs", 0, 20));
    if (!logprobs) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    r.logprobs = n;
  } else if (logprobs) {
    r.logprobs = 0;
  }
  if (!given(j, "messages")) bad("messages", "'messages' is required");
  const json& ms = j["messages"];
  if (!ms.is_array()) bad("messages", "'messages' must be a list of {role, content} objects");
  if (ms.empty()) bad("messages", "'messages' is empty");
  std::vector<ChatMessage> messages;
  size_t text_bytes = 0;
  for (size_t i = 0; i < ms.size(); ++i) {
    const std::string where = "messages[" + std::to_string(i) + "]";
    const json& m = ms[i];
    if (!m.is_object()) bad("messages", "'" + where + "' must be an object with 'role' and 'content'");
    if (!given(m, "role") || !m["role"].is_string()) bad("messages", "'" + where + ".role' must be a string");
    if (!given(m, "content") || !m["content"].is_string())
      bad("messages", "'" + where + ".content' must be a string");
    for (auto it = m.begin(); it != m.end(); ++it)
      if (it.key() != "role" && it.key() != "content")
        bad("messages", "'" + where + "." + it.key() + "' is not supported (the Mistral instruct format has only roles and text)");
    text_bytes += m["content"].get_ref<const std::string&>().size();
    check_text_size(text_bytes, context, per_token, "messages");
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  if (messages.back().role != "user")
    bad("messages", "the last message must have role 'user', not '" + messages.back().role + "'");
  try {
    r.prompt = encode_chat(tok, messages);
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind("chat: ", 0) == 0) msg = msg.substr(6);
    bad("messages", msg);
  }
  fit_context(r, context, "messages");
  return r;
}

namespace {

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json head(const ResponseMeta& m, const char* object) {
  return {{"id", m.id}, {"object", object}, {"created", m.created}, {"model", m.model}};
}

json finish_or_null(const std::string& f) { return f.empty() ? json(nullptr) : json(f); }

}  // namespace

json response_json(const ResponseMeta& m, const std::string& text, const std::string& finish_reason, const Usage& u,
                   const json& logprobs) {
  json r = head(m, m.chat ? "chat.completion" : "text_completion");
  json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", logprobs}};
  if (m.chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
  else choice["text"] = text;
  r["choices"] = json::array({choice});
  r["usage"] = usage_json(u);
  return r;
}

json chunk_json(const ResponseMeta& m, const std::string& text, const std::string& finish_reason, bool first,
                const json& logprobs) {
  json r = head(m, m.chat ? "chat.completion.chunk" : "text_completion");
  json choice = {{"index", 0}, {"finish_reason", finish_or_null(finish_reason)}, {"logprobs", logprobs}};
  if (m.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && finish_reason.empty())) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  r["choices"] = json::array({choice});
  return r;
}

json usage_chunk_json(const ResponseMeta& m, const Usage& u) {
  json r = head(m, m.chat ? "chat.completion.chunk" : "text_completion");
  r["choices"] = json::array();
  r["usage"] = usage_json(u);
  return r;
}

}  // namespace mx::server
