#include "runtime/json_constraint.h"

#include <algorithm>
#include <cstring>

#include "runtime/tokenizer.h"

namespace mx {

using nlohmann::json;

namespace {

// Lexer modes. Structural modes skip whitespace; the others are inside a token.
enum Mode : uint8_t {
  kValue,     // a value must start (lex.node: its schema)
  kArrFirst,  // after '[': a value or ']'
  kObjFirst,  // after '{': a key or '}'
  kObjKey,    // after ',' in an object: a key
  kColon,     // after a key
  kAfter,     // after a value inside a container: ',' or the closing bracket
  kDone,      // the document is complete
  kKey, kKeyEsc, kKeyHex,
  kStr, kStrEsc, kStrHex,
  kNum, kLit, kEnum,
};

// Number states: after '-', after a leading 0, in the integer digits, after '.', in the
// fraction, after 'e', after the exponent's sign, in the exponent.
enum NumState : uint8_t { kNSign, kNZero, kNInt, kNDot, kNFrac, kNE, kNESign, kNExp };
bool num_complete(uint8_t s) { return s == kNZero || s == kNInt || s == kNFrac || s == kNExp; }

const char* const kLiterals[] = {"true", "false", "null"};

bool is_ws(uint8_t c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
bool is_hex(uint8_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

uint64_t low_bits(size_t n) { return n >= 64 ? ~0ULL : (1ULL << n) - 1; }

// ---- schema compilation ----

uint8_t type_bit(const json& t) {
  if (!t.is_string()) throw JsonSchemaError("type", "'type' must be a type name or a list of them");
  const std::string s = t.get<std::string>();
  if (s == "object") return kJsonObject;
  if (s == "array") return kJsonArray;
  if (s == "string") return kJsonString;
  if (s == "number") return kJsonNumber | kJsonInteger;  // an integer is a number
  if (s == "integer") return kJsonInteger;
  if (s == "boolean") return kJsonBoolean;
  if (s == "null") return kJsonNull;
  throw JsonSchemaError("type", "unknown type '" + s + "' in the JSON schema");
}

int compile_node(const json& s, JsonSchema& out, int depth) {
  if (depth > kJsonMaxDepth)
    throw JsonSchemaError("properties", "the JSON schema nests more than " + std::to_string(kJsonMaxDepth) + " levels");
  if (s.is_boolean()) {
    if (!s.get<bool>()) throw JsonSchemaError("false", "the schema 'false' allows no value");
    return 0;
  }
  if (!s.is_object()) throw JsonSchemaError("schema", "a JSON schema must be an object");
  const int id = static_cast<int>(out.nodes.size());
  out.nodes.emplace_back();
  JsonSchemaNode n;
  static const char* const kIgnored[] = {"title", "description", "$schema", "$id", "$comment", "default", "examples"};
  static const char* const kHandled[] = {"type", "properties", "required", "additionalProperties", "items", "enum", "const"};
  for (auto it = s.begin(); it != s.end(); ++it) {
    bool known = false;
    for (const char* k : kIgnored) known |= it.key() == k;
    for (const char* k : kHandled) known |= it.key() == k;
    if (!known) throw JsonSchemaError(it.key(), "the JSON schema keyword '" + it.key() + "' is not supported");
  }
  if (s.contains("type")) {
    const json& t = s["type"];
    n.types = 0;
    if (t.is_array()) {
      for (const json& x : t) n.types |= type_bit(x);
    } else {
      n.types = type_bit(t);
    }
    if (n.types == 0) throw JsonSchemaError("type", "'type' lists no type");
  }
  if (s.contains("enum") || s.contains("const")) {
    if (s.contains("enum") && s.contains("const")) throw JsonSchemaError("const", "'enum' and 'const' together are not supported");
    const json values = s.contains("const") ? json::array({s["const"]}) : s["enum"];
    if (!values.is_array() || values.empty()) throw JsonSchemaError("enum", "'enum' must be a non-empty list");
    if (values.size() > static_cast<size_t>(kJsonMaxEnum))
      throw JsonSchemaError("enum", "'enum' has more than " + std::to_string(kJsonMaxEnum) + " values");
    for (const json& v : values) n.enum_texts.push_back(v.dump());
  }
  if (s.contains("properties")) {
    const json& p = s["properties"];
    if (!p.is_object()) throw JsonSchemaError("properties", "'properties' must be an object");
    if (p.size() > static_cast<size_t>(kJsonMaxProps))
      throw JsonSchemaError("properties", "more than " + std::to_string(kJsonMaxProps) + " properties in one object");
    for (auto it = p.begin(); it != p.end(); ++it) {
      for (unsigned char c : it.key())
        if (c < 0x20 || c == '"' || c == '\\')
          throw JsonSchemaError("properties", "property names with quotes, backslashes or control characters are not supported");
      n.prop_names.push_back(it.key());
      n.prop_nodes.push_back(compile_node(it.value(), out, depth + 1));
    }
  }
  if (s.contains("required")) {
    const json& r = s["required"];
    if (!r.is_array()) throw JsonSchemaError("required", "'required' must be a list of property names");
    for (const json& x : r) {
      size_t i = 0;
      while (i < n.prop_names.size() && !(x.is_string() && x.get<std::string>() == n.prop_names[i])) ++i;
      if (i == n.prop_names.size())
        throw JsonSchemaError("required", "'required' names " + x.dump() + ", which is not in 'properties'");
      n.required |= 1ULL << i;
    }
  }
  if (s.contains("additionalProperties")) {
    const json& a = s["additionalProperties"];
    if (!a.is_boolean()) throw JsonSchemaError("additionalProperties", "only true or false is supported for 'additionalProperties'");
    n.additional = a.get<bool>();
  }
  if (s.contains("items")) n.items = compile_node(s["items"], out, depth + 1);
  out.nodes[static_cast<size_t>(id)] = std::move(n);
  return id;
}

}  // namespace

JsonSchema compile_json_schema(const json& schema) {
  JsonSchema out;
  out.nodes.emplace_back();  // 0: any
  out.root = compile_node(schema, out, 0);
  return out;
}

JsonSchema json_object_schema() {
  JsonSchema out;
  out.nodes.emplace_back();
  JsonSchemaNode obj;
  obj.types = kJsonObject;
  out.nodes.push_back(obj);
  out.root = 1;
  return out;
}

// ---- the automaton ----

JsonMachine::JsonMachine(std::shared_ptr<const JsonSchema> schema) : schema_(std::move(schema)) {
  nodes_ = schema_->nodes.data();
  lex_.mode = kValue;
  lex_.node = schema_->root;
}

bool JsonMachine::finish_value() {
  lex_.mode = depth_ == 0 ? kDone : kAfter;
  lex_.ws = 0;
  return true;
}

bool JsonMachine::close_container(uint8_t c) {
  const Frame& f = stack_[depth_ - 1];
  if (f.is_array != (c == ']')) return false;
  if (!f.is_array) {
    const uint64_t req = nodes_[f.node].required;
    if ((f.seen & req) != req) return false;  // a required property is still missing
  }
  --depth_;
  return finish_value();
}

bool JsonMachine::start_value(uint8_t c, int node) {
  const JsonSchemaNode& n = nodes_[node];
  lex_.node = node;
  lex_.ws = 0;
  if (!n.enum_texts.empty()) {
    lex_.mode = kEnum;
    lex_.pos = 0;
    lex_.mask = low_bits(n.enum_texts.size());
    return step(c);
  }
  if (c == '{' || c == '[') {
    const bool arr = c == '[';
    if (!(n.types & (arr ? kJsonArray : kJsonObject)) || depth_ == kJsonMaxDepth) return false;
    stack_[depth_++] = Frame{0, node, -1, static_cast<uint8_t>(arr)};
    lex_.mode = arr ? kArrFirst : kObjFirst;
    return true;
  }
  if (c == '"') {
    if (!(n.types & kJsonString)) return false;
    lex_.mode = kStr;
    lex_.utf8_need = 0;
    return true;
  }
  if (c == '-' || is_digit(c)) {
    if (!(n.types & (kJsonNumber | kJsonInteger))) return false;
    lex_.mode = kNum;
    lex_.sub = c == '-' ? kNSign : c == '0' ? kNZero : kNInt;
    lex_.pos = 1;
    return true;
  }
  for (uint8_t i = 0; i < 3; ++i) {
    if (c != static_cast<uint8_t>(kLiterals[i][0])) continue;
    if (!(n.types & (i == 2 ? kJsonNull : kJsonBoolean))) return false;
    lex_.mode = kLit;
    lex_.sub = i;
    lex_.pos = 1;
    return true;
  }
  return false;
}

// A byte inside a string or key: no control characters, and well-formed UTF-8.
bool JsonMachine::string_byte(uint8_t c) {
  if (lex_.utf8_need > 0) {
    if ((c & 0xC0) != 0x80) return false;
    --lex_.utf8_need;
    return true;
  }
  if (c < 0x20) return false;
  if (c < 0x80) return true;
  if (c >= 0xC2 && c <= 0xDF) lex_.utf8_need = 1;
  else if (c >= 0xE0 && c <= 0xEF) lex_.utf8_need = 2;
  else if (c >= 0xF0 && c <= 0xF4) lex_.utf8_need = 3;
  else return false;
  return true;
}

bool JsonMachine::step(uint8_t c) {
  const uint8_t mode = lex_.mode;
  if (mode <= kDone && is_ws(c)) {
    if (mode == kDone) return false;  // nothing follows a complete document but EOS
    // Before the document one space at most (a first token such as "▁{"); models otherwise
    // like to pad the start.
    return ++lex_.ws <= (depth_ == 0 && mode == kValue ? 1 : kJsonMaxWhitespace);
  }
  switch (mode) {
    case kValue: return start_value(c, lex_.node);
    case kArrFirst:
      if (c == ']') return close_container(c);
      return start_value(c, nodes_[stack_[depth_ - 1].node].items);
    case kObjFirst:
      if (c == '}') return close_container(c);
      [[fallthrough]];
    case kObjKey: {
      if (c != '"') return false;
      const Frame& f = stack_[depth_ - 1];
      const JsonSchemaNode& n = nodes_[f.node];
      lex_.mode = kKey;
      lex_.pos = 0;
      lex_.utf8_need = 0;
      // Without other keys allowed, only properties not given yet can be started.
      lex_.mask = low_bits(n.prop_names.size()) & (n.additional ? ~0ULL : ~f.seen);
      lex_.ws = 0;
      return true;
    }
    case kColon:
      if (c != ':') return false;
      {
        const Frame& f = stack_[depth_ - 1];
        lex_.mode = kValue;
        lex_.node = f.key >= 0 ? nodes_[f.node].prop_nodes[static_cast<size_t>(f.key)] : 0;
        lex_.ws = 0;
      }
      return true;
    case kAfter: {
      Frame& f = stack_[depth_ - 1];
      if (c == ',') {
        lex_.ws = 0;
        if (f.is_array) {
          lex_.mode = kValue;
          lex_.node = nodes_[f.node].items;
          return true;
        }
        const JsonSchemaNode& n = nodes_[f.node];
        // A comma with no key left to give would be a dead end.
        if (!n.additional && (f.seen | ~low_bits(n.prop_names.size())) == ~0ULL) return false;
        lex_.mode = kObjKey;
        return true;
      }
      if (c == '}' || c == ']') return close_container(c);
      return false;
    }
    case kDone: return false;
    case kKey: {
      Frame& f = stack_[depth_ - 1];
      const JsonSchemaNode& n = nodes_[f.node];
      if (c == '"' && lex_.utf8_need == 0) {
        int match = -1;
        for (size_t i = 0; i < n.prop_names.size() && match < 0; ++i)
          if ((lex_.mask >> i & 1) && n.prop_names[i].size() == lex_.pos) match = static_cast<int>(i);
        if (match < 0 && !n.additional) return false;
        if (match >= 0 && (f.seen >> match & 1)) return false;  // a property given twice
        f.key = static_cast<int16_t>(match);
        if (match >= 0) f.seen |= 1ULL << match;
        lex_.mode = kColon;
        lex_.ws = 0;
        return true;
      }
      if (c == '\\' && lex_.utf8_need == 0) {
        if (!n.additional) return false;  // property names have no escapes
        lex_.mask = 0;                     // an escaped key is treated as another key
        lex_.mode = kKeyEsc;
        return true;
      }
      if (!string_byte(c)) return false;
      uint64_t keep = 0;
      for (uint64_t m = lex_.mask; m; m &= m - 1) {
        const int i = __builtin_ctzll(m);
        const std::string& name = n.prop_names[static_cast<size_t>(i)];
        if (lex_.pos < name.size() && static_cast<uint8_t>(name[lex_.pos]) == c) keep |= 1ULL << i;
      }
      lex_.mask = keep;
      ++lex_.pos;
      return n.additional || keep != 0;
    }
    case kStr:
      if (lex_.utf8_need == 0 && c == '"') return finish_value();
      if (lex_.utf8_need == 0 && c == '\\') {
        lex_.mode = kStrEsc;
        return true;
      }
      return string_byte(c);
    case kKeyEsc:
    case kStrEsc:
      if (c == 'u') {
        lex_.mode = mode == kKeyEsc ? kKeyHex : kStrHex;
        lex_.sub = 0;
        return true;
      }
      if (!std::strchr("\"\\/bfnrt", c) || c == 0) return false;
      lex_.mode = mode == kKeyEsc ? kKey : kStr;
      return true;
    case kKeyHex:
    case kStrHex:
      if (!is_hex(c)) return false;
      if (++lex_.sub == 4) lex_.mode = mode == kKeyHex ? kKey : kStr;
      return true;
    case kNum: {
      const bool integer_only = !(nodes_[lex_.node].types & kJsonNumber);
      uint8_t& s = lex_.sub;
      if (is_digit(c)) {
        // lex.pos counts the digits of the integer part or of the exponent: capped so that
        // every parser reads the number as a finite double (nlohmann refuses 1e400).
        switch (s) {
          case kNSign: s = c == '0' ? kNZero : kNInt; lex_.pos = 1; return true;
          case kNZero: break;  // no leading zeros: the number ends here
          case kNInt: return ++lex_.pos <= kJsonMaxIntDigits;
          case kNFrac: return true;
          case kNExp: return ++lex_.pos <= kJsonMaxExpDigits;
          case kNDot: s = kNFrac; return true;
          case kNE: case kNESign: s = kNExp; lex_.pos = 1; return true;
        }
      } else if (c == '.' && (s == kNZero || s == kNInt) && !integer_only) {
        s = kNDot;
        return true;
      } else if ((c == 'e' || c == 'E') && (s == kNZero || s == kNInt || s == kNFrac) && !integer_only) {
        s = kNE;
        return true;
      } else if ((c == '+' || c == '-') && s == kNE) {
        s = kNESign;
        return true;
      }
      if (!num_complete(s)) return false;
      finish_value();
      return step(c);  // the byte after a number belongs to what follows it
    }
    case kLit: {
      const char* lit = kLiterals[lex_.sub];
      if (c != static_cast<uint8_t>(lit[lex_.pos])) return false;
      if (lit[++lex_.pos] == 0) return finish_value();
      return true;
    }
    case kEnum: {
      const std::vector<std::string>& texts = nodes_[lex_.node].enum_texts;
      uint64_t keep = 0;
      bool complete = false;
      for (uint64_t m = lex_.mask; m; m &= m - 1) {
        const int i = __builtin_ctzll(m);
        const std::string& t = texts[static_cast<size_t>(i)];
        if (lex_.pos < t.size() && static_cast<uint8_t>(t[lex_.pos]) == c) keep |= 1ULL << i;
        complete |= t.size() == lex_.pos;
      }
      if (keep) {
        lex_.mask = keep;
        ++lex_.pos;
        return true;
      }
      if (!complete || lex_.pos == 0) return false;
      finish_value();
      return step(c);
    }
  }
  return false;
}

bool JsonMachine::feed(uint8_t c) { return step(c); }

bool JsonMachine::feed(std::string_view s) {
  for (char c : s)
    if (!step(static_cast<uint8_t>(c))) return false;
  return true;
}

bool JsonMachine::can_end() const {
  if (lex_.mode == kDone) return true;
  if (depth_ != 0) return false;
  if (lex_.mode == kNum) return num_complete(lex_.sub);
  if (lex_.mode == kEnum) {
    for (uint64_t m = lex_.mask; m; m &= m - 1)
      if (nodes_[lex_.node].enum_texts[static_cast<size_t>(__builtin_ctzll(m))].size() == lex_.pos) return true;
  }
  return false;
}

bool JsonMachine::done() const { return lex_.mode == kDone; }

size_t JsonMachine::accepted_prefix(std::string_view s) const {
  // Copies only the live part of the stack: a token is a few bytes, the copy must be as cheap.
  JsonMachine t;
  t.nodes_ = nodes_;
  t.lex_ = lex_;
  t.depth_ = depth_;
  std::memcpy(t.stack_, stack_, sizeof(Frame) * static_cast<size_t>(depth_));
  for (size_t i = 0; i < s.size(); ++i)
    if (!t.step(static_cast<uint8_t>(s[i]))) return i;
  return s.size();
}

std::vector<std::string> token_texts(const Tokenizer& tok) {
  std::vector<std::string> out(static_cast<size_t>(tok.vocab_size()));
  for (int id = 0; id < tok.vocab_size(); ++id) {
    if (tok.is_control(id) || id == tok.unk_id()) continue;
    const int b = tok.byte_value(id);
    if (b >= 0) {
      out[static_cast<size_t>(id)] = std::string(1, static_cast<char>(b));
      continue;
    }
    std::string p = tok.piece(id);
    std::string t;
    for (size_t i = 0; i < p.size(); ++i) {
      if (p.compare(i, 3, "\u2581") == 0) {
        t += ' ';
        i += 2;
      } else {
        t += p[i];
      }
    }
    out[static_cast<size_t>(id)] = std::move(t);
  }
  return out;
}

JsonVocab json_vocab(std::vector<std::string> texts) {
  JsonVocab v;
  v.string_safe.assign(texts.size(), 0);
  for (size_t id = 0; id < texts.size(); ++id) {
    const std::string& t = texts[id];
    if (t.empty()) continue;
    int need = 0;
    bool ok = true;
    for (unsigned char c : t) {
      if (need > 0) {
        ok = (c & 0xC0) == 0x80;
        --need;
      } else if (c < 0x20 || c == '"' || c == '\\') {
        ok = false;
      } else if (c >= 0x80) {
        need = c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2 : c >= 0xF0 && c <= 0xF4 ? 3 : -1;
        ok = need > 0;
      }
      if (!ok) break;
    }
    v.string_safe[id] = ok && need == 0;
  }
  v.order.resize(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) v.order[i] = static_cast<int>(i);
  std::sort(v.order.begin(), v.order.end(), [&](int a, int b) { return texts[static_cast<size_t>(a)] < texts[static_cast<size_t>(b)]; });
  v.texts = std::move(texts);
  return v;
}

bool JsonMachine::in_plain_string() const { return lex_.mode == kStr && lex_.utf8_need == 0; }

void json_allowed_tokens(const JsonMachine& m, const JsonVocab& v, int eos_id, std::vector<uint8_t>& allowed) {
  const std::vector<std::string>& texts = v.texts;
  allowed.assign(texts.size(), 0);
  bool first_ok[256];
  for (int c = 0; c < 256; ++c) {
    const char ch = static_cast<char>(c);
    first_ok[c] = m.accepts(std::string_view(&ch, 1));
  }
  const bool plain = m.in_plain_string();
  std::string_view dead;  // a rejected prefix: every token starting with it is rejected too
  for (int i : v.order) {
    const size_t id = static_cast<size_t>(i);
    const std::string& t = texts[id];
    if (t.empty()) continue;
    if (!dead.empty() && std::string_view(t).substr(0, dead.size()) == dead) continue;
    if (!first_ok[static_cast<uint8_t>(t[0])]) {
      dead = std::string_view(t).substr(0, 1);
      continue;
    }
    if (t.size() == 1 || (plain && v.string_safe[id])) {
      allowed[id] = 1;
      continue;
    }
    const size_t n = m.accepted_prefix(t);
    if (n == t.size()) allowed[id] = 1;
    else dead = std::string_view(t).substr(0, n + 1);
  }
  if (eos_id >= 0 && static_cast<size_t>(eos_id) < texts.size()) allowed[static_cast<size_t>(eos_id)] = m.can_end();
}

}  // namespace mx
