// OpenAI's `stop` strings over streamed text. Text that could still turn into a stop string is
// held back until it either completes one (generation ends there, the stop string itself is
// not returned) or stops matching, so a stream never shows text the full response cuts off.
#pragma once
#include <string>
#include <vector>

namespace mx::server {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Appends decoded text; returns the part that is now safe to emit ("" once stopped).
  std::string push(const std::string& piece);
  // At the end of generation: everything still held back.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string text_;     // all text so far (cut at the stop string once stopped)
  size_t emitted_ = 0;   // bytes of text_ returned so far
  size_t longest_ = 0;   // longest stop string
  bool stopped_ = false;
};

}  // namespace mx::server
