// Helpers shared by the kernel tests (ops_test, attention_test, matmul_test): the SIMD paths
// this CPU runs, a guard that restores the dispatch choice, and one value of a KV row in f32,
// f16 or bf16.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/half.h"
#include "kernels/matmul.h"

namespace mx::test {

inline std::vector<SimdPath> all_paths() {
  std::vector<SimdPath> v{SimdPath::Scalar};
  for (SimdPath p : {SimdPath::Avx2, SimdPath::Avx512})
    if (cpu_supports(p)) v.push_back(p);
  return v;
}

// Restores the dispatch choice (set_simd_path) when a test ends.
struct PathGuard {
  SimdPath saved = simd_path();
  ~PathGuard() { set_simd_path(saved); }
};

inline void put(DType dt, float v, uint8_t* dst) {
  if (dt == DType::F32) {
    std::memcpy(dst, &v, 4);
  } else {
    const uint16_t h = dt == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
    std::memcpy(dst, &h, 2);
  }
}

inline float get(DType dt, const uint8_t* src) {
  if (dt == DType::F32) {
    float v;
    std::memcpy(&v, src, 4);
    return v;
  }
  uint16_t h;
  std::memcpy(&h, src, 2);
  return dt == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

}  // namespace mx::test
