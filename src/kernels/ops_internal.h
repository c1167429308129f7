// Per-ISA entry points of ops.h (implemented in ops_avx2.cc / ops_avx512.cc, dispatched by
// ops.cc). Same contracts as the public functions.
#pragma once
#include "kernels/ops.h"

namespace mx::ops {

struct OpsTable {
  void (*rmsnorm)(const float*, const float*, int64_t, float, float*);
  void (*softmax)(float*, int64_t);
  void (*silu_mul)(const float*, const float*, int64_t, float*);
  void (*add)(const float*, const float*, int64_t, float*);
  void (*scale)(float*, int64_t, float);
  void (*axpy)(float, const float*, int64_t, float*);
  void (*rope)(float*, int64_t, int64_t, int, int, const float*, const float*, RopeLayout);
  void (*attention)(const float*, const KvRows&, const KvRows&, int, int, int, int, float, float*,
                    int, int);
  void (*attention_tokens)(const float*, int, int64_t, const int*, const KvRows&, const KvRows&,
                           int, int, int, float, float*, int);
};

const OpsTable& ops_avx2();
const OpsTable& ops_avx512();

}  // namespace mx::ops
