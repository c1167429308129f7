// JSON from files we did not write (checkpoint headers and configs, the cache manifest):
// parsed with a nesting limit, and shown in error messages only as a short excerpt, so a
// hostile file can neither overflow the stack (nlohmann's serializer recurses per level) nor
// turn an error message into a copy of itself.
#pragma once
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace mx {

// Real headers and configs nest 3 or 4 levels; the limit leaves room and bounds recursion.
constexpr int kMaxJsonDepth = 64;
// Characters of a value an error message shows before it is cut with "...".
constexpr size_t kJsonExcerptChars = 48;

// Parses [begin, end); throws mx::Error naming `source` when the text is not JSON or nests
// deeper than kMaxJsonDepth.
nlohmann::json parse_untrusted_json(const char* begin, const char* end, const std::string& source);
nlohmann::json parse_untrusted_json(const std::string& text, const std::string& source);

// `v` as JSON text, cut to about kJsonExcerptChars: for error messages. Never recurses more
// than a few levels or walks more of `v` than it prints.
std::string json_excerpt(const nlohmann::json& v);

// An integer field in [lo, hi], read without narrowing first: "<source>: <field> <value> out
// of range [lo, hi]" otherwise (or "must be an integer" for a non-integer).
int64_t json_int_in_range(const nlohmann::json& v, int64_t lo, int64_t hi, const std::string& source,
                          const std::string& field);

}  // namespace mx
