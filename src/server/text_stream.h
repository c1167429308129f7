// A request's generated tokens as text for the client: decoded incrementally without splitting
// UTF-8 characters (StreamDecoder), cut at the first stop string (StopMatcher), EOS dropped.
// The pieces it returns concatenate to exactly the non-streamed text.
#pragma once
#include <string>
#include <vector>

#include "runtime/tokenizer.h"
#include "server/stop_matcher.h"

namespace mx::server {

class TextStream {
 public:
  TextStream(const Tokenizer& tok, std::vector<std::string> stops);
  // The text these tokens add that is safe to show now. Tokens after a stop string are ignored.
  std::string push(const std::vector<int>& tokens);
  // At the end of generation: whatever was held back.
  std::string finish();
  // Echo: decodes the prompt first (not counted, never matched against stop strings), so the
  // generated text continues it as one decode would. Returns the prompt's text.
  std::string prime(const std::vector<int>& prompt);
  // Characters (code points) decoded so far, before stop strings cut: logprobs' text_offset.
  size_t decoded_chars() const { return chars_; }
  bool stopped() const { return stop_.stopped(); }
  // Generated tokens taken, up to the one that completed a stop string.
  int tokens() const { return n_; }

 private:
  const Tokenizer& tok_;
  StreamDecoder dec_;
  StopMatcher stop_;
  int n_ = 0;
  size_t chars_ = 0;
  std::string decode(int token);
};

}  // namespace mx::server
