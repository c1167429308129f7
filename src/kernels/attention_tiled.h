// Tiled (flash-attention style) causal attention for a run of query tokens of one sequence,
// written once over the vector traits of ops_attention.h and included after it by ops_avx2.cc
// and ops_avx512.cc.
//
// A tile of kQT tokens x G query heads (one kv head) walks the K/V rows in chunks of V::kW
// positions. Each chunk (kW rows of K and V, a few KB) stays in L1 while every register group
// of R query rows uses it: scores as an R x kW block (each K vector load feeds R FMAs), the
// causal mask per row, online softmax per row, then P.V into the rows' accumulators (each V
// vector load feeds R FMAs). K/V are read once per tile instead of once per token; state is
// O(kQT * G * head_dim).
//
// Per row, the operations and their order are exactly those of attention_chunk /
// attention_heads for that query alone: a masked position's weight is exactly 0 and adds
// nothing, so tiled prefill is bit-identical to the single-query kernel on the same path
// (prefill == decode, and results do not depend on how tokens are grouped into tiles).
#pragma once
#include <algorithm>
#include <vector>

namespace mx::ops {
namespace {

constexpr int kQT = 64;  // tokens per tile: accumulators of 64 x G rows stay in L2

// One chunk [p0, p0 + npg) for R rows; np[j] in [0, npg] is row j's visible part of it
// (0: the row has ended, its state is left as it is).
template <class V, DType DT, int R>
inline void tile_chunk(const float* qg, const KvRows& K, const KvRows& Vr, int p0, int npg,
                       const int* np, int hd, float scale, size_t head_off, float* m, float* l,
                       float* acc) {
  using vec = typename V::vec;
  constexpr int W = V::kW;
  constexpr size_t esz = DT == DType::F32 ? 4 : 2;
  const int nc = hd / W;
  alignas(64) float part[R][W][W];
  alignas(64) float pw[R][W];
  float rs[R];
  for (int p = 0; p < npg; ++p) {
    const uint8_t* kr = K.data + static_cast<size_t>(p0 + p) * K.row_stride + head_off;
    vec a0[R], a1[R];
    MX_UNROLL for (int j = 0; j < R; ++j) a0[j] = a1[j] = V::zero();
    int c = 0;
    for (; c + 1 < nc; c += 2) {
      const vec k0 = V::template load_kv<DT>(kr + c * W * esz);
      const vec k1 = V::template load_kv<DT>(kr + (c + 1) * W * esz);
      MX_UNROLL for (int j = 0; j < R; ++j) {
        a0[j] = V::fmadd(V::load(qg + j * hd + c * W), k0, a0[j]);
        a1[j] = V::fmadd(V::load(qg + j * hd + (c + 1) * W), k1, a1[j]);
      }
    }
    if (c < nc) {
      const vec k0 = V::template load_kv<DT>(kr + c * W * esz);
      MX_UNROLL for (int j = 0; j < R; ++j) a0[j] = V::fmadd(V::load(qg + j * hd + c * W), k0, a0[j]);
    }
    MX_UNROLL for (int j = 0; j < R; ++j) V::store(part[j][p], V::add(a0[j], a1[j]));
  }
  for (int j = 0; j < R; ++j) {
    if (np[j] <= 0) {  // finished row: weight 0, scale 1 leave it exactly as it is
      rs[j] = 1.f;
      V::store(pw[j], V::zero());
      continue;
    }
    for (int p = npg; p < W; ++p) V::store(part[j][p], V::zero());
    vec pv[W];
    MX_UNROLL for (int p = 0; p < W; ++p) pv[p] = V::load(part[j][p]);
    const vec s = V::mask_tail(V::mul(V::reduce_w(pv), V::set1(scale)), np[j]);
    const float cm = V::reduce_max(s);
    const float mn = m[j] > cm ? m[j] : cm;
    const vec e = V::exp(V::add(s, V::set1(-mn)));
    rs[j] = ::expf(m[j] - mn);
    l[j] = l[j] * rs[j] + V::reduce_add(e);
    m[j] = mn;
    V::store(pw[j], e);
  }
  int c = 0;
  for (; c + 1 < nc; c += 2) {
    vec a0[R], a1[R];
    MX_UNROLL for (int j = 0; j < R; ++j) {
      const vec r = V::set1(rs[j]);
      a0[j] = V::mul(V::load(acc + j * hd + c * W), r);
      a1[j] = V::mul(V::load(acc + j * hd + (c + 1) * W), r);
    }
    for (int p = 0; p < npg; ++p) {
      const uint8_t* vr = Vr.data + static_cast<size_t>(p0 + p) * Vr.row_stride + head_off;
      const vec v0 = V::template load_kv<DT>(vr + c * W * esz);
      const vec v1 = V::template load_kv<DT>(vr + (c + 1) * W * esz);
      MX_UNROLL for (int j = 0; j < R; ++j) {
        const vec w = V::set1(pw[j][p]);
        a0[j] = V::fmadd(w, v0, a0[j]);
        a1[j] = V::fmadd(w, v1, a1[j]);
      }
    }
    MX_UNROLL for (int j = 0; j < R; ++j) {
      V::store(acc + j * hd + c * W, a0[j]);
      V::store(acc + j * hd + (c + 1) * W, a1[j]);
    }
  }
  if (c < nc) {
    vec a0[R];
    MX_UNROLL for (int j = 0; j < R; ++j) a0[j] = V::mul(V::load(acc + j * hd + c * W), V::set1(rs[j]));
    for (int p = 0; p < npg; ++p) {
      const uint8_t* vr = Vr.data + static_cast<size_t>(p0 + p) * Vr.row_stride + head_off;
      const vec v0 = V::template load_kv<DT>(vr + c * W * esz);
      MX_UNROLL for (int j = 0; j < R; ++j) a0[j] = V::fmadd(V::set1(pw[j][p]), v0, a0[j]);
    }
    MX_UNROLL for (int j = 0; j < R; ++j) V::store(acc + j * hd + c * W, a0[j]);
  }
}

// Tokens [0, n_tok) (q/out rows `stride` floats apart) against kv head g; R = TR tokens x G.
template <class V, DType DT, int G, int R>
void attention_tile_head(const float* q, int n_tok, int64_t stride, const int* n_kv,
                         const KvRows& K, const KvRows& Vr, int hd, float scale, float* out,
                         int g) {
  constexpr int W = V::kW;
  constexpr int TR = R / G;
  constexpr size_t esz = DT == DType::F32 ? 4 : 2;
  const size_t head_off = static_cast<size_t>(g) * hd * esz;
  const int max_rows = (kQT + TR - 1) / TR * R;
  std::vector<float> buf(static_cast<size_t>(2 * max_rows) * hd + 16);
  float* qb = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
  float* acc = qb + static_cast<size_t>(max_rows) * hd;
  std::vector<float> m(static_cast<size_t>(max_rows)), l(static_cast<size_t>(max_rows));
  std::vector<int> rkv(static_cast<size_t>(max_rows));
  for (int t0 = 0; t0 < n_tok; t0 += kQT) {
    const int nt = std::min(kQT, n_tok - t0);
    const int ngr = (nt + TR - 1) / TR, rows = ngr * R;
    // Rows token-major (token, head of the group); padding rows see nothing (n_kv 0).
    int top = 0;
    for (int r = 0; r < rows; ++r) {
      const int t = r / G, j = r % G;
      float* qr = qb + static_cast<size_t>(r) * hd;
      if (t < nt) {
        std::copy_n(q + (t0 + t) * stride + static_cast<size_t>(g * G + j) * hd, hd, qr);
        rkv[static_cast<size_t>(r)] = n_kv[t0 + t];
      } else {
        std::fill_n(qr, hd, 0.f);
        rkv[static_cast<size_t>(r)] = 0;
      }
      top = std::max(top, rkv[static_cast<size_t>(r)]);
      m[static_cast<size_t>(r)] = -INFINITY;
      l[static_cast<size_t>(r)] = 0.f;
      std::fill_n(acc + static_cast<size_t>(r) * hd, hd, 0.f);
    }
    for (int p0 = 0; p0 < top; p0 += W) {
      for (int p = p0 + W; p < p0 + 2 * W && p < top; ++p) {
        for (size_t o = 0; o < static_cast<size_t>(hd) * esz; o += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(K.data + static_cast<size_t>(p) * K.row_stride + head_off + o), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(Vr.data + static_cast<size_t>(p) * Vr.row_stride + head_off + o), _MM_HINT_T0);
        }
      }
      for (int gr = 0; gr < ngr; ++gr) {
        int np[R], npg = 0;
        MX_UNROLL for (int j = 0; j < R; ++j) {
          const int v = rkv[static_cast<size_t>(gr * R + j)] - p0;
          np[j] = v < 0 ? 0 : (v > W ? W : v);
          npg = np[j] > npg ? np[j] : npg;
        }
        if (npg == 0) continue;
        const size_t r0 = static_cast<size_t>(gr) * R;
        tile_chunk<V, DT, R>(qb + r0 * hd, K, Vr, p0, npg, np, hd, scale, head_off, m.data() + r0,
                             l.data() + r0, acc + r0 * hd);
      }
    }
    for (int r = 0; r < nt * G; ++r) {
      const int t = r / G, j = r % G;
      const typename V::vec inv = V::set1(1.f / l[static_cast<size_t>(r)]);
      float* o = out + (t0 + t) * stride + static_cast<size_t>(g * G + j) * hd;
      const float* a = acc + static_cast<size_t>(r) * hd;
      for (int c = 0; c < hd / W; ++c) V::store(o + c * W, V::mul(V::load(a + c * W), inv));
    }
  }
}

// Same shapes as attention_simd; others go to the single-query kernel token by token.
template <class V, int RB>
void attention_tile_simd(const float* q, int n_tok, int64_t stride, const int* n_kv,
                         const KvRows& k, const KvRows& v, int n_heads, int n_kv_heads,
                         int head_dim, float scale, float* out, int g) {
  const int group = n_heads / n_kv_heads;
  const bool ok = k.dtype == v.dtype && head_dim % V::kW == 0 && head_dim <= 256 &&
                  (group == 1 || group == 2 || group == 4 || group == 8) &&
                  (k.dtype == DType::F32 || k.dtype == DType::F16 || k.dtype == DType::BF16);
  if (!ok) {
    for (int t = 0; t < n_tok; ++t)
      attention_simd<V>(q + t * stride, k, v, n_kv[t], n_heads, n_kv_heads, head_dim, scale,
                        out + t * stride, g, g + 1);
    return;
  }
#define MX_TILE_G(DT)                                                                                        \
  switch (group) {                                                                                           \
    case 1: attention_tile_head<V, DT, 1, RB>(q, n_tok, stride, n_kv, k, v, head_dim, scale, out, g); break; \
    case 2: attention_tile_head<V, DT, 2, RB>(q, n_tok, stride, n_kv, k, v, head_dim, scale, out, g); break; \
    case 4: attention_tile_head<V, DT, 4, (RB > 4 ? RB : 4)>(q, n_tok, stride, n_kv, k, v, head_dim, scale, out, g); break; \
    default: attention_tile_head<V, DT, 8, 8>(q, n_tok, stride, n_kv, k, v, head_dim, scale, out, g); break; \
  }
  if (k.dtype == DType::F32) {
    MX_TILE_G(DType::F32)
  } else if (k.dtype == DType::F16) {
    MX_TILE_G(DType::F16)
  } else {
    MX_TILE_G(DType::BF16)
  }
#undef MX_TILE_G
}

}  // namespace
}  // namespace mx::ops
