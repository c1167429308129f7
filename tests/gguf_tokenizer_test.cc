// A GGUF file's own vocabulary (tokenizer.ggml.*) encodes exactly like SentencePiece on
// tokenizer.model, plain and chat.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "runtime/chat_format.h"
#include "runtime/tokenizer.h"
#include "test_util.h"

namespace mx {
namespace {

TEST(GgufTokenizer, MatchesSentencePieceCases) {
  for (const char* q : {"f16", "q4_k_m"}) {
    LoadedModel m = load_gguf(test::data_path(std::string("tiny-mixtral/gguf/tiny-mixtral-") + q + ".gguf"), {});
    ASSERT_TRUE(m.tokenizer.model_path.empty()) << "the fixture folder has no tokenizer.model";
    ASSERT_EQ(m.tokenizer.pieces.size(), 32000u);
    const Tokenizer tok = Tokenizer::load(m.tokenizer);
    const auto cases = nlohmann::json::parse(test::read_file(test::data_path("tokenizer-cases.json")));
    EXPECT_EQ(tok.bos_id(), cases["bos_id"].get<int>());
    EXPECT_EQ(tok.eos_id(), cases["eos_id"].get<int>());
    for (const auto& c : cases["plain"]) {
      const std::string text = c["text"].get<std::string>();
      EXPECT_EQ(tok.encode(text, false), c["ids"].get<std::vector<int>>()) << q << ": " << text;
      EXPECT_EQ(tok.decode(c["ids"].get<std::vector<int>>()), c["decoded"].get<std::string>());
    }
    for (const auto& c : cases["chat"]) {
      std::vector<ChatMessage> msgs;
      for (const auto& mj : c["messages"]) msgs.push_back({mj["role"].get<std::string>(), mj["content"].get<std::string>()});
      EXPECT_EQ(encode_chat(tok, msgs), c["tokens"].get<std::vector<int>>()) << q << ": " << c["name"];
    }
  }
}

}  // namespace
}  // namespace mx
