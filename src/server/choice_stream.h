// One choice's output as the client sees it: text (echoed prompt, then generated text cut at
// stop strings) and, when asked for, its log-probabilities in the endpoint's OpenAI shape:
//   chat:        {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null}
//   completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}
// The same object serves the whole response and each stream chunk (the items since the last).
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "server/api.h"
#include "server/request_hook.h"
#include "server/text_stream.h"

namespace mx::server {

class ChoiceStream {
 public:
  // texts: token_texts(tok); hook: this choice's (may be null when no logprobs are wanted);
  // prompt_hook: the hook that scored the prompt for echo (choice 0's; default: hook).
  ChoiceStream(const Tokenizer& tok, const std::vector<std::string>& texts, const GenerationRequest& g,
               std::shared_ptr<const RequestHook> hook, std::shared_ptr<const RequestHook> prompt_hook = nullptr);
  // The echoed prompt text (and its scored tokens); "" without echo. Call once, first.
  std::string start();
  // The text these generated tokens add that is safe to show now.
  std::string push(const std::vector<int>& tokens);
  std::string finish();
  // Log-probabilities of the tokens since the last call; null when not asked for.
  nlohmann::json take_logprobs();
  bool stopped() const { return ts_.stopped(); }
  int tokens() const { return g_.score_only ? 0 : ts_.tokens(); }

 private:
  struct Item {
    int token;
    bool scored;  // false: the first prompt token, which nothing predicts
    TokenLogprob lp;
    size_t offset;  // characters before this token's text
  };
  std::string token_string(int id) const;
  nlohmann::json bytes_of(int id) const;

  const Tokenizer& tok_;
  const std::vector<std::string>& texts_;
  const GenerationRequest& g_;
  std::shared_ptr<const RequestHook> hook_, prompt_hook_;
  TextStream ts_;
  size_t generated_ = 0;  // generated tokens seen
  std::vector<Item> items_;
};

}  // namespace mx::server
