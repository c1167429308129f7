// Mistral v1 instruct prompt format, token for token as mistral-common's v1 tokenizer builds it:
//   <s>▁[INST]▁user▁[/INST]▁reply</s>▁[INST]▁next▁[/INST]
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tokenizer.h"

namespace mx {

struct ChatMessage {
  std::string role;  // "system" (first only), "user", "assistant"
  std::string content;
};

// BOS, then "[INST] <user> [/INST]" per user turn and "<reply>" + EOS per assistant turn, each
// segment encoded on its own. A system prompt is put before the first user message followed by
// "\n\n". Roles must be: optional system, then user/assistant alternating from user. Ending on
// an assistant turn is allowed (its EOS is included), e.g. to score a whole conversation.
std::vector<int> encode_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages);

// A single user turn.
std::vector<int> encode_instruct(const Tokenizer& tok, std::string_view prompt);

}  // namespace mx
