// More MPI ranks than experts: each expert is split over the ranks that share it. With E experts
// and N > E ranks (default placement), expert e is held by ranks e, e+E, e+2E, ... < N; rank r
// holds part r / E of expert r % E: its share of the hidden rows (w1/w3 rows) and of the output
// rows (w2 rows, all columns), in whole 16-row groups (the r16 layouts' unit), the first parts
// one group larger when they do not divide evenly. runtime/expert_parallel.cc exchanges the
// hidden activations within the expert's ranks, so that each rank's w2 rows see the whole
// hidden vector and every output is the float one process computes.
#pragma once
#include <cstdint>
#include <string>

namespace mx {

struct RowSlice {
  int64_t lo = 0, hi = 0;  // rows [lo, hi)
};

constexpr int64_t kSplitRows = 16;  // a part is whole groups of this many rows

// Part `part` of `parts` of `n` rows. Throws mx::Error naming `what` (e.g. the model path and
// expert) when n is not whole groups or has fewer groups than parts.
RowSlice expert_rows(int64_t n, int parts, int part, const std::string& what);

}  // namespace mx
