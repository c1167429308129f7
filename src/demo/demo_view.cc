#include "demo/demo_view.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace mx {

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  const int n = std::atoi(v);
  return n > 0 ? n : fallback;
}

// Splits UTF-8 into characters; control characters (C0, DEL, C1, and so ESC) become spaces so
// that model output cannot move the cursor or break a line.
std::vector<std::string> display_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (i + n > s.size()) n = 1;
    std::string ch = s.substr(i, n);
    i += n;
    if (n == 1 && (c < 0x20 || c == 0x7F || c >= 0x80)) ch = " ";  // controls, stray bytes
    if (n == 2 && c == 0xC2 && static_cast<unsigned char>(ch[1]) < 0xA0) ch = " ";  // C1 controls
    out.push_back(std::move(ch));
  }
  return out;
}

// Columns a character takes: 2 for East Asian wide and fullwidth characters and most emoji
// (so lines of CJK text do not wrap and break the cursor movement), else 1.
int char_columns(const std::string& ch) {
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(ch[i])); };
  uint32_t cp = 0;
  if (ch.size() == 3) cp = ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
  else if (ch.size() == 4) cp = ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  else return 1;
  const bool wide = (cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0x303E) ||
                    (cp >= 0x3041 && cp <= 0xA4CF) || (cp >= 0xAC00 && cp <= 0xD7A3) ||
                    (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0xFE30 && cp <= 0xFE4F) ||
                    (cp >= 0xFF00 && cp <= 0xFF60) || (cp >= 0xFFE0 && cp <= 0xFFE6) ||
                    (cp >= 0x1F300 && cp <= 0x1F64F) || (cp >= 0x1F900 && cp <= 0x1F9FF) ||
                    (cp >= 0x20000 && cp <= 0x3FFFD);
  return wide ? 2 : 1;
}

}  // namespace

int terminal_columns(int fd) {
  winsize w{};
  if (::ioctl(fd, TIOCGWINSZ, &w) == 0 && w.ws_col > 0) return w.ws_col;
  return env_int("COLUMNS", 80);
}

int terminal_rows(int fd) {
  winsize w{};
  if (::ioctl(fd, TIOCGWINSZ, &w) == 0 && w.ws_row > 0) return w.ws_row;
  return env_int("LINES", 24);
}

std::string fit_line(const std::string& prefix, const std::string& text, int width) {
  if (width <= 0) return "";
  std::string out;
  int used = 0;
  for (const auto& c : display_chars(prefix)) {
    if (used + char_columns(c) > width) return out;
    out += c;
    used += char_columns(c);
  }
  const std::vector<std::string> t = display_chars(text);
  int total = 0;
  for (const auto& c : t) total += char_columns(c);
  if (used + total <= width) {
    for (const auto& c : t) out += c;
    return out;
  }
  // Too long: "…" and then as much of the end as fits.
  const int room = width - used - 1;
  if (room < 0) return out;
  size_t from = t.size();
  int tail = 0;
  while (from > 0 && tail + char_columns(t[from - 1]) <= room) tail += char_columns(t[--from]);
  out += "\u2026";
  for (size_t i = from; i < t.size(); ++i) out += t[i];
  return out;
}

LiveView::LiveView(std::FILE* out, int fd) : out_(out), fd_(fd) {}

std::string LiveView::user_line(const DemoRun& run, size_t i, int width) const {
  const DemoUser& u = run.users[i];
  char prefix[64];
  if (u.finish != FinishReason::None) {
    std::snprintf(prefix, sizeof prefix, "%3zu = ", i + 1);
  } else if (u.fed < u.prompt_tokens) {
    // Still reading the prompt (prefill chunks, or one token a step in decode-only mode).
    std::snprintf(prefix, sizeof prefix, "%3zu . reading prompt %d/%d", i + 1, u.fed, u.prompt_tokens);
    return fit_line(prefix, "", width);
  } else {
    std::snprintf(prefix, sizeof prefix, "%3zu > ", i + 1);
  }
  return fit_line(prefix, u.text, width);
}

void LiveView::draw(const DemoRun& run, bool force) {
  const auto now = std::chrono::steady_clock::now();
  if (!force && drawn_lines_ > 0 && now - last_ < std::chrono::milliseconds(50)) return;
  last_ = now;
  // One column spare: writing the last column makes some terminals wrap early.
  const int width = std::max(1, terminal_columns(fd_) - 1);
  const int rows = terminal_rows(fd_);
  size_t shown = run.users.size();
  // Moving the cursor up past the top of the screen does not work; keep the view on screen.
  if (static_cast<int>(shown) + 1 > rows) shown = static_cast<size_t>(std::max(1, rows - 2));
  std::string buf;
  if (drawn_lines_ > 0) buf += "\x1b[" + std::to_string(drawn_lines_) + "A";
  int lines = 0;
  for (size_t i = 0; i < shown; ++i, ++lines) buf += "\r\x1b[2K" + user_line(run, i, width) + "\n";
  if (shown < run.users.size()) {
    buf += "\r\x1b[2K" + fit_line("", "(+" + std::to_string(run.users.size() - shown) +
                                           " more users; the terminal is too short to show them)", width) + "\n";
    ++lines;
  }
  std::fputs(buf.c_str(), out_);
  std::fflush(out_);
  drawn_lines_ = lines;
}

void LiveView::finish(const DemoRun& run) { draw(run, true); }

}  // namespace mx
