#include "formats/expert_split.h"

#include <algorithm>
#include <numeric>

#include "formats/error.h"

namespace mx {

int64_t split_granule(DType w2) {
  const int64_t block = dtype_info(r16_base(w2)).block_elems;
  return std::lcm(int64_t{16}, block);
}

RowSlice expert_rows(int64_t ffn, int parts, int part, int64_t granule, const std::string& what) {
  if (parts <= 1) return {0, ffn};
  const std::string unit = std::to_string(granule) + " (16-row groups and whole quant blocks)";
  if (granule <= 0 || ffn % granule != 0)
    fail(what + ": its hidden size " + std::to_string(ffn) + " is not a multiple of " + unit +
         ", so it cannot be split over " + std::to_string(parts) + " ranks");
  const int64_t units = ffn / granule;
  if (units < parts)
    fail(what + ": its hidden size " + std::to_string(ffn) + " has only " + std::to_string(units) +
         " units of " + unit + ", too few to split over " + std::to_string(parts) +
         " ranks; use fewer ranks");
  const int64_t per = units / parts, extra = units % parts;
  const int64_t lo = part * per + std::min<int64_t>(part, extra);
  const int64_t n = per + (part < extra ? 1 : 0);
  return {lo * granule, (lo + n) * granule};
}

}  // namespace mx
