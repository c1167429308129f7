// The demo's live view on a terminal: one line per user showing their text as it grows,
// redrawn in place with ANSI cursor movement.
#pragma once
#include <chrono>
#include <cstdio>
#include <string>

#include "demo/demo_run.h"

namespace mx {

// Terminal size of `fd`: ioctl, else $COLUMNS / $LINES, else 80x24.
int terminal_columns(int fd);
int terminal_rows(int fd);

// One display line of at most `width` columns: `prefix`, then `text` with newlines and other
// control characters shown as spaces; when too long, the start is dropped ("…" marks it) so the
// newest text stays visible. East Asian wide characters count as two columns, others as one.
std::string fit_line(const std::string& prefix, const std::string& text, int width);

class LiveView {
 public:
  // `out` must be a terminal (see isatty); fd is its descriptor, for the size.
  LiveView(std::FILE* out, int fd);
  // Redraws every user's line. Redraws are limited to ~20 a second unless `force`.
  void draw(const DemoRun& run, bool force = false);
  // The last draw, then the cursor goes below the view.
  void finish(const DemoRun& run);

 private:
  std::string user_line(const DemoRun& run, size_t i, int width) const;

  std::FILE* out_;
  int fd_;
  int drawn_lines_ = 0;  // lines the previous draw printed (the cursor is below them)
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace mx
