// y[t, o] = sum_i W[o, i] * x[t, i]  for t < n_tokens, o < W.rows.
//   W: [rows, cols] in any DType (quantized rows are multiplied in their own format);
//   x: [n_tokens, cols] f32 (row stride cols); y: [n_tokens, rows] f32 (row stride rows).
// Determinism contract: y[t, o] depends only on W row o and x row t, never on n_tokens, the
// thread count or the other tokens in the batch. That is what makes batched, threaded and
// MPI-sharded runs give bit-identical results.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/mat_view.h"

namespace mx {

class ThreadPool;

enum class SimdPath { Scalar, Avx2, Avx512 };

// Chosen once from CPUID, unless MIXTRAL_SIMD=scalar|avx2|avx512 forces one (capped to what the
// CPU supports). set_simd_path overrides it (tests use it to compare paths).
SimdPath simd_path();
void set_simd_path(SimdPath p);
std::string simd_path_name(SimdPath p);
bool cpu_supports(SimdPath p);

void matmul(const MatView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

}  // namespace mx
