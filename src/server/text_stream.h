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
  bool stopped() const { return stop_.stopped(); }
  // Generated tokens taken, up to the one that completed a stop string.
  int tokens() const { return n_; }

 private:
  const Tokenizer& tok_;
  StreamDecoder dec_;
  StopMatcher stop_;
  int n_ = 0;
};

}  // namespace mx::server
