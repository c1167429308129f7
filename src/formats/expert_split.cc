#include "formats/expert_split.h"

#include <algorithm>

#include "formats/error.h"

namespace mx {

RowSlice expert_rows(int64_t n, int parts, int part, const std::string& what) {
  if (parts <= 1) return {0, n};
  const std::string unit = std::to_string(kSplitRows) + "-row groups";
  if (n % kSplitRows != 0)
    fail(what + " " + std::to_string(n) + " is not a multiple of " + std::to_string(kSplitRows) +
         ", so the expert cannot be split over " + std::to_string(parts) + " ranks");
  const int64_t units = n / kSplitRows;
  if (units < parts)
    fail(what + " " + std::to_string(n) + " has only " + std::to_string(units) + " " + unit +
         ", too few to split over " + std::to_string(parts) + " ranks; use fewer ranks");
  const int64_t per = units / parts, extra = units % parts;
  const int64_t lo = part * per + std::min<int64_t>(part, extra);
  const int64_t cnt = per + (part < extra ? 1 : 0);
  return {lo * kSplitRows, (lo + cnt) * kSplitRows};
}

}  // namespace mx
