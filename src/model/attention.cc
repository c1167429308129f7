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
  const int64_t stride = static_cast<int64_t>(nh) * hd;
  // Work units: runs of consecutive positions of one slot (a prefill chunk) in tiles of up to
  // kTile tokens go to the tiled kernel; lone tokens (decode) and tokens whose sliding window
  // has moved off position 0 to the single-query kernel. Both give the same bits per token.
  constexpr int kTile = 64;
  struct Unit {
    int64_t t0;
    int n;
    bool tiled;
  };
  std::vector<Unit> units;
  std::vector<int> n_kv(static_cast<size_t>(T));
  for (int64_t t = 0; t < T;) {
    int64_t e = t + 1;
    const auto windowed = [&](int64_t i) { return c.sliding_window > 0 && tp[static_cast<size_t>(i)].pos >= c.sliding_window; };
    if (!windowed(t)) {
      while (e < T && e - t < kTile && tp[static_cast<size_t>(e)].slot == tp[static_cast<size_t>(t)].slot &&
             tp[static_cast<size_t>(e)].pos == tp[static_cast<size_t>(e - 1)].pos + 1 && !windowed(e))
        ++e;
    }
    for (int64_t i = t; i < e; ++i) n_kv[static_cast<size_t>(i)] = tp[static_cast<size_t>(i)].pos + 1;
    units.push_back({t, static_cast<int>(e - t), e - t > 1});
    t = e;
  }
  // kv head outermost: parallel_for's contiguous split then gives each thread whole heads of
  // every tile, balancing the causal triangle (later tiles cost more). A thread's range holds,
  // for each unit, a run of consecutive heads; single-query units take that run in one call,
  // which reads each cached row's heads as one contiguous piece instead of one head-sized
  // piece per pass (decode attention at 16k: ~10-15% less time; same bits per head).
  const int64_t nu = static_cast<int64_t>(units.size());
  pool.parallel_for(nu * nkv, [&](int64_t b, int64_t e, int) {
    for (int64_t ui = 0; ui < nu; ++ui) {
      // Heads g with b <= g * nu + ui < e.
      const int g_lo = static_cast<int>(b <= ui ? 0 : (b - ui + nu - 1) / nu);
      const int g_hi = static_cast<int>(e <= ui ? 0 : (e - 1 - ui) / nu + 1);
      if (g_lo >= g_hi) continue;
      const Unit& u = units[static_cast<size_t>(ui)];
      const TokenPos p = tp[static_cast<size_t>(u.t0)];
      if (u.tiled) {
        ops::KvRows k{kv.dtype(), kv.k_rows(p.slot, layer), kv.row_bytes()};
        ops::KvRows v{kv.dtype(), kv.v_rows(p.slot, layer), kv.row_bytes()};
        for (int g = g_lo; g < g_hi; ++g)
          ops::attention_tokens(q + u.t0 * stride, u.n, stride, n_kv.data() + u.t0, k, v, nh, nkv, hd,
                                scale, out + u.t0 * stride, g);
        continue;
      }
      const int first = c.sliding_window > 0 ? std::max(0, p.pos - c.sliding_window + 1) : 0;
      const size_t off = static_cast<size_t>(first) * kv.row_bytes();
      ops::KvRows k{kv.dtype(), kv.k_rows(p.slot, layer) + off, kv.row_bytes()};
      ops::KvRows v{kv.dtype(), kv.v_rows(p.slot, layer) + off, kv.row_bytes()};
      ops::attention(q + u.t0 * stride, k, v, p.pos - first + 1, nh, nkv, hd, scale,
                     out + u.t0 * stride, g_lo, g_hi);
    }
  });
}

}  // namespace mx
