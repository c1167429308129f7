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
    out += stop_.push(decode(t));
  }
  return out;
}

std::string TextStream::decode(int token) {
  std::string s = dec_.push(token);
  for (unsigned char c : s) chars_ += (c & 0xC0) != 0x80;
  return s;
}

std::string TextStream::prime(const std::vector<int>& prompt) {
  std::string out;
  for (int t : prompt) out += decode(t);
  return out;
}

std::string TextStream::finish() {
  if (stop_.stopped()) return {};
  std::string out = stop_.push(dec_.finish());
  return out + stop_.flush();
}

}  // namespace mx::server
