#include "server/text_stream.h"

namespace mx::server {

TextStream::TextStream(const Tokenizer& tok, std::vector<std::string> stops)
    : tok_(tok), dec_(tok), stop_(std::move(stops)) {}

std::string TextStream::push(const std::vector<int>& tokens) {
  std::string out;
  for (int t : tokens) {
    if (stop_.stopped()) break;
    ++n_;
    if (tok_.is_control(t)) continue;  // EOS ends the text, it is not part of it
    out += stop_.push(dec_.push(t));
  }
  return out;
}

std::string TextStream::finish() {
  if (stop_.stopped()) return {};
  std::string out = stop_.push(dec_.finish());
  return out + stop_.flush();
}

}  // namespace mx::server
