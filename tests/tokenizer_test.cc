// Tokenizer, chat format and streaming decode against the real Mistral v1 tokenizer and the
// reference encodes in tests/data/tokenizer-cases.json.
#include "runtime/tokenizer.h"

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "runtime/chat_format.h"
#include "runtime/sampling.h"
#include "test_util.h"

namespace mx {
namespace {

using nlohmann::json;

std::string model_path() { return test::data_path("tiny-mixtral/hf/tokenizer.model"); }

const json& cases() {
  static const json j = json::parse(test::read_file(test::data_path("tokenizer-cases.json")));
  return j;
}

TokenizerSource file_source(const std::string& path) {
  TokenizerSource src;
  src.model_path = path;
  return src;
}

Tokenizer from_file() { return Tokenizer::load(file_source(model_path())); }

// What a GGUF loader would hand over: the vocabulary read back out of the real model.
TokenizerSource gguf_style_source() {
  sentencepiece::SentencePieceProcessor sp;
  const auto st = sp.Load(model_path());
  EXPECT_TRUE(st.ok()) << st.ToString();
  TokenizerSource src;
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    src.pieces.push_back(sp.IdToPiece(id));
    src.scores.push_back(sp.GetScore(id));
    src.types.push_back(sp.IsUnknown(id) ? 2 : sp.IsControl(id) ? 3 : sp.IsUnused(id) ? 5
                        : sp.IsByte(id)  ? 6 : 1);
  }
  src.bos_id = sp.bos_id();
  src.eos_id = sp.eos_id();
  src.unk_id = sp.unk_id();
  return src;
}

std::vector<ChatMessage> messages_of(const json& c) {
  std::vector<ChatMessage> m;
  for (const auto& x : c["messages"]) m.push_back({x["role"], x["content"]});
  return m;
}

void expect_all_cases(const Tokenizer& tok) {
  const json& j = cases();
  EXPECT_EQ(tok.vocab_size(), j["vocab_size"].get<int>());
  EXPECT_EQ(tok.bos_id(), j["bos_id"].get<int>());
  EXPECT_EQ(tok.eos_id(), j["eos_id"].get<int>());
  ASSERT_FALSE(j["plain"].empty());
  for (const auto& c : j["plain"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int>>();
    const auto pieces = c["pieces"].get<std::vector<std::string>>();
    EXPECT_EQ(tok.encode(text, false), ids) << "text: " << text;
    ASSERT_EQ(ids.size(), pieces.size());
    for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(tok.piece(ids[i]), pieces[i]) << "text: " << text;
    EXPECT_EQ(tok.decode(ids), c["decoded"].get<std::string>()) << "text: " << text;
    std::vector<int> with_bos{tok.bos_id()};
    with_bos.insert(with_bos.end(), ids.begin(), ids.end());
    EXPECT_EQ(tok.encode(text, true), with_bos);
  }
  ASSERT_FALSE(j["chat"].empty());
  for (const auto& c : j["chat"]) {
    const auto tokens = c["tokens"].get<std::vector<int>>();
    const auto got = encode_chat(tok, messages_of(c));
    EXPECT_EQ(got, tokens) << "chat case " << c["name"];
    std::string joined;
    for (int id : got) joined += tok.piece(id);
    EXPECT_EQ(joined, c["text"].get<std::string>()) << "chat case " << c["name"];
  }
}

TEST(Tokenizer, ReferenceCasesFromModelFile) { expect_all_cases(from_file()); }

TEST(Tokenizer, ReferenceCasesFromGgufVocabulary) {
  expect_all_cases(Tokenizer::load(gguf_style_source()));
}

// Beyond the fixed cases: a whole novel, paragraph by paragraph, must encode identically.
TEST(Tokenizer, GgufVocabularyMatchesModelFileOnABook) {
  const std::string path = std::string(MIXTRAL_SOURCE_DIR) + "/demo/a-tale-of-two-cities.txt";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no " << path;
  const std::string book = test::read_file(path);
  const Tokenizer a = from_file(), b = Tokenizer::load(gguf_style_source());
  size_t pos = 0, chunks = 0;
  while (pos < book.size()) {
    size_t end = book.find("\n\n", pos);
    end = end == std::string::npos ? book.size() : end + 2;
    const std::string_view chunk(book.data() + pos, end - pos);
    ASSERT_EQ(a.encode(chunk, true), b.encode(chunk, true)) << "at byte " << pos;
    pos = end;
    ++chunks;
  }
  EXPECT_GT(chunks, 100u);
  EXPECT_EQ(a.encode(book, false), b.encode(book, false));
}

// Minimal wire-format reader, to compare the built ModelProto with the real file field by field.
struct Field {
  int number, wire;
  uint64_t value;    // varint / fixed32 bits
  std::string data;  // length-delimited payload
};
std::vector<Field> parse_proto(std::string_view s) {
  std::vector<Field> out;
  size_t i = 0;
  auto varint = [&] {
    uint64_t v = 0;
    for (int shift = 0; i < s.size(); shift += 7) {
      const auto c = static_cast<unsigned char>(s[i++]);
      v |= static_cast<uint64_t>(c & 0x7f) << shift;
      if (c < 0x80) break;
    }
    return v;
  };
  while (i < s.size()) {
    const uint64_t key = varint();
    Field f{static_cast<int>(key >> 3), static_cast<int>(key & 7), 0, {}};
    if (f.wire == 0) f.value = varint();
    else if (f.wire == 5) {
      for (int b = 0; b < 4; ++b) f.value |= static_cast<uint64_t>(static_cast<unsigned char>(s[i + b])) << (8 * b);
      i += 4;
    } else if (f.wire == 2) {
      const uint64_t n = varint();
      f.data = std::string(s.substr(i, n));
      i += n;
    } else {
      ADD_FAILURE() << "unexpected wire type " << f.wire;
      break;
    }
    out.push_back(std::move(f));
  }
  return out;
}

TEST(Tokenizer, BuiltProtoAgreesWithRealModelFile) {
  const auto real = parse_proto(test::read_file(model_path()));
  const auto built = parse_proto(sentencepiece_proto_from_vocab(gguf_style_source()));
  std::vector<std::string> real_pieces, built_pieces;
  std::map<int, Field> real_trainer, built_trainer, real_norm, built_norm;
  for (const auto& [fields, pieces, trainer, norm] :
       {std::tie(real, real_pieces, real_trainer, real_norm),
        std::tie(built, built_pieces, built_trainer, built_norm)}) {
    for (const Field& f : fields) {
      if (f.number == 1) pieces.push_back(f.data);
      if (f.number == 2)
        for (const Field& g : parse_proto(f.data)) trainer[g.number] = g;
      if (f.number == 3)
        for (const Field& g : parse_proto(f.data)) norm[g.number] = g;
    }
  }
  ASSERT_EQ(real_pieces.size(), 32000u);
  // Same piece, score and type encoding byte for byte.
  EXPECT_TRUE(real_pieces == built_pieces);
  for (const auto& [number, f] : built_trainer) {
    ASSERT_TRUE(real_trainer.count(number)) << "trainer_spec field " << number;
    EXPECT_EQ(f.wire, real_trainer[number].wire) << "trainer_spec field " << number;
    EXPECT_EQ(f.value, real_trainer[number].value) << "trainer_spec field " << number;
    EXPECT_EQ(f.data, real_trainer[number].data) << "trainer_spec field " << number;
  }
  for (const auto& [number, f] : built_norm) {
    if (!real_norm.count(number)) {  // absent in the file means the proto default (true)
      EXPECT_EQ(number, 5);
      EXPECT_EQ(f.value, 1u);
      continue;
    }
    EXPECT_EQ(f.value, real_norm[number].value) << "normalizer_spec field " << number;
    EXPECT_EQ(f.data, real_norm[number].data) << "normalizer_spec field " << number;
  }
}

TEST(Tokenizer, BadModelPathNamesThePath) {
  const std::string bad = "/nonexistent/dir/tokenizer.model";
  try {
    Tokenizer::load(file_source(bad));
    FAIL() << "expected mx::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  // A file that exists but is not a SentencePiece model.
  const std::string junk = test::tmp_dir("tok") + "/junk.model";
  FILE* f = std::fopen(junk.c_str(), "wb");
  std::fputs("not a model", f);
  std::fclose(f);
  try {
    Tokenizer::load(file_source(junk));
    FAIL() << "expected mx::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(junk), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, BadGgufVocabularyIsRejected) {
  auto src = gguf_style_source();
  auto short_scores = src;
  short_scores.scores.pop_back();
  EXPECT_THROW(Tokenizer::load(short_scores), Error);
  auto bad_type = src;
  bad_type.types[100] = 9;
  try {
    Tokenizer::load(bad_type);
    FAIL() << "expected mx::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_type[100]"), std::string::npos) << e.what();
  }
  auto bad_bos = src;
  bad_bos.bos_id = 40000;
  EXPECT_THROW(Tokenizer::load(bad_bos), Error);
  EXPECT_THROW(Tokenizer::load(TokenizerSource{}), Error);
}

TEST(Tokenizer, IdsOutsideTheVocabularyAreErrors) {
  const Tokenizer tok = from_file();
  EXPECT_TRUE(tok.is_valid(0));
  EXPECT_TRUE(tok.is_valid(31999));
  EXPECT_FALSE(tok.is_valid(32000));
  EXPECT_FALSE(tok.is_valid(-1));
  EXPECT_THROW(tok.decode({1, 32000}), Error);
  EXPECT_THROW(tok.piece(-1), Error);
  EXPECT_EQ(tok.piece(13), "<0x0A>");
  EXPECT_EQ(tok.byte_value(13), 0x0A);
  EXPECT_EQ(tok.byte_value(22557), -1);
  EXPECT_TRUE(tok.is_control(tok.eos_id()));
  // Copies share the processor and keep working after the original is gone.
  auto copy = std::make_unique<Tokenizer>(from_file());
  const Tokenizer kept = *copy;
  copy.reset();
  EXPECT_EQ(kept.decode({22557, 1526}), "Hello world");
}

std::string stream(const Tokenizer& tok, const std::vector<int>& ids, std::vector<std::string>* parts = nullptr) {
  StreamDecoder dec(tok);
  std::string out;
  for (int id : ids) {
    const std::string d = dec.push(id);
    if (parts) parts->push_back(d);
    out += d;
  }
  const std::string rest = dec.finish();
  if (parts) parts->push_back(rest);
  return out + rest;
}

TEST(StreamDecoder, ReassemblesMultibyteAndEmoji) {
  const Tokenizer tok = from_file();
  const std::string text = "emoji: 🤖🚀🎉 and 東京 naïve — done";
  const auto ids = tok.encode(text, false);
  std::vector<std::string> parts;
  EXPECT_EQ(stream(tok, ids, &parts), text);
  // Each emitted piece is whole UTF-8: no replacement characters on the way.
  for (const auto& p : parts) EXPECT_EQ(p.find("\xEF\xBF\xBD"), std::string::npos) << p;
  // The robot is four byte-fallback tokens: nothing shows until the last one arrives.
  const std::vector<int> robot{243, 162, 167, 153};
  auto it = std::search(ids.begin(), ids.end(), robot.begin(), robot.end());
  ASSERT_NE(it, ids.end());
  const size_t at = it - ids.begin();
  EXPECT_EQ(parts[at], "");
  EXPECT_EQ(parts[at + 1], "");
  EXPECT_EQ(parts[at + 2], "");
  EXPECT_EQ(parts[at + 3], "🤖");
}

TEST(StreamDecoder, ConcatenationEqualsDecodeForAllCases) {
  const Tokenizer tok = from_file();
  for (const auto& c : cases()["plain"]) {
    const auto ids = c["ids"].get<std::vector<int>>();
    EXPECT_EQ(stream(tok, ids), tok.decode(ids)) << c["text"];
  }
  for (const auto& c : cases()["chat"]) {
    const auto ids = c["tokens"].get<std::vector<int>>();
    EXPECT_EQ(stream(tok, ids), tok.decode(ids)) << c["name"];
    // As generated text: drop BOS and the "[INST]" prefix; the leading "▁" of the reply goes.
    std::vector<int> reply(ids.begin() + 1, ids.end());
    EXPECT_EQ(stream(tok, reply), tok.decode(reply)) << c["name"];
  }
  EXPECT_EQ(stream(tok, {22557, 1526}), "Hello world");
  EXPECT_EQ(stream(tok, {28705, 22557, 1526}), " Hello world");
}

// Random id soups (plain pieces, stray and valid byte runs, control tokens, unknown) must
// still stream to exactly what decode() gives, truncated characters included.
TEST(StreamDecoder, RandomSequencesMatchDecode) {
  const Tokenizer tok = from_file();
  Rng rng(7);
  const std::vector<int> specials{0, 1, 2, 28705, 259, 13};
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<int> ids;
    const int len = 1 + static_cast<int>(rng.next() % 24);
    for (int i = 0; i < len; ++i) {
      const uint64_t r = rng.next() % 10;
      if (r < 4) ids.push_back(3 + static_cast<int>(rng.next() % 256));  // a byte token
      else if (r < 6) ids.push_back(specials[rng.next() % specials.size()]);
      else if (r < 7) {  // a valid multi-byte character as byte tokens
        for (int b : {0xE2, 0x82, 0xAC}) ids.push_back(3 + b);
      } else ids.push_back(static_cast<int>(rng.next() % 32000));
    }
    ASSERT_EQ(stream(tok, ids), tok.decode(ids)) << "trial " << trial;
  }
}

TEST(ChatFormat, InstructIsASingleUserTurn) {
  const Tokenizer tok = from_file();
  const auto& single = cases()["chat"][0];
  ASSERT_EQ(single["messages"].size(), 1u);
  EXPECT_EQ(encode_instruct(tok, single["messages"][0]["content"].get<std::string>()),
            single["tokens"].get<std::vector<int>>());
}

TEST(ChatFormat, ConversationEndingWithAssistantGetsEos) {
  const Tokenizer tok = from_file();
  const auto ids = encode_chat(tok, {{"user", "a"}, {"assistant", "b"}});
  EXPECT_EQ(ids, (std::vector<int>{1, 733, 16289, 28793, 264, 733, 28748, 16289, 28793, 287, 2}));
  // An empty system prompt adds nothing (mistral-common skips it).
  EXPECT_EQ(encode_chat(tok, {{"system", ""}, {"user", "a"}}), encode_chat(tok, {{"user", "a"}}));
}

TEST(ChatFormat, BadRoleOrderIsRejected) {
  const Tokenizer tok = from_file();
  const auto expect_error = [&](const std::vector<ChatMessage>& m, const std::string& needle) {
    try {
      encode_chat(tok, m);
      ADD_FAILURE() << "expected mx::Error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({}, "empty");
  expect_error({{"system", "s"}}, "user");
  expect_error({{"assistant", "x"}}, "messages[0]");
  expect_error({{"user", "a"}, {"user", "b"}}, "messages[1]");
  expect_error({{"user", "a"}, {"system", "s"}}, "system");
  expect_error({{"user", "a"}, {"assistant", "b"}, {"assistant", "c"}}, "messages[2]");
  expect_error({{"user", "a"}, {"tool", "b"}}, "unknown role 'tool'");
}

}  // namespace
}  // namespace mx
