#include "formats/json_input.h"

#include "formats/error.h"

namespace mx {

namespace {

using json = nlohmann::json;

// nlohmann's parse errors quote the token read so far, which can be most of a huge file.
std::string clipped(const std::string& s, size_t n) {
  return s.size() <= n ? s : s.substr(0, n) + "...";
}

// Appends `v` to `out` until `out` passes `limit`; depth is capped so that a value built in
// code (no parse limit) cannot recurse deeply either.
void append_excerpt(const json& v, std::string& out, size_t limit, int depth) {
  if (out.size() > limit) return;
  if (depth > 8) {
    out += "...";
    return;
  }
  const auto dump = [](const json& x) { return x.dump(-1, ' ', false, json::error_handler_t::replace); };
  switch (v.type()) {
    case json::value_t::array: {
      out += '[';
      bool first = true;
      for (const json& e : v) {
        if (out.size() > limit) break;
        if (!first) out += ',';
        first = false;
        append_excerpt(e, out, limit, depth + 1);
      }
      out += ']';
      break;
    }
    case json::value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (out.size() > limit) break;
        if (!first) out += ',';
        first = false;
        out += dump(json(clipped(it.key(), limit)));
        out += ':';
        append_excerpt(it.value(), out, limit, depth + 1);
      }
      out += '}';
      break;
    }
    case json::value_t::string:
      out += dump(json(clipped(v.get_ref<const std::string&>(), limit)));
      break;
    default:
      out += dump(v);
  }
}

}  // namespace

json parse_untrusted_json(const char* begin, const char* end, const std::string& source) {
  // The callback sees the depth of every value as it opens; throwing stops the parse there,
  // before a deep value exists to be printed or destroyed.
  const json::parser_callback_t limit_depth = [&](int depth, json::parse_event_t ev, json&) {
    if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth)
      fail(source + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  };
  try {
    return json::parse(begin, end, limit_depth);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(source + ": not valid JSON: " + clipped(e.what(), 200));
  }
}

json parse_untrusted_json(const std::string& text, const std::string& source) {
  return parse_untrusted_json(text.data(), text.data() + text.size(), source);
}

std::string json_excerpt(const json& v) {
  std::string out;
  append_excerpt(v, out, kJsonExcerptChars, 0);
  if (out.size() > kJsonExcerptChars) out = out.substr(0, kJsonExcerptChars) + "...";
  return out;
}

int64_t json_int_in_range(const json& v, int64_t lo, int64_t hi, const std::string& source,
                          const std::string& field) {
  if (!v.is_number_integer()) fail(source + ": " + field + " must be an integer, not " + json_excerpt(v));
  // Unsigned values above INT64_MAX would wrap in get<int64_t>; compare them unsigned.
  const bool ok = v.is_number_unsigned()
                      ? hi >= 0 && v.get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                            (lo <= 0 || v.get<uint64_t>() >= static_cast<uint64_t>(lo))
                      : v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
  if (!ok)
    fail(source + ": " + field + " " + json_excerpt(v) + " out of range [" + std::to_string(lo) + ", " +
         std::to_string(hi) + "]");
  return v.get<int64_t>();
}

}  // namespace mx
