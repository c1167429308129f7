#include "model/attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"
#include "kernels/thread_pool.h"

namespace mx {

RopeTable make_rope_table(const std::vector<TokenPos>& tp, const ModelConfig& c) {
  RopeTable rt;
  rt.half = c.head_dim / 2;
  rt.cos.resize(tp.size() * static_cast<size_t>(rt.half));
  rt.sin.resize(rt.cos.size());
  std::vector<int32_t> pos(tp.size());
  for (size_t t = 0; t < tp.size(); ++t) pos[t] = tp[t].pos;
  ops::rope_tables(pos.data(), static_cast<int64_t>(pos.size()), c.head_dim, c.rope_theta,
                   rt.cos.data(), rt.sin.data());
  return rt;
}

void apply_rope(const RopeTable& rt, const ModelConfig& c, float* x, int n_heads, int T) {
  ops::rope(x, T, static_cast<int64_t>(n_heads) * c.head_dim, n_heads, c.head_dim, rt.cos.data(),
            rt.sin.data(),
            c.rope_interleaved ? ops::RopeLayout::Interleaved : ops::RopeLayout::RotateHalf);
}

void attention(const KvCache& kv, int layer, const std::vector<TokenPos>& tp,
               const ModelConfig& c, const float* q, float* out, ThreadPool& pool) {
  const int hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  const int64_t T = static_cast<int64_t>(tp.size());
  // One work item per (token, kv head): the group's query heads share each K/V row read, and
  // long contexts of a single decode token still spread over every thread.
  pool.parallel_for(T * nkv, [&](int64_t b, int64_t e, int) {
    for (int64_t it = b; it < e; ++it) {
      const int64_t t = it / nkv;
      const int g = static_cast<int>(it % nkv);
      const TokenPos p = tp[static_cast<size_t>(t)];
      const int first = c.sliding_window > 0 ? std::max(0, p.pos - c.sliding_window + 1) : 0;
      const size_t off = static_cast<size_t>(first) * kv.row_bytes();
      ops::KvRows k{kv.dtype(), kv.k_rows(p.slot, layer) + off, kv.row_bytes()};
      ops::KvRows v{kv.dtype(), kv.v_rows(p.slot, layer) + off, kv.row_bytes()};
      ops::attention(q + t * nh * hd, k, v, p.pos - first + 1, nh, nkv, hd, scale,
                     out + t * nh * hd, g, g + 1);
    }
  });
}

}  // namespace mx
