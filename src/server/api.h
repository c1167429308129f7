// The OpenAI-compatible request and response JSON of `mixtral serve`: parsing and validating
// /v1/completions and /v1/chat/completions bodies into plain structs, and building the
// response, stream-chunk and error objects. No HTTP and no engine here.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/json_constraint.h"
#include "runtime/sampling.h"

namespace mx {
class Tokenizer;
}

namespace mx::server {

// An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param;  // param: the offending field, "" for none
  std::string code;         // OpenAI's error code ("invalid_api_key", ...), "" for null
  ApiError(int status, std::string message, std::string param = "",
           std::string type = "invalid_request_error");
};
nlohmann::json error_json(const ApiError& e);

struct GenerationRequest {
  bool chat = false;
  std::vector<int> prompt;          // BOS included
  int max_tokens = 16;
  SamplingParams sampling;          // the engine's defaults unless given
  std::vector<std::string> stop;    // non-empty strings
  bool stream = false;
  bool include_usage = false;       // stream_options.include_usage: a last chunk with usage
  int n = 1;                        // choices; the server bounds it by its slots
  // Log-probabilities: alternatives per token (completions `logprobs: N`, chat `top_logprobs`);
  // -1: none (completions `logprobs` absent, chat `logprobs` false).
  int logprobs = -1;
  bool echo = false;                // completions: the prompt's text (and scores) first
  bool score_only = false;          // echo with max_tokens 0: nothing is generated
  LogitAdjust adjust;               // logit_bias, presence_penalty, frequency_penalty
  std::shared_ptr<const JsonSchema> json;  // response_format json_object / json_schema
};

// Throw ApiError (status 400) naming the field for invalid JSON, a missing or ill-typed field,
// a number out of range, an empty prompt, unknown token ids, n != 1, or a prompt + max_tokens
// over `context`; and for every field the server does not honour (tools, suffix, audio, ...)
// or does not know, as OpenAI itself refuses unrecognized arguments: nothing is silently
// dropped. docs/server.md lists the fields.
//
// Work stays proportional to the context, not to the body: the JSON may hold at most
// max_json_values(context) values, nested 64 deep, and prompt text longer than
// context x max_bytes_per_token (see below; 0: computed from `tok`) is refused before it is
// tokenized, as it cannot fit whatever its tokens.
GenerationRequest parse_completion_request(const std::string& body, const Tokenizer& tok, int context,
                                           size_t max_bytes_per_token = 0);
GenerationRequest parse_chat_request(const std::string& body, const Tokenizer& tok, int context,
                                     size_t max_bytes_per_token = 0);

// The most text one token stands for: the longest vocabulary entry with "▁" counted as the one
// space it is (Mistral: 25 bytes). Exact for a byte-fallback tokenizer with the identity
// normalizer (Mistral's, and what GGUF vocabularies are loaded with); 4096 without byte pieces.
size_t max_bytes_per_token(const Tokenizer& tok);
// The largest body a request that fits `context` can need (every text byte escaped), within
// [1 MiB, 64 MiB]; bigger bodies are refused on the wire (Mixtral at 32768 tokens: ~9 MiB).
size_t max_body_bytes(int context, size_t per_token);
size_t max_json_values(int context);

// What every response and chunk of one request shares.
struct ResponseMeta {
  bool chat = false;
  std::string id;     // "cmpl-…" / "chatcmpl-…"
  int64_t created = 0;
  std::string model;
};
struct Usage {
  int prompt_tokens = 0, completion_tokens = 0;
};

// The whole (non-streamed) response.
// `logprobs` is choices[0].logprobs (null unless asked for).
nlohmann::json response_json(const ResponseMeta& m, const std::string& text,
                             const std::string& finish_reason, const Usage& u,
                             const nlohmann::json& logprobs = nullptr);
// One stream chunk: `text` as choices[0].text / delta.content; finish_reason null when empty.
// `first` adds delta.role for chat.
nlohmann::json chunk_json(const ResponseMeta& m, const std::string& text,
                          const std::string& finish_reason, bool first,
                          const nlohmann::json& logprobs = nullptr);
// The extra last chunk with empty choices and usage (stream_options.include_usage).
nlohmann::json usage_chunk_json(const ResponseMeta& m, const Usage& u);

// Serializes for the wire; invalid UTF-8 (never expected) becomes U+FFFD instead of throwing.
std::string dump(const nlohmann::json& j);

}  // namespace mx::server
