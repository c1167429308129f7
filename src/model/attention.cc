#include "model/attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/half.h"
#include "kernels/thread_pool.h"

namespace mx {

RopeTable make_rope_table(const std::vector<TokenPos>& tp, const ModelConfig& c) {
  RopeTable rt;
  rt.half = c.head_dim / 2;
  rt.cos.resize(tp.size() * static_cast<size_t>(rt.half));
  rt.sin.resize(rt.cos.size());
  for (size_t t = 0; t < tp.size(); ++t) {
    for (int i = 0; i < rt.half; ++i) {
      // Angles in double: positions up to 32k times small frequencies lose digits in float.
      const double freq = 1.0 / std::pow(static_cast<double>(c.rope_theta), 2.0 * i / c.head_dim);
      const double a = tp[t].pos * freq;
      rt.cos[t * rt.half + i] = static_cast<float>(std::cos(a));
      rt.sin[t * rt.half + i] = static_cast<float>(std::sin(a));
    }
  }
  return rt;
}

void apply_rope(const RopeTable& rt, const ModelConfig& c, float* x, int n_heads, int T) {
  const int hd = c.head_dim, half = rt.half;
  for (int t = 0; t < T; ++t) {
    const float* cs = &rt.cos[static_cast<size_t>(t) * half];
    const float* sn = &rt.sin[static_cast<size_t>(t) * half];
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<size_t>(t) * n_heads + h) * hd;
      for (int i = 0; i < half; ++i) {
        // Interleaved: pair (2i, 2i+1). Rotate-half: pair (i, i + hd/2).
        const int a = c.rope_interleaved ? 2 * i : i;
        const int b = c.rope_interleaved ? 2 * i + 1 : i + half;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * cs[i] - x1 * sn[i];
        v[b] = x0 * sn[i] + x1 * cs[i];
      }
    }
  }
}

namespace {

inline void load_row(DType d, const uint8_t* src, float* dst, int n) {
  if (d == DType::F32) {
    std::copy_n(reinterpret_cast<const float*>(src), n, dst);
  } else if (d == DType::F16) {
    const auto* s = reinterpret_cast<const uint16_t*>(src);
    for (int i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
  } else {
    const auto* s = reinterpret_cast<const uint16_t*>(src);
    for (int i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
  }
}

}  // namespace

void attention(const KvCache& kv, int layer, const std::vector<TokenPos>& tp,
               const ModelConfig& c, const float* q, float* out, ThreadPool& pool) {
  const int hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads, group = nh / nkv;
  const int kvdim = nkv * hd;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  const int T = static_cast<int>(tp.size());
  // One work item per (token, kv head): the group's query heads share each K/V row read.
  pool.parallel_for(static_cast<int64_t>(T) * nkv, [&](int64_t b, int64_t e, int) {
    std::vector<float> krow(static_cast<size_t>(hd)), vrow(static_cast<size_t>(hd));
    std::vector<float> m(static_cast<size_t>(group)), l(static_cast<size_t>(group)),
        acc(static_cast<size_t>(group) * hd);
    for (int64_t it = b; it < e; ++it) {
      const int t = static_cast<int>(it / nkv), g = static_cast<int>(it % nkv);
      const TokenPos p = tp[static_cast<size_t>(t)];
      const uint8_t* K = kv.k_rows(p.slot, layer);
      const uint8_t* V = kv.v_rows(p.slot, layer);
      const int first = c.sliding_window > 0 ? std::max(0, p.pos - c.sliding_window + 1) : 0;
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(acc.begin(), acc.end(), 0.f);
      // Online softmax: one pass over positions, rescaling the running sums as the max grows.
      for (int s = first; s <= p.pos; ++s) {
        const size_t off = static_cast<size_t>(s) * kv.row_bytes() +
                           row_bytes(kv.dtype(), static_cast<int64_t>(g) * hd);
        load_row(kv.dtype(), K + off, krow.data(), hd);
        load_row(kv.dtype(), V + off, vrow.data(), hd);
        for (int j = 0; j < group; ++j) {
          const float* qh = q + static_cast<size_t>(t) * nh * hd + static_cast<size_t>(g * group + j) * hd;
          float dot = 0.f;
          for (int i = 0; i < hd; ++i) dot += qh[i] * krow[static_cast<size_t>(i)];
          dot *= scale;
          float* a = &acc[static_cast<size_t>(j) * hd];
          if (dot > m[static_cast<size_t>(j)]) {
            const float r = std::exp(m[static_cast<size_t>(j)] - dot);
            l[static_cast<size_t>(j)] *= r;
            for (int i = 0; i < hd; ++i) a[i] *= r;
            m[static_cast<size_t>(j)] = dot;
          }
          const float w = std::exp(dot - m[static_cast<size_t>(j)]);
          l[static_cast<size_t>(j)] += w;
          for (int i = 0; i < hd; ++i) a[i] += w * vrow[static_cast<size_t>(i)];
        }
      }
      for (int j = 0; j < group; ++j) {
        float* o = out + static_cast<size_t>(t) * nh * hd + static_cast<size_t>(g * group + j) * hd;
        const float inv = 1.f / l[static_cast<size_t>(j)];
        for (int i = 0; i < hd; ++i) o[i] = acc[static_cast<size_t>(j) * hd + i] * inv;
      }
    }
  });
  (void)kvdim;
}

}  // namespace mx
