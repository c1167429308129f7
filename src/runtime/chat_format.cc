#include "runtime/chat_format.h"

#include "formats/error.h"

namespace mx {

std::vector<int> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages) {
  if (messages.empty()) fail("chat: messages is empty");
  size_t first = 0;
  std::string system;
  if (messages[0].role == "system") {
    system = messages[0].content;
    first = 1;
  }
  if (first == messages.size()) fail("chat: a system message needs a user message after it");

  if (tok.bos_id() < 0 || tok.eos_id() < 0) fail("chat: the tokenizer has no BOS/EOS token");
  std::vector<int> out{tok.bos_id()};
  const auto append = [&](const std::vector<int>& ids) { out.insert(out.end(), ids.begin(), ids.end()); };
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool user_turn = (i - first) % 2 == 0;
    const std::string where = "chat: messages[" + std::to_string(i) + "]";
    if (m.role == "system") fail(where + ": a system message may only come first");
    if (m.role != "user" && m.role != "assistant")
      fail(where + ": unknown role '" + m.role + "' (expected system, user or assistant)");
    if ((m.role == "user") != user_turn)
      fail(where + ": role '" + m.role + "' out of order; roles must alternate user/assistant, "
                   "starting with user");
    if (user_turn) {
      // mistral-common v1 joins the system prompt to the first user message only, and only
      // when it is non-empty.
      const bool with_system = i == first && !system.empty();
      append(tok.encode("[INST] " + (with_system ? system + "\n\n" : std::string()) + m.content +
                            " [/INST]",
                        false));
    } else {
      append(tok.encode(m.content, false));
      out.push_back(tok.eos_id());
    }
  }
  return out;
}

std::vector<int> encode_instruct(const Tokenizer& tok, std::string_view prompt) {
  return encode_chat(tok, {ChatMessage{"user", std::string(prompt)}});
}

}  // namespace mx
