// Single-query attention written once over a vector-traits type V, included by ops_avx2.cc and
// ops_avx512.cc (internal linkage: each file compiles its own copy with its own ISA flags).
//
// Positions are taken in chunks of V::kW (one vector of scores per query head), each chunk for
// all selected kv heads in turn; per kv head:
//   scores: each K row is widened once and dotted with every query head of the group (two
//           accumulators per head to hide FMA latency); the kW partial vectors of a head are
//           reduced together by one transpose-add (V::reduce_w) instead of kW horizontal sums;
//   online softmax per chunk: new max, rescale factor exp(m_old - m_new), p = exp(s - m_new);
//   PV: each V row is widened once per pair of 1/kW-slices and accumulated into every head.
// V provides: vec, kW, zero, set1, load, store, add, mul, fmadd, exp, reduce_add, reduce_max,
// reduce_w(vec[kW]), mask_tail(vec, n) (lanes >= n -> -inf), load_kv<DType>(bytes) (kW values).
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/ops.h"

#ifndef MX_ATTN_PF
#define MX_ATTN_PF 1
#endif
#ifndef MX_UNROLL
// GCC -O2 does not completely unroll short fixed-count loops; register tiles (arrays of
// vectors indexed by such loops) would then live on the stack.
#define MX_UNROLL _Pragma("GCC unroll 16")
#endif

namespace mx::ops {
namespace {

// Running state of one kv head's G query heads.
template <int G>
struct HeadState {
  float m[G], l[G];
  float* acc;  // [G][hd]
};

// Positions [p0, p0 + np) (np <= W) of kv head g.
template <class V, DType DT, int G>
inline void attention_chunk(const float* q, const KvRows& K, const KvRows& Vr, int p0, int np,
                            int hd, float scale, int g, HeadState<G>& st) {
  using vec = typename V::vec;
  constexpr int W = V::kW;
  constexpr size_t esz = DT == DType::F32 ? 4 : 2;
  const int nc = hd / W;  // slices of W values per head
  alignas(64) float part[G][W][W];
  alignas(64) float pw[G][W];
  float rs[G];
  const float* qh = q + static_cast<size_t>(g) * G * hd;
  const size_t head_off = static_cast<size_t>(g) * hd * esz;
  for (int p = 0; p < np; ++p) {
    const uint8_t* kr = K.data + static_cast<size_t>(p0 + p) * K.row_stride + head_off;
    vec a0[G], a1[G];
    MX_UNROLL for (int j = 0; j < G; ++j) a0[j] = a1[j] = V::zero();
    int c = 0;
    for (; c + 1 < nc; c += 2) {
      const vec k0 = V::template load_kv<DT>(kr + c * W * esz);
      const vec k1 = V::template load_kv<DT>(kr + (c + 1) * W * esz);
      MX_UNROLL for (int j = 0; j < G; ++j) {
        a0[j] = V::fmadd(V::load(qh + j * hd + c * W), k0, a0[j]);
        a1[j] = V::fmadd(V::load(qh + j * hd + (c + 1) * W), k1, a1[j]);
      }
    }
    if (c < nc) {
      const vec k0 = V::template load_kv<DT>(kr + c * W * esz);
      MX_UNROLL for (int j = 0; j < G; ++j) a0[j] = V::fmadd(V::load(qh + j * hd + c * W), k0, a0[j]);
    }
    MX_UNROLL for (int j = 0; j < G; ++j) V::store(part[j][p], V::add(a0[j], a1[j]));
  }
  MX_UNROLL for (int j = 0; j < G; ++j) {
    for (int p = np; p < W; ++p) V::store(part[j][p], V::zero());
    vec pv[W];
    MX_UNROLL for (int p = 0; p < W; ++p) pv[p] = V::load(part[j][p]);
    const vec s = V::mask_tail(V::mul(V::reduce_w(pv), V::set1(scale)), np);
    const float cm = V::reduce_max(s);
    const float mn = st.m[j] > cm ? st.m[j] : cm;
    const vec e = V::exp(V::add(s, V::set1(-mn)));
    rs[j] = ::expf(st.m[j] - mn);  // 0 on the first chunk (m = -inf)
    st.l[j] = st.l[j] * rs[j] + V::reduce_add(e);
    st.m[j] = mn;
    V::store(pw[j], e);
  }
  int c = 0;
  for (; c + 1 < nc; c += 2) {
    vec a0[G], a1[G];
    MX_UNROLL for (int j = 0; j < G; ++j) {
      const vec r = V::set1(rs[j]);
      a0[j] = V::mul(V::load(st.acc + j * hd + c * W), r);
      a1[j] = V::mul(V::load(st.acc + j * hd + (c + 1) * W), r);
    }
    for (int p = 0; p < np; ++p) {
      const uint8_t* vr = Vr.data + static_cast<size_t>(p0 + p) * Vr.row_stride + head_off;
      const vec v0 = V::template load_kv<DT>(vr + c * W * esz);
      const vec v1 = V::template load_kv<DT>(vr + (c + 1) * W * esz);
      MX_UNROLL for (int j = 0; j < G; ++j) {
        const vec w = V::set1(pw[j][p]);
        a0[j] = V::fmadd(w, v0, a0[j]);
        a1[j] = V::fmadd(w, v1, a1[j]);
      }
    }
    MX_UNROLL for (int j = 0; j < G; ++j) {
      V::store(st.acc + j * hd + c * W, a0[j]);
      V::store(st.acc + j * hd + (c + 1) * W, a1[j]);
    }
  }
  if (c < nc) {
    vec a0[G];
    MX_UNROLL for (int j = 0; j < G; ++j) a0[j] = V::mul(V::load(st.acc + j * hd + c * W), V::set1(rs[j]));
    for (int p = 0; p < np; ++p) {
      const uint8_t* vr = Vr.data + static_cast<size_t>(p0 + p) * Vr.row_stride + head_off;
      const vec v0 = V::template load_kv<DT>(vr + c * W * esz);
      MX_UNROLL for (int j = 0; j < G; ++j) a0[j] = V::fmadd(V::set1(pw[j][p]), v0, a0[j]);
    }
    MX_UNROLL for (int j = 0; j < G; ++j) V::store(st.acc + j * hd + c * W, a0[j]);
  }
}

// Kv heads [g0, g1): each chunk of positions is processed for every head before the next
// chunk, so K/V rows are read contiguously (all selected heads of a row) instead of one
// head-sized piece per row per pass. Per-head arithmetic does not depend on the head range.
template <class V, DType DT, int G>
void attention_heads(const float* q, const KvRows& K, const KvRows& Vr, int n_kv, int hd,
                     float scale, float* out, int g0, int g1) {
  constexpr int W = V::kW;
  const int nc = hd / W;
  const int nh = g1 - g0;
  float* acc = static_cast<float*>(__builtin_alloca(static_cast<size_t>(nh) * G * hd * 4 + 64));
  acc = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(acc) + 63) & ~uintptr_t{63});
  HeadState<G>* st = static_cast<HeadState<G>*>(__builtin_alloca(sizeof(HeadState<G>) * static_cast<size_t>(nh)));
  for (int h = 0; h < nh; ++h) {
    st[h].acc = acc + static_cast<size_t>(h) * G * hd;
    MX_UNROLL for (int j = 0; j < G; ++j) {
      st[h].m[j] = -INFINITY;
      st[h].l[j] = 0.f;
      for (int c = 0; c < nc; ++c) V::store(st[h].acc + j * hd + c * W, V::zero());
    }
  }
  constexpr size_t esz = DT == DType::F32 ? 4 : 2;
  const size_t span = static_cast<size_t>(nh) * hd * esz, first = static_cast<size_t>(g0) * hd * esz;
  for (int p0 = 0; p0 < n_kv; p0 += W) {
    const int np = n_kv - p0 < W ? n_kv - p0 : W;
    // The rows of a later chunk are strided (row_stride apart): fetch them ahead explicitly.
    const int pf0 = p0 + MX_ATTN_PF * W;
    for (int p = pf0; p < pf0 + W && p < n_kv; ++p) {
      for (size_t o = 0; o < span; o += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(K.data + static_cast<size_t>(p) * K.row_stride + first + o), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(Vr.data + static_cast<size_t>(p) * Vr.row_stride + first + o), _MM_HINT_T0);
      }
    }
    for (int h = 0; h < nh; ++h) attention_chunk<V, DT, G>(q, K, Vr, p0, np, hd, scale, g0 + h, st[h]);
  }
  for (int h = 0; h < nh; ++h) {
    MX_UNROLL for (int j = 0; j < G; ++j) {
      const typename V::vec inv = V::set1(1.f / st[h].l[j]);
      float* o = out + (static_cast<size_t>(g0 + h) * G + j) * hd;
      for (int c = 0; c < nc; ++c) V::store(o + c * W, V::mul(V::load(st[h].acc + j * hd + c * W), inv));
    }
  }
}

// Dispatches on cache dtype and group size; shapes the template does not cover go to ref.
template <class V>
void attention_simd(const float* q, const KvRows& k, const KvRows& v, int n_kv, int n_heads,
                    int n_kv_heads, int head_dim, float scale, float* out, int g0, int g1) {
  if (g1 < 0) g1 = n_kv_heads;
  const int group = n_heads / n_kv_heads;
  const bool ok = k.dtype == v.dtype && head_dim % V::kW == 0 && head_dim <= 256 &&
                  (group == 1 || group == 2 || group == 4 || group == 8) &&
                  (k.dtype == DType::F32 || k.dtype == DType::F16 || k.dtype == DType::BF16);
  if (!ok) return ref::attention(q, k, v, n_kv, n_heads, n_kv_heads, head_dim, scale, out, g0, g1);
  if (g1 <= g0) return;
#define MX_ATTN_G(DT)                                                                        \
  switch (group) {                                                                           \
    case 1: attention_heads<V, DT, 1>(q, k, v, n_kv, head_dim, scale, out, g0, g1); break;  \
    case 2: attention_heads<V, DT, 2>(q, k, v, n_kv, head_dim, scale, out, g0, g1); break;  \
    case 4: attention_heads<V, DT, 4>(q, k, v, n_kv, head_dim, scale, out, g0, g1); break;  \
    default: attention_heads<V, DT, 8>(q, k, v, n_kv, head_dim, scale, out, g0, g1); break; \
  }
  if (k.dtype == DType::F32) {
    MX_ATTN_G(DType::F32)
  } else if (k.dtype == DType::F16) {
    MX_ATTN_G(DType::F16)
  } else {
    MX_ATTN_G(DType::BF16)
  }
#undef MX_ATTN_G
}

}  // namespace
}  // namespace mx::ops
