// Constrained decoding for JSON output (the server's response_format): a byte-level pushdown
// automaton that accepts exactly the prefixes of JSON documents (optionally of a JSON schema
// subset), and the vocabulary mask built from it at each step.
//
// Schema subset (everything else is refused by compile_json_schema, naming the keyword):
//   type (one name or a list of object/array/string/number/integer/boolean/null), properties,
//   required, additionalProperties (true/false, or a schema for other keys is refused), items,
//   enum, const, and the annotations title/description/$schema/$id/$comment/default/examples.
// enum/const values must be produced as their compact JSON text (nlohmann's dump()).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace mx {

class Tokenizer;

enum JsonType : uint8_t {
  kJsonObject = 1, kJsonArray = 2, kJsonString = 4, kJsonNumber = 8, kJsonInteger = 16,
  kJsonBoolean = 32, kJsonNull = 64, kJsonAny = 127,
};

// One schema node; node 0 of every JsonSchema is "any value".
struct JsonSchemaNode {
  uint8_t types = kJsonAny;
  std::vector<std::string> enum_texts;   // compact JSON of each allowed value; empty: no enum
  std::vector<std::string> prop_names;   // raw bytes (no quotes, escapes or control characters)
  std::vector<int> prop_nodes;
  uint64_t required = 0;                 // bit i: prop_names[i] is required
  bool additional = true;                // other keys allowed (their values: any)
  int items = 0;                         // node of array items
};

struct JsonSchema {
  std::vector<JsonSchemaNode> nodes;  // nodes[0]: any value
  int root = 0;
};

// A schema outside the subset; `keyword` names the first unsupported keyword or value.
struct JsonSchemaError : std::runtime_error {
  std::string keyword;
  JsonSchemaError(std::string kw, const std::string& msg) : std::runtime_error(msg), keyword(std::move(kw)) {}
};

// Limits that keep the automaton's state small and every bit set in a uint64_t.
constexpr int kJsonMaxDepth = 32;      // nesting of objects and arrays
constexpr int kJsonMaxProps = 64;      // properties per object schema
constexpr int kJsonMaxEnum = 64;       // enum values per node
constexpr int kJsonMaxWhitespace = 16; // whitespace bytes in a row (else a model can idle forever)
constexpr uint32_t kJsonMaxIntDigits = 20;  // digits before the point: numbers stay finite doubles
constexpr uint32_t kJsonMaxExpDigits = 2;   // exponent digits

JsonSchema compile_json_schema(const nlohmann::json& schema);
// response_format json_object: any JSON object.
JsonSchema json_object_schema();

class JsonMachine {
 public:
  explicit JsonMachine(std::shared_ptr<const JsonSchema> schema);
  // Consumes one byte; false (and the state is then unspecified) if no document continues so.
  bool feed(uint8_t c);
  // All bytes, or false at the first that cannot continue (the state is then unspecified).
  bool feed(std::string_view s);
  // The bytes so far form a complete document (EOS may come now).
  bool can_end() const;
  // Complete and nothing may follow but EOS.
  bool done() const;
  // Inside a string value between characters: string-safe text leaves the state unchanged.
  bool in_plain_string() const;

  // For token masking: whether `s` can follow the current state, without changing it.
  bool accepts(std::string_view s) const { return accepted_prefix(s) == s.size(); }
  // How many leading bytes of `s` can follow the current state (s.size() when all can).
  size_t accepted_prefix(std::string_view s) const;

  struct Frame {
    uint64_t seen;  // object: properties already given
    int32_t node;
    int16_t key;    // object: property of the value being read, -1 for another key
    uint8_t is_array;
  };
  struct Lex {
    uint8_t mode = 0, sub = 0, utf8_need = 0, ws = 0;
    int32_t node = 0;
    uint32_t pos = 0;
    uint64_t mask = 0;
  };

 private:
  JsonMachine() = default;  // accepts(): a scratch copy without touching the shared_ptr
  bool step(uint8_t c);
  bool start_value(uint8_t c, int node);
  bool finish_value();
  bool close_container(uint8_t c);
  bool string_byte(uint8_t c);

  std::shared_ptr<const JsonSchema> schema_;
  const JsonSchemaNode* nodes_ = nullptr;
  Lex lex_;
  int depth_ = 0;
  Frame stack_[kJsonMaxDepth];
};

// What each token id stands for as output bytes: "▁" as a space, <0xXX> as its byte; control
// and unknown tokens are empty (never allowed in JSON output).
std::vector<std::string> token_texts(const Tokenizer& tok);

// Token texts with what the mask precomputes from them: string_safe[id] = 1 when the text is
// whole UTF-8 characters without control characters, quotes or backslashes, i.e. leaves the
// inside of a string as it was (most of the vocabulary: inside strings they need no run).
struct JsonVocab {
  std::vector<std::string> texts;
  std::vector<uint8_t> string_safe;
  std::vector<int> order;  // ids by text, so tokens sharing a rejected prefix are skipped together
};
JsonVocab json_vocab(std::vector<std::string> texts);

// The vocabulary mask for one step: allowed[id] = 1 if token id's text can follow `m` (EOS:
// if m.can_end()). Tokens are pre-filtered on their first byte (one automaton step per byte
// value), and in text order, so once a prefix is rejected the tokens that share it are skipped:
// only plausible tokens are run through the automaton in full.
void json_allowed_tokens(const JsonMachine& m, const JsonVocab& v, int eos_id, std::vector<uint8_t>& allowed);

}  // namespace mx
