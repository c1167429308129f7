// Matmul dispatch. The scalar path is the reference every SIMD path is tested against.
#include "kernels/matmul.h"

#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/half.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"

namespace mx {

namespace {

SimdPath g_path = SimdPath::Scalar;
bool g_path_set = false;

// Scalar reference: decode one weight row to f32, then dot with each token.
void matmul_scalar_rows(const MatView& w, const float* x, int64_t n_tokens, float* y,
                        int64_t r0, int64_t r1) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = r0; r < r1; ++r) {
    const float* wr;
    if (w.dtype == DType::F32) {
      wr = reinterpret_cast<const float*>(w.row(r));
    } else {
      dequantize_row(w.dtype, w.row(r), row.data(), w.cols);
      wr = row.data();
    }
    for (int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * w.cols;
      float acc = 0.f;
      for (int64_t i = 0; i < w.cols; ++i) acc += wr[i] * xt[i];
      y[t * w.rows + r] = acc;
    }
  }
}

}  // namespace

bool cpu_supports(SimdPath p) {
  switch (p) {
    case SimdPath::Scalar: return true;
    case SimdPath::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SimdPath::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
  }
  return false;
}

std::string simd_path_name(SimdPath p) {
  switch (p) {
    case SimdPath::Scalar: return "scalar";
    case SimdPath::Avx2: return "avx2";
    case SimdPath::Avx512: return "avx512";
  }
  return "?";
}

SimdPath simd_path() {
  if (!g_path_set) {
    g_path = SimdPath::Scalar;  // SIMD paths are registered by the kernels issue
    g_path_set = true;
  }
  return g_path;
}

void set_simd_path(SimdPath p) {
  g_path = p;
  g_path_set = true;
}

void matmul(const MatView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  pool.parallel_for(w.rows, [&](int64_t b, int64_t e, int) {
    matmul_scalar_rows(w, x, n_tokens, y, b, e);
  }, 16);
}

}  // namespace mx
