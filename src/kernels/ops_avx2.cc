// AVX2 + FMA + F16C versions of ops.h. Ragged tails go through a zero-padded 8-float buffer so
// every element sees the same vector arithmetic.
#include <immintrin.h>

#include <cstring>

#include "kernels/ops_internal.h"

// GCC 12's intrinsic headers trip -W(maybe-)uninitialized on their own _mm*_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/ops_attention.h"
#include "kernels/attention_tiled.h"

namespace mx::ops {
namespace {

// Same algorithm and constants as exp512 (ops_avx512.cc).
inline __m256 exp256(__m256 x) {
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.f)), _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct V256 {
  using vec = __m256;
  static constexpr int kW = 8;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec set1(float f) { return _mm256_set1_ps(f); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static vec exp(vec x) { return exp256(x); }
  static float reduce_add(vec v) { return hsum8(v); }
  static float reduce_max(vec v) { return hmax8(v); }
  static vec mask_tail(vec v, int n) {
    const __m256 keep = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, keep);
  }
  template <DType DT>
  static vec load_kv(const uint8_t* p) {
    if constexpr (DT == DType::F32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    } else if constexpr (DT == DType::F16) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else {
      const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
  }
  static vec reduce_w(const vec* v) {  // lane i = sum of v[i]
    __m256 t[4], u[2];
    MX_UNROLL for (int k = 0; k < 4; ++k)
      t[k] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                           _mm256_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    MX_UNROLL for (int k = 0; k < 2; ++k)
      u[k] = _mm256_add_ps(_mm256_shuffle_ps(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm256_shuffle_ps(t[2 * k], t[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20),
                         _mm256_permute2f128_ps(u[0], u[1], 0x31));
  }
};

// Applies f to full 8-float vectors, then to a zero-padded copy of the tail.
template <class F>
inline void each8(int64_t n, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) f(i, 8);
  if (i < n) f(i, static_cast<int>(n - i));
}

inline __m256 load_n(const float* p, int k) {
  if (k == 8) return _mm256_loadu_ps(p);
  alignas(32) float b[8] = {};
  std::memcpy(b, p, static_cast<size_t>(k) * 4);
  return _mm256_load_ps(b);
}
inline void store_n(float* p, __m256 v, int k) {
  if (k == 8) return _mm256_storeu_ps(p, v);
  alignas(32) float b[8];
  _mm256_store_ps(b, v);
  std::memcpy(p, b, static_cast<size_t>(k) * 4);
}

void rmsnorm256(const float* x, const float* w, int64_t n, float eps, float* out) {
  __m256 ss = _mm256_setzero_ps();
  each8(n, [&](int64_t i, int k) {
    const __m256 v = load_n(x + i, k);
    ss = _mm256_fmadd_ps(v, v, ss);
  });
  const __m256 vi = _mm256_set1_ps(1.f / __builtin_sqrtf(hsum8(ss) / static_cast<float>(n) + eps));
  each8(n, [&](int64_t i, int k) {
    store_n(out + i, _mm256_mul_ps(_mm256_mul_ps(load_n(x + i, k), vi), load_n(w + i, k)), k);
  });
}

void softmax256(float* x, int64_t n) {
  __m256 mx = _mm256_set1_ps(-INFINITY);
  each8(n, [&](int64_t i, int k) {
    mx = _mm256_max_ps(mx, V256::mask_tail(load_n(x + i, k), k));
  });
  const __m256 m = _mm256_set1_ps(hmax8(mx));
  __m256 sum = _mm256_setzero_ps();
  each8(n, [&](int64_t i, int k) {
    const __m256 e = exp256(_mm256_sub_ps(V256::mask_tail(load_n(x + i, k), k), m));
    store_n(x + i, e, k);
    sum = _mm256_add_ps(sum, e);
  });
  const __m256 inv = _mm256_set1_ps(1.f / hsum8(sum));
  each8(n, [&](int64_t i, int k) { store_n(x + i, _mm256_mul_ps(load_n(x + i, k), inv), k); });
}

void silu_mul256(const float* a, const float* b, int64_t n, float* out) {
  each8(n, [&](int64_t i, int k) {
    const __m256 av = load_n(a + i, k);
    const __m256 den = _mm256_add_ps(_mm256_set1_ps(1.f), exp256(_mm256_sub_ps(_mm256_setzero_ps(), av)));
    store_n(out + i, _mm256_mul_ps(_mm256_div_ps(av, den), load_n(b + i, k)), k);
  });
}

void add256(const float* a, const float* b, int64_t n, float* out) {
  each8(n, [&](int64_t i, int k) {
    store_n(out + i, _mm256_add_ps(load_n(a + i, k), load_n(b + i, k)), k);
  });
}

void scale256(float* x, int64_t n, float s) {
  const __m256 vs = _mm256_set1_ps(s);
  each8(n, [&](int64_t i, int k) { store_n(x + i, _mm256_mul_ps(load_n(x + i, k), vs), k); });
}

void axpy256(float a, const float* x, int64_t n, float* y) {
  const __m256 va = _mm256_set1_ps(a);
  each8(n, [&](int64_t i, int k) {
    store_n(y + i, _mm256_fmadd_ps(va, load_n(x + i, k), load_n(y + i, k)), k);
  });
}

void rope256(float* x, int64_t n_tokens, int64_t row_stride, int n_heads, int head_dim,
             const float* cos, const float* sin, RopeLayout layout) {
  const int half = head_dim / 2;
  const __m256 neg_even = _mm256_castsi256_ps(_mm256_setr_epi32(INT32_MIN, 0, INT32_MIN, 0, INT32_MIN, 0, INT32_MIN, 0));
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + t * row_stride + static_cast<int64_t>(h) * head_dim;
      int i = 0;
      if (layout == RopeLayout::Interleaved) {
        for (; i + 4 <= half; i += 4) {  // 4 pairs per vector
          const __m128 c4 = _mm_loadu_ps(c + i), s4 = _mm_loadu_ps(s + i);
          const __m256 cd = _mm256_set_m128(_mm_unpackhi_ps(c4, c4), _mm_unpacklo_ps(c4, c4));
          const __m256 sd = _mm256_xor_ps(_mm256_set_m128(_mm_unpackhi_ps(s4, s4), _mm_unpacklo_ps(s4, s4)), neg_even);
          const __m256 xv = _mm256_loadu_ps(v + 2 * i);
          const __m256 sw = _mm256_permute_ps(xv, _MM_SHUFFLE(2, 3, 0, 1));
          _mm256_storeu_ps(v + 2 * i, _mm256_fmadd_ps(sw, sd, _mm256_mul_ps(xv, cd)));
        }
        for (; i < half; ++i) {
          const float x0 = v[2 * i], x1 = v[2 * i + 1];
          v[2 * i] = x0 * c[i] - x1 * s[i];
          v[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
      } else {
        for (; i + 8 <= half; i += 8) {
          const __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_loadu_ps(s + i);
          const __m256 xa = _mm256_loadu_ps(v + i), xb = _mm256_loadu_ps(v + half + i);
          _mm256_storeu_ps(v + i, _mm256_fmsub_ps(xa, cv, _mm256_mul_ps(xb, sv)));
          _mm256_storeu_ps(v + half + i, _mm256_fmadd_ps(xa, sv, _mm256_mul_ps(xb, cv)));
        }
        for (; i < half; ++i) {
          const float x0 = v[i], x1 = v[half + i];
          v[i] = x0 * c[i] - x1 * s[i];
          v[half + i] = x0 * s[i] + x1 * c[i];
        }
      }
    }
  }
}

constexpr OpsTable kTable = {rmsnorm256, softmax256, silu_mul256, add256, scale256,
                             axpy256,    rope256,    attention_simd<V256>,
                             attention_tile_simd<V256, 4>};

}  // namespace

const OpsTable& ops_avx2() { return kTable; }

}  // namespace mx::ops
