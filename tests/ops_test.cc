// ops.h: each SIMD path on this CPU against the scalar reference, the reference against
// double-precision math, and attention against a naive softmax(q K^T) V.
// Tolerances (float32 kernels; the SIMD exp is a polynomial good to ~2 ulp):
//   rmsnorm, silu_mul, add, scale, axpy, rope: 4e-6 relative per element (+1e-30 absolute);
//   softmax: 4e-6 relative + 1e-9 absolute; attention: 2e-5 * max|V| absolute.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <random>
#include <vector>

#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernel_test_util.h"

namespace mx {
namespace {

using test::all_paths;
using test::get;
using test::put;

using test::PathGuard;

std::vector<float> randv(int64_t n, std::mt19937& rng, float lo = -3.f, float hi = 3.f) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = u(rng);
  return v;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel,
                  double abs, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rel * std::fabs(want[i]) + abs) << what << " i=" << i;
}

const int64_t kSizes[] = {1, 3, 8, 15, 16, 17, 33, 64, 100, 4099};

// CTest runs the suites again with MIXTRAL_SIMD forced (CMakeLists.txt): the dispatcher must
// really use that path, or those runs would test the default path twice.
TEST(Ops, ForcedPathIsTheOneInUse) {
  const char* env = std::getenv("MIXTRAL_SIMD");
  if (!env) GTEST_SKIP() << "MIXTRAL_SIMD not set";
  const std::string want = env;
  if (want == "scalar" || (want == "avx2" && cpu_supports(SimdPath::Avx2))) {
    EXPECT_EQ(simd_path_name(simd_path()), want);
  } else {
    EXPECT_EQ(simd_path(), simd_path_for_env(env));
  }
}

TEST(Ops, ElementwiseMatchReference) {
  PathGuard guard;
  std::mt19937 rng(1);
  for (SimdPath p : all_paths()) {
    set_simd_path(p);
    const std::string tag = simd_path_name(p);
    for (int64_t n : kSizes) {
      const auto x = randv(n, rng), w = randv(n, rng, 0.5f, 1.5f), b = randv(n, rng);
      std::vector<float> got(x.size()), want(x.size());
      ops::rmsnorm(x.data(), w.data(), n, 1e-5f, got.data());
      ops::ref::rmsnorm(x.data(), w.data(), n, 1e-5f, want.data());
      expect_close(got, want, 4e-6, 1e-30, tag + " rmsnorm n=" + std::to_string(n));
      // In place.
      got = x;
      ops::rmsnorm(got.data(), w.data(), n, 1e-5f, got.data());
      expect_close(got, want, 4e-6, 1e-30, tag + " rmsnorm in place");

      const auto a = randv(n, rng, -100.f, 100.f);
      ops::silu_mul(a.data(), b.data(), n, got.data());
      ops::ref::silu_mul(a.data(), b.data(), n, want.data());
      expect_close(got, want, 4e-6, 1e-30, tag + " silu_mul n=" + std::to_string(n));

      ops::add(x.data(), b.data(), n, got.data());
      ops::ref::add(x.data(), b.data(), n, want.data());
      expect_close(got, want, 0, 0, tag + " add");

      got = x;
      want = x;
      ops::scale(got.data(), n, 0.37f);
      ops::ref::scale(want.data(), n, 0.37f);
      expect_close(got, want, 0, 0, tag + " scale");

      got = b;
      want = b;
      ops::axpy(-1.7f, x.data(), n, got.data());
      ops::ref::axpy(-1.7f, x.data(), n, want.data());
      expect_close(got, want, 4e-6, 4e-6, tag + " axpy");
    }
  }
}

TEST(Ops, RmsnormMatchesDouble) {
  std::mt19937 rng(2);
  const int64_t n = 4096;
  const auto x = randv(n, rng), w = randv(n, rng, 0.5f, 1.5f);
  std::vector<float> y(n);
  ops::ref::rmsnorm(x.data(), w.data(), n, 1e-5f, y.data());
  double ss = 0;
  for (float v : x) ss += static_cast<double>(v) * v;
  const double inv = 1.0 / std::sqrt(ss / n + 1e-5);
  for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(y[i], x[i] * inv * w[i], 1e-6 * std::fabs(x[i] * inv * w[i]) + 1e-30);
}

TEST(Ops, SoftmaxMatchesReference) {
  PathGuard guard;
  std::mt19937 rng(3);
  for (SimdPath p : all_paths()) {
    set_simd_path(p);
    for (int64_t n : kSizes) {
      auto x = randv(n, rng, -40.f, 40.f);
      if (n > 4) x[3] = -INFINITY;  // masked entry
      auto got = x, want = x;
      ops::softmax(got.data(), n);
      ops::ref::softmax(want.data(), n);
      expect_close(got, want, 4e-6, 1e-9, simd_path_name(p) + " softmax n=" + std::to_string(n));
      double sum = 0, ds = 0, mx = -INFINITY;
      for (float v : x) mx = std::max<double>(mx, v);
      for (float v : x) ds += std::exp(v - mx);
      for (int64_t i = 0; i < n; ++i) {
        sum += got[i];
        ASSERT_NEAR(got[i], std::exp(x[i] - mx) / ds, 4e-6 * std::exp(x[i] - mx) / ds + 1e-9);
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
  }
}

TEST(Ops, RopeTablesAndLayouts) {
  PathGuard guard;
  std::mt19937 rng(4);
  const std::vector<int32_t> pos = {0, 1, 7, 4095, 32767};
  for (int hd : {16, 40, 128}) {
    const int half = hd / 2;
    std::vector<float> c(pos.size() * half), s(pos.size() * half);
    ops::rope_tables(pos.data(), static_cast<int64_t>(pos.size()), hd, 1e6, c.data(), s.data());
    for (size_t t = 0; t < pos.size(); ++t)
      for (int i = 0; i < half; ++i) {
        const double a = pos[t] * (1.0 / std::pow(1e6, 2.0 * i / hd));
        ASSERT_EQ(c[t * half + i], static_cast<float>(std::cos(a)));
        ASSERT_EQ(s[t * half + i], static_cast<float>(std::sin(a)));
      }
    for (ops::RopeLayout layout : {ops::RopeLayout::Interleaved, ops::RopeLayout::RotateHalf}) {
      const int n_heads = 3;
      const int64_t stride = n_heads * hd + 5;  // padded rows
      const auto x = randv(static_cast<int64_t>(pos.size()) * stride, rng);
      auto want = x;
      ops::ref::rope(want.data(), static_cast<int64_t>(pos.size()), stride, n_heads, hd, c.data(), s.data(), layout);
      // The reference rotates the right pairs: check one against double math.
      {
        const size_t t = 3;
        const int h = 2, i = half - 1;
        const int a = layout == ops::RopeLayout::Interleaved ? 2 * i : i;
        const int b = layout == ops::RopeLayout::Interleaved ? 2 * i + 1 : i + half;
        const double x0 = x[t * stride + h * hd + a], x1 = x[t * stride + h * hd + b];
        const double cs = c[t * half + i], sn = s[t * half + i];
        EXPECT_NEAR(want[t * stride + h * hd + a], x0 * cs - x1 * sn, 1e-5);
        EXPECT_NEAR(want[t * stride + h * hd + b], x0 * sn + x1 * cs, 1e-5);
        EXPECT_EQ(want[t * stride + n_heads * hd], x[t * stride + n_heads * hd]);  // padding untouched
      }
      for (SimdPath p : all_paths()) {
        set_simd_path(p);
        auto got = x;
        ops::rope(got.data(), static_cast<int64_t>(pos.size()), stride, n_heads, hd, c.data(), s.data(), layout);
        expect_close(got, want, 4e-6, 4e-6, simd_path_name(p) + " rope hd=" + std::to_string(hd));
      }
    }
  }
}

// ---- attention

struct Cache {
  DType dt;
  int n_kv, kv_dim;
  size_t stride;
  std::vector<uint8_t> k, v;
  ops::KvRows krows() const { return {dt, k.data(), stride}; }
  ops::KvRows vrows() const { return {dt, v.data(), stride}; }
};

Cache make_cache(DType dt, int n_kv, int kv_dim, std::mt19937& rng) {
  Cache c{dt, n_kv, kv_dim, 0, {}, {}};
  const size_t esz = dt == DType::F32 ? 4 : 2;
  c.stride = (static_cast<size_t>(kv_dim) + 3) * esz;  // padded rows
  c.k.resize(c.stride * n_kv);
  c.v.resize(c.stride * n_kv);
  std::normal_distribution<float> g(0.f, 1.f);
  for (int p = 0; p < n_kv; ++p)
    for (int i = 0; i < kv_dim; ++i) {
      put(dt, g(rng) * 2.f, &c.k[p * c.stride + i * esz]);
      put(dt, g(rng), &c.v[p * c.stride + i * esz]);
    }
  return c;
}

// softmax(scale * q K^T) V in double, for every query head.
std::vector<double> naive_attention(const std::vector<float>& q, const Cache& c, int n_heads,
                                    int n_kv_heads, int hd, float scale) {
  const size_t esz = c.dt == DType::F32 ? 4 : 2;
  const int group = n_heads / n_kv_heads;
  std::vector<double> out(static_cast<size_t>(n_heads) * hd, 0.0);
  for (int h = 0; h < n_heads; ++h) {
    const int g = h / group;
    std::vector<double> s(c.n_kv);
    double mx = -INFINITY;
    for (int p = 0; p < c.n_kv; ++p) {
      double d = 0;
      for (int i = 0; i < hd; ++i) d += static_cast<double>(q[h * hd + i]) * get(c.dt, &c.k[p * c.stride + (g * hd + i) * esz]);
      s[p] = d * scale;
      mx = std::max(mx, s[p]);
    }
    double sum = 0;
    for (double& v : s) sum += (v = std::exp(v - mx));
    for (int p = 0; p < c.n_kv; ++p)
      for (int i = 0; i < hd; ++i)
        out[h * hd + i] += s[p] / sum * get(c.dt, &c.v[p * c.stride + (g * hd + i) * esz]);
  }
  return out;
}

TEST(Ops, AttentionMatchesNaive) {
  PathGuard guard;
  std::mt19937 rng(5);
  struct Case { int n_heads, n_kv_heads, hd; };
  const Case cases[] = {{4, 2, 16}, {8, 2, 128}, {4, 4, 64}, {8, 1, 48}, {16, 2, 32}, {2, 1, 20}, {6, 2, 32}};
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (const Case& cs : cases) {
      for (int n_kv : {1, 5, 16, 17, 100, 700}) {
        const Cache c = make_cache(dt, n_kv, cs.n_kv_heads * cs.hd, rng);
        const auto q = randv(static_cast<int64_t>(cs.n_heads) * cs.hd, rng, -1.f, 1.f);
        const float scale = 1.f / std::sqrt(static_cast<float>(cs.hd));
        const auto want = naive_attention(q, c, cs.n_heads, cs.n_kv_heads, cs.hd, scale);
        double vmax = 0;
        for (int p = 0; p < n_kv; ++p)
          for (int i = 0; i < c.kv_dim; ++i)
            vmax = std::max<double>(vmax, std::fabs(get(dt, &c.v[p * c.stride + i * (dt == DType::F32 ? 4 : 2)])));
        for (SimdPath p : all_paths()) {
          set_simd_path(p);
          std::vector<float> out(q.size(), std::nanf(""));
          ops::attention(q.data(), c.krows(), c.vrows(), n_kv, cs.n_heads, cs.n_kv_heads, cs.hd, scale, out.data());
          for (size_t i = 0; i < out.size(); ++i)
            ASSERT_NEAR(out[i], want[i], 2e-5 * vmax)
                << simd_path_name(p) << " " << dtype_info(dt).name << " heads=" << cs.n_heads << "/"
                << cs.n_kv_heads << " hd=" << cs.hd << " n_kv=" << n_kv << " i=" << i;
          // A kv-head range computes exactly those heads, bit for bit the same.
          if (cs.n_kv_heads > 1) {
            std::vector<float> part(q.size(), -7.f);
            const int group = cs.n_heads / cs.n_kv_heads;
            ops::attention(q.data(), c.krows(), c.vrows(), n_kv, cs.n_heads, cs.n_kv_heads, cs.hd, scale,
                           part.data(), 1, 2);
            for (size_t i = 0; i < part.size(); ++i) {
              const bool in = static_cast<int>(i) / cs.hd / group == 1;
              if (in) {
                ASSERT_EQ(0, std::memcmp(&part[i], &out[i], 4)) << i;
              } else {
                ASSERT_EQ(part[i], -7.f) << i;
              }
            }
          }
        }
      }
    }
  }
}

TEST(Ops, AttentionLargeScoresStayFinite) {
  PathGuard guard;
  std::mt19937 rng(6);
  Cache c = make_cache(DType::F32, 40, 64, rng);
  std::vector<float> q(64 * 2);
  for (float& v : q) v = 30.f;  // scores in the hundreds: online softmax must not overflow
  const auto want = naive_attention(q, c, 2, 1, 64, 1.f);
  for (SimdPath p : all_paths()) {
    set_simd_path(p);
    std::vector<float> out(q.size());
    ops::attention(q.data(), c.krows(), c.vrows(), 40, 2, 1, 64, 1.f, out.data());
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_TRUE(std::isfinite(out[i]));
      ASSERT_NEAR(out[i], want[i], 1e-4) << simd_path_name(p);
    }
  }
}

}  // namespace
}  // namespace mx
