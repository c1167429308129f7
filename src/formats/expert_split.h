// More MPI ranks than experts: each expert's hidden dimension is split over the ranks that share
// it (w1/w3 rows, w2 columns). With E experts and N > E ranks (default placement), expert e is
// held by ranks e, e+E, e+2E, ... < N; rank r holds part r / E of expert r % E. Parts are whole
// units of `split_granule` hidden rows (16-row groups of the r16 layouts, and w2's quant block,
// so activations are quantized in the same blocks as one process), the first parts one unit
// larger when they do not divide evenly.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace mx {

struct RowSlice {
  int64_t lo = 0, hi = 0;  // hidden rows [lo, hi)
};

// Units a split is made of, for an expert whose w2 has dtype `w2` (any of its r16 forms too).
int64_t split_granule(DType w2);

// Part `part` of `parts` of an expert with `ffn` hidden rows. Throws mx::Error naming `what`
// (e.g. the model path and expert) when ffn is not whole units or has fewer units than parts.
RowSlice expert_rows(int64_t ffn, int parts, int part, int64_t granule, const std::string& what);

}  // namespace mx
