#include "server/stop_matcher.h"

#include <algorithm>

namespace mx::server {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const std::string& s : stops_) longest_ = std::max(longest_, s.size());
}

std::string StopMatcher::push(const std::string& piece) {
  if (stopped_) return {};
  text_ += piece;
  // A match cannot start before emitted_: any suffix that was a stop's prefix was held back.
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, text_.find(s, emitted_));
  if (first != std::string::npos) {
    std::string out = text_.substr(emitted_, first - emitted_);
    text_.resize(first);
    emitted_ = first;
    stopped_ = true;
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string. It starts where a
  // stop string's first byte matched, so it never splits a UTF-8 character.
  size_t hold = 0;
  const size_t room = std::min(text_.size() - emitted_, longest_ > 0 ? longest_ - 1 : 0);
  for (size_t h = room; h > 0 && hold == 0; --h)
    for (const std::string& s : stops_)
      if (s.size() > h && text_.compare(text_.size() - h, h, s, 0, h) == 0) {
        hold = h;
        break;
      }
  const size_t safe = text_.size() - hold;
  std::string out = text_.substr(emitted_, safe - emitted_);
  emitted_ = safe;
  return out;
}

std::string StopMatcher::flush() {
  std::string out = text_.substr(emitted_);
  emitted_ = text_.size();
  return out;
}

}  // namespace mx::server
