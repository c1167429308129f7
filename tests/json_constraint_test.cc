// The JSON automaton behind response_format: it accepts exactly the prefixes of JSON documents
// (checked against nlohmann's parser on generated and mutated documents), enforces the schema
// subset, refuses the rest naming the keyword, and masks the real Mistral vocabulary so that
// random walks over allowed tokens always end in a document that parses.
#include "runtime/json_constraint.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <regex>

#include "runtime/sampling.h"
#include "runtime/tokenizer.h"
#include "test_util.h"

namespace mx {
namespace {

using nlohmann::json;

std::shared_ptr<const JsonSchema> any_schema() { return std::make_shared<JsonSchema>(JsonSchema{{JsonSchemaNode{}}, 0}); }
std::shared_ptr<const JsonSchema> schema_of(const json& s) { return std::make_shared<JsonSchema>(compile_json_schema(s)); }

// Whether the machine takes the whole text, and whether it is then complete.
std::pair<bool, bool> run(const std::shared_ptr<const JsonSchema>& s, const std::string& text) {
  JsonMachine m(s);
  if (!m.feed(text)) return {false, false};
  return {true, m.can_end()};
}

json random_value(Rng& rng, int depth) {
  const int kind = static_cast<int>(rng.next() % (depth > 3 ? 5 : 7));
  switch (kind) {
    case 0: return nullptr;
    case 1: return rng.next() % 2 == 0;
    case 2: return static_cast<int64_t>(rng.next() % 2001) - 1000;
    case 3: return (rng.uniform() - 0.5) * 1e6;
    case 4: {
      std::string s;
      const char* alphabet[] = {"a", "Z", " ", "\"", "\\", "\n", "é", "€", "😀", "/", "\t", "{"};
      for (int i = static_cast<int>(rng.next() % 6); i > 0; --i) s += alphabet[rng.next() % 12];
      return s;
    }
    case 5: {
      json a = json::array();
      for (int i = static_cast<int>(rng.next() % 4); i > 0; --i) a.push_back(random_value(rng, depth + 1));
      return a;
    }
    default: {
      json o = json::object();
      for (int i = static_cast<int>(rng.next() % 4); i > 0; --i) o["k" + std::to_string(rng.next() % 5)] = random_value(rng, depth + 1);
      return o;
    }
  }
}

TEST(JsonMachine, AcceptsEveryDocumentAndEveryPrefixOfIt) {
  Rng rng(7);
  for (int doc = 0; doc < 500; ++doc) {
    const json v = random_value(rng, 0);
    const std::string text = doc % 2 ? v.dump() : v.dump(2);  // compact and pretty-printed
    JsonMachine m(any_schema());
    for (size_t i = 0; i < text.size(); ++i) {
      ASSERT_TRUE(m.feed(static_cast<uint8_t>(text[i]))) << text << " at " << i;
      // A number at the top level is complete at every digit; nothing else is before its end.
      if (i + 1 < text.size() && !v.is_number()) {
        ASSERT_FALSE(m.can_end()) << text << " at " << i;
      }
    }
    EXPECT_TRUE(m.can_end()) << text;
  }
}

TEST(JsonMachine, AgreesWithAParserOnMutatedDocuments) {
  // Every text the machine takes as complete parses; every mutated text that parses (without
  // whitespace around the document) is taken. Mutations: drop, duplicate or replace a byte.
  Rng rng(11);
  const std::string junk = "{}[]\",:\\ 0-.eE+tfnulx1\n";
  int parsed = 0, complete = 0;
  for (int doc = 0; doc < 3000; ++doc) {
    std::string t = random_value(rng, 0).dump();
    for (int k = static_cast<int>(rng.next() % 3) + 1; k > 0 && !t.empty(); --k) {
      const size_t at = rng.next() % t.size();
      switch (rng.next() % 3) {
        case 0: t.erase(at, 1); break;
        case 1: t.insert(at, 1, t[at]); break;
        default: t[at] = junk[rng.next() % junk.size()];
      }
    }
    const bool ok = json::accept(t);
    const auto [took, end] = run(any_schema(), t);
    parsed += ok;
    complete += took && end;
    if (took && end) {
      EXPECT_TRUE(ok) << t;
    }
    const auto space = [](char c) { return c == ' ' || c == '\n'; };
    // Beyond the documented number caps (20 integer digits, 2 exponent digits) the machine says no.
    static const std::regex over_cap("[eE][+-]?[0-9]{3}|[0-9]{21}");
    if (ok && !space(t.front()) && !space(t.back()) && !std::regex_search(t, over_cap)) {
      EXPECT_TRUE(took && end) << t;
    }
  }
  EXPECT_GT(parsed, 300);  // the mutations leave enough valid documents to compare
  EXPECT_GT(complete, 300);
}

TEST(JsonMachine, RejectsWhatNoDocumentContinues) {
  for (const char* bad : {"}", "{]", "[1,]", "{\"a\" 1}", "{\"a\":1,}", "01", "-", "1.", "1e", "tru e", "nul1",
                          "\"\x01\"", "\"\\x\"", "\"\\u12g\"", "{} ", "[1] x", "\"\xff\"", "\"\xc3(\"", "{1:2}"}) {
    const auto [took, end] = run(any_schema(), bad);
    EXPECT_FALSE(took && end) << bad;
  }
  EXPECT_FALSE(run(any_schema(), "{}}").first);
  EXPECT_TRUE(run(any_schema(), " 1").second);
  EXPECT_FALSE(run(any_schema(), "  1").first);  // one space at most before the document
  EXPECT_TRUE(run(any_schema(), "[" + std::string(kJsonMaxWhitespace, ' ') + "1]").second);
  EXPECT_FALSE(run(any_schema(), "[" + std::string(kJsonMaxWhitespace + 1, ' ') + "1]").first);
  EXPECT_FALSE(run(any_schema(), std::string(kJsonMaxDepth + 1, '[')).first);
  // json_object: only an object at the top level.
  const auto obj = std::make_shared<JsonSchema>(json_object_schema());
  EXPECT_FALSE(run(obj, "[").first);
  EXPECT_FALSE(run(obj, "\"x\"").first);
  EXPECT_TRUE(run(obj, " {\"a\": [1, {\"b\": null}]}").second);
}

TEST(JsonMachine, SchemaPropertiesRequiredAdditionalEnumItems) {
  const auto s = schema_of(json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string"},
      "age": {"type": "integer"},
      "tags": {"type": "array", "items": {"enum": ["a", "bc", 3]}},
      "ok": {"type": ["boolean", "null"]}
    },
    "required": ["name", "age"],
    "additionalProperties": false
  })"));
  EXPECT_TRUE(run(s, R"({"name":"x","age":3})").second);
  EXPECT_TRUE(run(s, R"({ "age": -12, "name": "", "tags": ["a", 3, "bc"], "ok": null })").second);
  EXPECT_TRUE(run(s, R"({"name":"x","age":3,"ok":true})").second);
  EXPECT_FALSE(run(s, R"({"name":"x"})").second);          // age is required
  EXPECT_FALSE(run(s, R"({"name":"x","age":3.5})").first);  // an integer
  EXPECT_FALSE(run(s, R"({"name":"x","age":1e3})").first);
  EXPECT_TRUE(run(s, R"({"nam)").first);                  // a prefix of "name" is fine
  EXPECT_FALSE(run(s, R"({"other")").first);                // no other keys
  EXPECT_FALSE(run(s, R"({"name":"x","name")").first);      // no key twice
  EXPECT_FALSE(run(s, R"({"name":1)").first);               // a string
  EXPECT_FALSE(run(s, R"({"tags":["b")").first);            // not in the enum
  EXPECT_TRUE(run(s, R"({"tags":[3 )").first);
  EXPECT_FALSE(run(s, R"({"tags":[33)").first);
  EXPECT_FALSE(run(s, R"({"ok":1)").first);
  // Once every property is given, a comma would be a dead end.
  EXPECT_FALSE(run(s, R"({"name":"x","age":3,"tags":[],"ok":null,)").first);
  EXPECT_FALSE(run(s, "[]").first);
  // Numbers stay finite doubles for every parser: 20 integer digits, 2 exponent digits.
  EXPECT_TRUE(run(any_schema(), "-12345678901234567890.5e-99").second);
  EXPECT_FALSE(run(any_schema(), "123456789012345678901").first);
  EXPECT_FALSE(run(any_schema(), "1e100").first);
  // Enum values that prefix each other: 1 is complete, and may still become 12.
  const auto e = schema_of(json{{"enum", {1, 12, "x"}}});
  EXPECT_TRUE(run(e, "1").second);
  EXPECT_TRUE(run(e, "12").second);
  EXPECT_FALSE(run(e, "13").first);
  EXPECT_TRUE(run(e, "\"x\"").second);
  // Other keys allowed: their values are anything; known keys keep their schema.
  const auto open = schema_of(json::parse(R"({"type":"object","properties":{"n":{"type":"number"}}})"));
  EXPECT_TRUE(run(open, R"({"zz":[{}],"n":2.5e-3,"n2":"s"})").second);
  EXPECT_FALSE(run(open, R"({"n":"s")").first);
  EXPECT_FALSE(run(open, R"({"n":1,"n":2)").first);
  EXPECT_TRUE(run(open, R"({"\u006e":"s"})").second);  // an escaped key counts as another key
}

TEST(JsonMachine, RefusesUnsupportedSchemasNamingTheKeyword) {
  auto keyword = [](const json& s) {
    try {
      compile_json_schema(s);
    } catch (const JsonSchemaError& e) {
      return e.keyword;
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(keyword(json{{"type", "string"}, {"pattern", "^a"}}), "pattern");
  EXPECT_EQ(keyword(json{{"$ref", "#/x"}}), "$ref");
  EXPECT_EQ(keyword(json{{"anyOf", json::array()}}), "anyOf");
  EXPECT_EQ(keyword(json{{"type", "object"}, {"properties", {{"a", {{"minimum", 1}}}}}}), "minimum");
  EXPECT_EQ(keyword(json{{"type", "object"}, {"additionalProperties", {{"type", "string"}}}}), "additionalProperties");
  EXPECT_EQ(keyword(json{{"type", "date"}}), "type");
  EXPECT_EQ(keyword(json{{"type", "object"}, {"required", {"a"}}}), "required");
  EXPECT_EQ(keyword(json{{"type", "object"}, {"title", "x"}, {"description", "y"}}), "(accepted)");
}

// Random walks over the real vocabulary: each step draws a token among those allowed; every
// walk that the machine completes parses, and the mask costs what is printed.
TEST(JsonMachine, MaskedRandomWalksOverTheMistralVocabularyAlwaysParse) {
  TokenizerSource src;
  src.model_path = test::data_path("tiny-mixtral/hf/tokenizer.model");
  const Tokenizer tok = Tokenizer::load(src);
  const JsonVocab vocab = json_vocab(token_texts(tok));
  const std::vector<std::string>& texts = vocab.texts;
  ASSERT_EQ(texts[static_cast<size_t>(tok.eos_id())], "");
  const auto schemas = {std::make_shared<const JsonSchema>(json_object_schema()),
                        schema_of(json::parse(R"({"type":"object","properties":{"a":{"type":"boolean"},
                          "b":{"type":"array","items":{"type":"integer"}}},"required":["a","b"],"additionalProperties":false})"))};
  Rng rng(3);
  std::vector<uint8_t> allowed;
  double seconds = 0;
  int masks = 0, completed = 0;
  for (const auto& schema : schemas) {
    for (int walk = 0; walk < 20; ++walk) {
      JsonMachine m(schema);
      std::string out;
      for (int step = 0; step < 60; ++step) {
        const auto t0 = std::chrono::steady_clock::now();
        json_allowed_tokens(m, vocab, tok.eos_id(), allowed);
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        ++masks;
        if (step % 8 == 0) {  // the shortcuts (first byte, string-safe tokens) change nothing
          for (size_t i = 0; i < texts.size(); ++i) {
            if (static_cast<int>(i) == tok.eos_id()) continue;
            ASSERT_EQ(allowed[i] != 0, !texts[i].empty() && m.accepts(texts[i])) << i << " after " << out;
          }
        }
        std::vector<int> ids;
        for (size_t i = 0; i < allowed.size(); ++i)
          if (allowed[i]) ids.push_back(static_cast<int>(i));
        ASSERT_FALSE(ids.empty()) << "dead end after " << out;
        // Favour closing tokens now and then, so that walks finish.
        int pick = ids[rng.next() % ids.size()];
        if (rng.next() % 3 == 0)
          for (int id : ids)
            if (id == tok.eos_id() || texts[static_cast<size_t>(id)].find_first_of("}]\"") != std::string::npos) pick = id;
        if (pick == tok.eos_id()) break;
        ASSERT_TRUE(m.feed(texts[static_cast<size_t>(pick)]));
        out += texts[static_cast<size_t>(pick)];
      }
      if (m.can_end()) {
        ++completed;
        EXPECT_TRUE(json::accept(out)) << out;
      }
    }
  }
  EXPECT_GT(completed, 10);
  std::printf("json_allowed_tokens over %zu tokens: %.3f ms per step (mean of %d)\n", texts.size(),
              1e3 * seconds / masks, masks);
}

}  // namespace
}  // namespace mx
