// Tiled prefill attention (ops::attention_tokens, model attention()) on every SIMD path:
//   * bit-identical (memcmp) to the single-query kernel ops::attention for each token alone,
//     across tile edges (runs of 1..130 tokens, tiles of 64), context offsets, GQA groups,
//     head sizes and f32/f16/bf16 caches;
//   * within 2e-5 * max|V| of softmax(q K^T) V computed in double (the ops_test tolerance);
//   * the model's attention() (tiles, decode tokens, two slots, sliding windows) gives each
//     token the bits of ops::attention over its visible rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernel_test_util.h"
#include "kernels/thread_pool.h"
#include "model/attention.h"

namespace mx {
namespace {

using test::all_paths;
using test::get;
using test::put;

using test::PathGuard;

struct Rows {
  DType dt;
  size_t stride;
  std::vector<uint8_t> k, v;
  ops::KvRows krows() const { return {dt, k.data(), stride}; }
  ops::KvRows vrows() const { return {dt, v.data(), stride}; }
};

Rows make_rows(DType dt, int n, int kv_dim, std::mt19937& rng) {
  const size_t esz = dt == DType::F32 ? 4 : 2;
  Rows r{dt, (static_cast<size_t>(kv_dim) + 5) * esz, {}, {}};  // padded rows
  r.k.resize(r.stride * n);
  r.v.resize(r.stride * n);
  std::normal_distribution<float> g(0.f, 1.f);
  for (int p = 0; p < n; ++p)
    for (int i = 0; i < kv_dim; ++i) {
      put(dt, g(rng) * 2.f, &r.k[p * r.stride + i * esz]);
      put(dt, g(rng), &r.v[p * r.stride + i * esz]);
    }
  return r;
}

std::vector<float> randq(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& f : v) f = u(rng);
  return v;
}

// softmax(scale * q_h K^T) V over rows [0, n) in double, one head.
double naive(const float* qh, const Rows& r, int n, int g, int hd, float scale, int i) {
  const size_t esz = r.dt == DType::F32 ? 4 : 2;
  std::vector<double> s(static_cast<size_t>(n));
  double mx = -INFINITY, sum = 0, o = 0;
  for (int p = 0; p < n; ++p) {
    double d = 0;
    for (int x = 0; x < hd; ++x) d += static_cast<double>(qh[x]) * get(r.dt, &r.k[p * r.stride + (g * hd + x) * esz]);
    s[static_cast<size_t>(p)] = d * scale;
    mx = std::max(mx, d * scale);
  }
  for (double& v : s) sum += (v = std::exp(v - mx));
  for (int p = 0; p < n; ++p) o += s[static_cast<size_t>(p)] / sum * get(r.dt, &r.v[p * r.stride + (g * hd + i) * esz]);
  return o;
}

TEST(TiledAttention, EqualsSingleQueryBitForBitAndNaive) {
  PathGuard guard;
  std::mt19937 rng(11);
  struct Case { int n_heads, n_kv_heads, hd; };
  const Case cases[] = {{8, 2, 128}, {4, 4, 64}, {8, 1, 48}, {4, 2, 16}, {16, 2, 32}, {6, 2, 32}};
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (const Case& cs : cases) {
      const int kv_dim = cs.n_kv_heads * cs.hd;
      const int64_t stride = static_cast<int64_t>(cs.n_heads) * cs.hd + 3;  // padded q/out rows
      const float scale = 1.f / std::sqrt(static_cast<float>(cs.hd));
      for (const int n_tok : {1, 2, 3, 17, 64, 65, 130}) {
        for (const int start : {0, 5, 31}) {
          const Rows r = make_rows(dt, start + n_tok, kv_dim, rng);
          const auto q = randq(static_cast<size_t>(n_tok * stride), rng);
          std::vector<int> n_kv(static_cast<size_t>(n_tok));
          for (int t = 0; t < n_tok; ++t) n_kv[static_cast<size_t>(t)] = start + t + 1;
          for (SimdPath p : all_paths()) {
            set_simd_path(p);
            const std::string what = std::string(simd_path_name(p)) + " " + std::string(dtype_info(dt).name) + " heads=" +
                                     std::to_string(cs.n_heads) + "/" + std::to_string(cs.n_kv_heads) +
                                     " hd=" + std::to_string(cs.hd) + " tokens=" + std::to_string(n_tok) +
                                     " start=" + std::to_string(start);
            std::vector<float> tiled(q.size(), -7.f), one(q.size(), -7.f);
            for (int g = 0; g < cs.n_kv_heads; ++g)
              ops::attention_tokens(q.data(), n_tok, stride, n_kv.data(), r.krows(), r.vrows(), cs.n_heads,
                                    cs.n_kv_heads, cs.hd, scale, tiled.data(), g);
            for (int t = 0; t < n_tok; ++t)
              ops::attention(q.data() + t * stride, r.krows(), r.vrows(), n_kv[static_cast<size_t>(t)],
                             cs.n_heads, cs.n_kv_heads, cs.hd, scale, one.data() + t * stride);
            ASSERT_EQ(0, std::memcmp(tiled.data(), one.data(), tiled.size() * 4)) << what;
            // The padding between rows is never written.
            for (int t = 0; t < n_tok; ++t)
              for (int i = cs.n_heads * cs.hd; i < stride; ++i) ASSERT_EQ(tiled[static_cast<size_t>(t * stride + i)], -7.f);
            if (p != SimdPath::Scalar && n_tok > 3 && start == 5 && cs.hd == 128) {
              double vmax = 0;
              for (int x = 0; x < (start + n_tok) * kv_dim; ++x)
                vmax = std::max<double>(vmax, std::fabs(get(dt, &r.v[(x / kv_dim) * r.stride + (x % kv_dim) * (dt == DType::F32 ? 4 : 2)])));
              const int group = cs.n_heads / cs.n_kv_heads;
              for (int t : {0, n_tok / 2, n_tok - 1})
                for (int h = 0; h < cs.n_heads; ++h)
                  for (int i = 0; i < cs.hd; i += 7)
                    ASSERT_NEAR(tiled[static_cast<size_t>(t * stride + h * cs.hd + i)],
                                naive(q.data() + t * stride + h * cs.hd, r, n_kv[static_cast<size_t>(t)], h / group, cs.hd,
                                      scale, i),
                                2e-5 * vmax)
                        << what << " t=" << t << " h=" << h << " i=" << i;
            }
          }
        }
      }
    }
  }
}

// The model's attention(): prefill runs (tiled), decode tokens and windowed tokens of two slots
// in one call, each token equal to ops::attention over its visible rows.
TEST(TiledAttention, ModelAttentionMatchesPerToken) {
  PathGuard guard;
  std::mt19937 rng(12);
  ThreadPool pool(2);
  ModelConfig c;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 32;
  const int kv_dim = c.n_kv_heads * c.head_dim, stride = c.n_heads * c.head_dim;
  for (const int window : {0, 40}) {
    c.sliding_window = window;
    for (DType dt : {DType::F32, DType::F16}) {
      KvCache kv(2, kv_dim, 256, dt);
      std::normal_distribution<float> gd(0.f, 1.f);
      // Slot 0: a prefill of 150 tokens after 10 cached; slot 1: one decode token at 57.
      std::vector<TokenPos> tp;
      for (int p = 10; p < 160; ++p) tp.push_back({0, p});
      tp.push_back({1, 57});
      for (int s : {0, 1}) {
        kv.reset(s);
        kv.reserve(s, 160);
        for (int p = 0; p < 160; ++p) {
          std::vector<float> k(static_cast<size_t>(kv_dim)), v(k.size());
          for (size_t i = 0; i < k.size(); ++i) k[i] = 2.f * gd(rng), v[i] = gd(rng);
          kv.write(s, 1, p, k.data(), v.data());
        }
      }
      const auto q = randq(tp.size() * stride, rng);
      const float scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
      for (SimdPath path : all_paths()) {
        set_simd_path(path);
        std::vector<float> out(q.size(), -7.f);
        attention(kv, 1, tp, c, q.data(), out.data(), pool);
        for (size_t t = 0; t < tp.size(); ++t) {
          const int first = window > 0 ? std::max(0, tp[t].pos - window + 1) : 0;
          const size_t off = static_cast<size_t>(first) * kv.row_bytes();
          const ops::KvRows k{dt, kv.k_rows(tp[t].slot, 1) + off, kv.row_bytes()};
          const ops::KvRows v{dt, kv.v_rows(tp[t].slot, 1) + off, kv.row_bytes()};
          std::vector<float> one(static_cast<size_t>(stride));
          ops::attention(q.data() + t * stride, k, v, tp[t].pos - first + 1, c.n_heads, c.n_kv_heads,
                         c.head_dim, scale, one.data());
          ASSERT_EQ(0, std::memcmp(one.data(), out.data() + t * stride, one.size() * 4))
              << simd_path_name(path) << " window=" << window << " token " << t;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mx
