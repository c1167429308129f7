// matmul: every SIMD path on this CPU against the scalar path, the scalar path against a
// double-precision dot with dequantized weights, and the determinism contract.
//
// Tolerances:
//  * SIMD vs scalar: block integer sums are exact on every path, so only float summation
//    order differs: |y_simd - y_scalar| <= 2e-6 * sum_i |w_i x_i| (+1e-30).
//  * Any path vs exact (double, dequantized weights): for quantized weights the error of the
//    Q8 activations is bounded by sum_blocks (amax_b / 254) * sum_{i in b} |w_i| (half a step
//    per value); we allow that bound * 1.02 plus 2e-6 * sum |w_i x_i| for float rounding.
//    f32/f16/bf16 weights: 2e-6 * sum |w_i x_i|.
//  * Determinism: bit-identical (memcmp).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>
#include <random>
#include <string>
#include <vector>

#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernel_test_util.h"
#include "kernels/matmul_internal.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"

namespace mx {
namespace {

const DType kAllTypes[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0,
                           DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1,
                           DType::Q4_K, DType::Q5_K, DType::Q6_K};

std::vector<SimdPath> simd_paths() {
  std::vector<SimdPath> v;
  for (SimdPath p : {SimdPath::Avx2, SimdPath::Avx512})
    if (cpu_supports(p)) v.push_back(p);
  return v;
}

using test::PathGuard;

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// Random weights: every bit pattern of the packed quants is valid, so blocks are random bytes
// with sane fp16 scales (a few rows get a large or tiny scale to widen the range covered).
std::vector<uint8_t> random_weights(DType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t rb = row_bytes(t, cols);
  std::vector<uint8_t> w(rb * static_cast<size_t>(rows));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> u(-1.f, 1.f), pos(0.002f, 0.02f);
  for (auto& b : w) b = static_cast<uint8_t>(byte(rng));
  const DTypeInfo& info = dtype_info(t);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = w.data() + r * rb;
    const float rs = r % 7 == 3 ? 50.f : r % 7 == 5 ? 0.02f : 1.f;
    if (!info.quantized) {
      for (int64_t i = 0; i < cols; ++i) {
        const float v = u(rng) * rs;
        if (t == DType::F32) std::memcpy(row + 4 * i, &v, 4);
        else if (t == DType::F16) put_f16(row + 2 * i, v);
        else { const uint16_t h = f32_to_bf16(v); std::memcpy(row + 2 * i, &h, 2); }
      }
      continue;
    }
    const int64_t nb = cols / info.block_elems;
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* blk = row + b * info.block_bytes;
      switch (t) {
        case DType::Q8_0: case DType::Q4_0: case DType::Q5_0:
          put_f16(blk, u(rng) * 0.05f * rs);
          break;
        case DType::Q4_1: case DType::Q5_1:
          put_f16(blk, pos(rng) * rs);
          put_f16(blk + 2, u(rng) * 0.1f * rs);
          break;
        case DType::Q4_K: case DType::Q5_K:
          put_f16(blk, pos(rng) * 0.1f * rs);
          put_f16(blk + 2, pos(rng) * 0.1f * rs);
          break;
        case DType::Q6_K:
          put_f16(blk + 208, pos(rng) * 0.1f * rs);
          break;
        default: break;
      }
    }
  }
  return w;
}

std::vector<float> random_acts(int64_t n_tokens, int64_t cols, std::mt19937& rng) {
  std::vector<float> x(static_cast<size_t>(n_tokens * cols));
  std::normal_distribution<float> g(0.f, 1.f);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float s = t % 5 == 1 ? 300.f : t % 5 == 3 ? 1e-3f : 1.f;  // per-token scale spread
    for (int64_t i = 0; i < cols; ++i) x[t * cols + i] = g(rng) * s;
    if (t % 4 == 2)  // a block of zeros (scale 0) and an outlier
      for (int64_t i = 0; i < std::min<int64_t>(cols, 32); ++i) x[t * cols + i] = 0.f;
    if (t % 3 == 0) x[t * cols + (cols - 1)] *= 40.f;
  }
  return x;
}

MatView view(DType t, const std::vector<uint8_t>& w, int64_t rows, int64_t cols) {
  MatView v;
  v.dtype = t;
  v.data = w.data();
  v.rows = rows;
  v.cols = cols;
  v.stride = row_bytes(t, cols);
  return v;
}

std::vector<float> run(SimdPath p, const MatView& w, const std::vector<float>& x, int64_t n,
                       ThreadPool& pool) {
  set_simd_path(p);
  std::vector<float> y(static_cast<size_t>(n * w.rows), std::nanf(""));
  matmul(w, x.data(), n, y.data(), pool);
  return y;
}

// Exact reference with dequantized weights; also the tolerance terms described on top.
struct Ref {
  std::vector<double> y, mag, qerr;
};
Ref reference(const MatView& w, const std::vector<float>& x, int64_t n) {
  const DTypeInfo& info = dtype_info(w.dtype);
  const int qb = !info.quantized ? 0 : info.block_elems == 256 ? 256 : 32;
  Ref r;
  r.y.resize(static_cast<size_t>(n * w.rows));
  r.mag.resize(r.y.size());
  r.qerr.resize(r.y.size());
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t o = 0; o < w.rows; ++o) {
    dequantize_row(w.dtype, w.row(o), row.data(), w.cols);
    for (int64_t t = 0; t < n; ++t) {
      const float* xt = x.data() + t * w.cols;
      double s = 0, m = 0, e = 0;
      for (int64_t i = 0; i < w.cols; ++i) {
        s += static_cast<double>(row[i]) * xt[i];
        m += std::fabs(static_cast<double>(row[i]) * xt[i]);
      }
      if (qb) {
        for (int64_t b = 0; b < w.cols / qb; ++b) {
          double amax = 0, wsum = 0;
          for (int i = 0; i < qb; ++i) {
            amax = std::max(amax, std::fabs(static_cast<double>(xt[b * qb + i])));
            wsum += std::fabs(static_cast<double>(row[b * qb + i]));
          }
          e += amax / 254.0 * wsum;
        }
      }
      r.y[t * w.rows + o] = s;
      r.mag[t * w.rows + o] = m;
      r.qerr[t * w.rows + o] = e;
    }
  }
  return r;
}

struct Shape {
  int64_t rows, cols, tokens;
};

std::vector<Shape> shapes_for(DType t) {
  const int be = dtype_info(t).block_elems;
  std::vector<Shape> s;
  if (be == 256) {
    for (int64_t cols : {256, 512, 1280})
      for (int64_t rows : {1, 6, 37})
        for (int64_t tok : {1, 3, 17, 33}) s.push_back({rows, cols, tok});
  } else if (be == 32) {
    for (int64_t cols : {32, 96, 256, 544})
      for (int64_t rows : {1, 7, 37})
        for (int64_t tok : {1, 3, 17, 33}) s.push_back({rows, cols, tok});
  } else {
    for (int64_t cols : {1, 7, 16, 33, 100, 256, 300})
      for (int64_t rows : {1, 5, 37})
        for (int64_t tok : {1, 3, 17, 33}) s.push_back({rows, cols, tok});
  }
  return s;
}

class MatmulTypes : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulTypes, ScalarMatchesExactWithinQuantError) {
  PathGuard guard;
  const DType t = GetParam();
  ThreadPool pool(2);
  std::mt19937 rng(1234 + static_cast<int>(t));
  for (const Shape& s : shapes_for(t)) {
    if (s.tokens == 33 || s.rows == 1) continue;  // enough coverage here; the SIMD test has all
    auto w = random_weights(t, s.rows, s.cols, rng);
    auto x = random_acts(s.tokens, s.cols, rng);
    const MatView v = view(t, w, s.rows, s.cols);
    const Ref ref = reference(v, x, s.tokens);
    const auto y = run(SimdPath::Scalar, v, x, s.tokens, pool);
    for (size_t i = 0; i < y.size(); ++i) {
      const double tol = ref.qerr[i] * 1.02 + 2e-6 * ref.mag[i] + 1e-30;
      ASSERT_NEAR(y[i], ref.y[i], tol) << dtype_info(t).name << " rows=" << s.rows
                                       << " cols=" << s.cols << " tokens=" << s.tokens << " i=" << i;
    }
  }
}

TEST_P(MatmulTypes, SimdMatchesScalar) {
  PathGuard guard;
  const DType t = GetParam();
  ThreadPool pool(2);
  std::mt19937 rng(99 + static_cast<int>(t));
  for (SimdPath p : simd_paths()) {
    for (const Shape& s : shapes_for(t)) {
      auto w = random_weights(t, s.rows, s.cols, rng);
      auto x = random_acts(s.tokens, s.cols, rng);
      const MatView v = view(t, w, s.rows, s.cols);
      const Ref ref = reference(v, x, s.tokens);
      const auto ys = run(SimdPath::Scalar, v, x, s.tokens, pool);
      const auto yv = run(p, v, x, s.tokens, pool);
      for (size_t i = 0; i < ys.size(); ++i) {
        ASSERT_NEAR(yv[i], ys[i], 2e-6 * ref.mag[i] + 1e-30)
            << simd_path_name(p) << " " << dtype_info(t).name << " rows=" << s.rows
            << " cols=" << s.cols << " tokens=" << s.tokens << " i=" << i;
      }
    }
  }
}

TEST_P(MatmulTypes, DeterministicAcrossBatchingAndThreads) {
  PathGuard guard;
  const DType t = GetParam();
  std::mt19937 rng(7 + static_cast<int>(t));
  const int64_t cols = dtype_info(t).block_elems == 256 ? 768 : dtype_info(t).quantized ? 352 : 203;
  const int64_t rows = 53, n = 17;
  auto w = random_weights(t, rows, cols, rng);
  auto x = random_acts(n, cols, rng);
  const MatView v = view(t, w, rows, cols);
  ThreadPool p1(1), p2(2), p3(3);
  std::vector<SimdPath> paths = simd_paths();
  paths.push_back(SimdPath::Scalar);
  for (SimdPath p : paths) {
    const auto batch = run(p, v, x, n, p2);
    // One token at a time.
    for (int64_t tk = 0; tk < n; ++tk) {
      std::vector<float> xt(x.begin() + tk * cols, x.begin() + (tk + 1) * cols);
      const auto one = run(p, v, xt, 1, p1);
      ASSERT_EQ(0, std::memcmp(one.data(), batch.data() + tk * rows, rows * sizeof(float)))
          << simd_path_name(p) << " token " << tk;
    }
    // Ragged sub-batches (different tile splits) at other offsets.
    for (int64_t start : {0, 1, 5}) {
      for (int64_t len : {2, 3, 7, 12}) {
        if (start + len > n) continue;
        std::vector<float> xs(x.begin() + start * cols, x.begin() + (start + len) * cols);
        const auto sub = run(p, v, xs, len, p3);
        ASSERT_EQ(0, std::memcmp(sub.data(), batch.data() + start * rows, len * rows * sizeof(float)))
            << simd_path_name(p) << " start " << start << " len " << len;
      }
    }
    for (ThreadPool* pool : {&p1, &p3}) {
      const auto y = run(p, v, x, n, *pool);
      ASSERT_EQ(0, std::memcmp(y.data(), batch.data(), y.size() * sizeof(float)))
          << simd_path_name(p) << " threads " << pool->size();
    }
    // A row sub-range (as a sharded run would see it) gives the same rows.
    MatView part = v;
    part.data = v.row(9);
    part.rows = 30;
    std::vector<float> yp(static_cast<size_t>(n * part.rows));
    matmul(part, x.data(), n, yp.data(), p2);
    for (int64_t tk = 0; tk < n; ++tk)
      ASSERT_EQ(0, std::memcmp(yp.data() + tk * part.rows, batch.data() + tk * rows + 9,
                               part.rows * sizeof(float)))
          << simd_path_name(p) << " row shard, token " << tk;
  }
}

// Wide rows: activations no longer fit L1, so the GEMV switches to multi-row tiles; the results
// must still match the batched GEMM bit for bit (and the scalar path within tolerance).
TEST(Matmul, DeterministicLongRows) {
  PathGuard guard;
  std::mt19937 rng(11);
  ThreadPool p1(1), p2(2);
  for (DType t : {DType::F32, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_K}) {
    const int64_t cols = t == DType::F32 || t == DType::BF16 ? 9000 : 30720, rows = 11, n = 5;
    auto w = random_weights(t, rows, cols, rng);
    auto x = random_acts(n, cols, rng);
    const MatView v = view(t, w, rows, cols);
    std::vector<SimdPath> paths = simd_paths();
    const auto ys = run(SimdPath::Scalar, v, x, n, p2);
    const Ref ref = reference(v, x, n);
    for (SimdPath p : paths) {
      const auto batch = run(p, v, x, n, p2);
      for (size_t i = 0; i < ys.size(); ++i)
        ASSERT_NEAR(batch[i], ys[i], 2e-6 * ref.mag[i] + 1e-30) << simd_path_name(p);
      for (int64_t tk = 0; tk < n; ++tk) {
        std::vector<float> xt(x.begin() + tk * cols, x.begin() + (tk + 1) * cols);
        const auto one = run(p, v, xt, 1, p1);
        ASSERT_EQ(0, std::memcmp(one.data(), batch.data() + tk * rows, rows * sizeof(float)))
            << simd_path_name(p) << " " << dtype_info(t).name << " token " << tk;
      }
    }
  }
}

// Q8_0 has several multi-token kernels on the AVX-512 path (register-transposed tiles up to
// 16 tokens, packed 32-row x 4-token and 16-row x 8-token tiles, ragged row groups); every
// token count must give each token exactly its one-token GEMV result.
// Every token count 2..n against one GEMV per token, bit for bit (each token count picks its
// own tiling / packing path).
// Rows of r16_base(t) interleaved into the r16 type t, group by group (rows % 16 == 0).
std::vector<uint8_t> interleaved(DType t, const std::vector<uint8_t>& w, int64_t rows, int64_t cols) {
  std::vector<uint8_t> wi(w.size());
  const size_t gb = 16 * row_bytes(t, cols);
  for (int64_t g = 0; g < rows / 16; ++g) interleave_r16(t, w.data() + g * gb, cols, wi.data() + g * gb);
  return wi;
}

// Random weights of the base type, interleaved when t is an r16 type.
std::vector<uint8_t> random_weights_any(DType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  auto w = random_weights(r16_base(t), rows, cols, rng);
  return is_r16(t) ? interleaved(t, w, rows, cols) : w;
}

void token_counts_match_gemv(DType t, int64_t rows, int64_t cols, int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  auto w = random_weights_any(t, rows, cols, rng);
  auto x = random_acts(n, cols, rng);
  const MatView v = view(t, w, rows, cols);
  ThreadPool p1(1), p2(2);
  for (SimdPath p : simd_paths()) {
    std::vector<std::vector<float>> one(n);
    for (int64_t tk = 0; tk < n; ++tk) {
      std::vector<float> xt(x.begin() + tk * cols, x.begin() + (tk + 1) * cols);
      one[tk] = run(p, v, xt, 1, p1);
    }
    for (int64_t len = 2; len <= n; ++len) {
      std::vector<float> xs(x.begin(), x.begin() + len * cols);
      const auto y = run(p, v, xs, len, len % 2 ? p1 : p2);
      for (int64_t tk = 0; tk < len; ++tk)
        ASSERT_EQ(0, std::memcmp(one[tk].data(), y.data() + tk * rows, rows * sizeof(float)))
            << simd_path_name(p) << " " << dtype_info(t).name << " tokens " << len << " token " << tk;
    }
  }
}

TEST(Matmul, Q8TokenCountsMatchGemvBitForBit) {
  PathGuard guard;
  token_counts_match_gemv(DType::Q8_0, 87, 320, 41, 21);  // 5 full 16-row groups + 7 rows
}

TEST(Matmul, Q4TokenCountsMatchGemvBitForBit) {
  PathGuard guard;
  // 5 full 16-row groups + 7 rows; 11 blocks (odd: a lone last block, ragged last group of 4).
  token_counts_match_gemv(DType::Q4_0, 87, 352, 41, 22);
  token_counts_match_gemv(DType::Q4_0, 40, 256, 35, 23);  // 8 blocks: whole groups only
}

// Q8_0R16 is Q8_0 reordered: on every path (native kernels on AVX-512 VNNI, a deinterleaving
// copy elsewhere) and every token count it must give Q8_0's results bit for bit, with row
// ranges split over threads, for even and odd block counts, K chunks with a partial last one
// (1440 columns: 45 blocks) and a lone last 16-row group.
TEST(Matmul, Q8R16MatchesQ8_0BitForBit) {
  PathGuard guard;
  std::mt19937 rng(31);
  ThreadPool p1(1), p2(2);
  std::vector<SimdPath> paths = simd_paths();
  paths.push_back(SimdPath::Scalar);
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{16, 32}, {48, 96}, {80, 4096}, {64, 1440}}) {
    const auto w = random_weights(DType::Q8_0, rows, cols, rng);
    const auto wi = interleaved(DType::Q8_0R16, w, rows, cols);
    const MatView v = view(DType::Q8_0, w, rows, cols), vi = view(DType::Q8_0R16, wi, rows, cols);
    for (int64_t n : {1, 2, 5, 8, 9, 16, 17, 23, 40}) {
      const auto x = random_acts(n, cols, rng);
      for (SimdPath p : paths) {
        for (ThreadPool* pool : {&p1, &p2}) {
          const auto a = run(p, v, x, n, *pool), b = run(p, vi, x, n, *pool);
          ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)))
              << simd_path_name(p) << " rows " << rows << " cols " << cols << " tokens " << n
              << " threads " << pool->size();
        }
      }
    }
    // matmul_multi over two interleaved matrices (w1/w3 style) equals separate calls.
    const auto x = random_acts(7, cols, rng);
    std::vector<float> y0(7 * rows), y1(7 * rows);
    float* ys[2] = {y0.data(), y1.data()};
    const MatView two[2] = {vi, vi};
    set_simd_path(paths.front());
    matmul_multi(two, ys, 2, x.data(), 7, p2);
    const auto a = run(paths.front(), v, x, 7, p2);
    ASSERT_EQ(0, std::memcmp(a.data(), y0.data(), a.size() * sizeof(float)));
    ASSERT_EQ(0, std::memcmp(a.data(), y1.data(), a.size() * sizeof(float)));
  }
}

// Q4_0R16 uses Q8_0's exact block sums, not the Q4_0 kernels' float order: within the SIMD
// tolerance of Q4_0 on every path, bit-identical between AVX2 and AVX-512 (the same sequence
// per row and token), and every token count equal to its GEMV bit for bit.
TEST(Matmul, Q4R16MatchesQ4_0AndItsGemv) {
  PathGuard guard;
  std::mt19937 rng(41);
  ThreadPool p1(1), p2(2);
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{16, 32}, {48, 96}, {80, 4096}, {64, 1440}}) {
    const auto w = random_weights(DType::Q4_0, rows, cols, rng);
    const auto wi = interleaved(DType::Q4_0R16, w, rows, cols);
    const MatView v = view(DType::Q4_0, w, rows, cols), vi = view(DType::Q4_0R16, wi, rows, cols);
    for (int64_t n : {1, 3, 8, 9, 17, 40}) {
      const auto x = random_acts(n, cols, rng);
      const Ref ref = reference(v, x, n);
      const auto scalar = run(SimdPath::Scalar, vi, x, n, p2);
      std::vector<float> first;
      for (SimdPath p : simd_paths()) {
        const auto a = run(p, v, x, n, p2), b = run(p, vi, x, n, p1);
        for (size_t i = 0; i < a.size(); ++i) {
          ASSERT_NEAR(b[i], a[i], 4e-6 * ref.mag[i] + 1e-30) << simd_path_name(p) << " " << i;
          ASSERT_NEAR(b[i], scalar[i], 4e-6 * ref.mag[i] + 1e-30) << simd_path_name(p) << " " << i;
        }
        if (first.empty()) first = b;
        else ASSERT_EQ(0, std::memcmp(first.data(), b.data(), b.size() * sizeof(float))) << simd_path_name(p);
      }
    }
  }
  token_counts_match_gemv(DType::Q4_0R16, 96, 352, 41, 42);  // 11 blocks, 3 pairs
}

// The interleaved k-quants have one kernel per path with the same exact integer sums and the
// same float steps (matmul_kr16_*.cc, rows_kr16 in matmul_scalar.cc): AVX-512, AVX2 and scalar
// agree bit for bit, on every token count (the AVX-512 token tiles and their ragged tails),
// (and from MX_KR16_PRE tokens on, planes unpacked once per group), whole rows split over
// threads and matmul_multi. Against the row-major k-quant kernels (same
// Q8_K activations, other float order) they stay within the SIMD tolerance.
TEST(Matmul, KR16AllPathsBitIdenticalAndMatchBase) {
  PathGuard guard;
  std::mt19937 rng(51);
  ThreadPool p1(1), p2(2);
  for (DType t : {DType::Q4_KR16, DType::Q5_KR16, DType::Q6_KR16}) {
    for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{16, 256}, {48, 512}, {64, 1280}, {32, 4096}}) {
      const auto w = random_weights(r16_base(t), rows, cols, rng);
      const auto wi = interleaved(t, w, rows, cols);
      const MatView v = view(r16_base(t), w, rows, cols), vi = view(t, wi, rows, cols);
      for (int64_t n : {1, 2, 4, 5, 7, 9, 17, 19, 31}) {
        const auto x = random_acts(n, cols, rng);
        const Ref ref = reference(v, x, n);
        const auto scalar = run(SimdPath::Scalar, vi, x, n, p2);
        for (size_t i = 0; i < scalar.size(); ++i)
          ASSERT_NEAR(scalar[i], ref.y[i], 1.02 * ref.qerr[i] + 2e-6 * ref.mag[i] + 1e-30)
              << dtype_info(t).name << " " << i;
        for (SimdPath p : simd_paths()) {
          const auto a = run(p, v, x, n, p2);
          for (ThreadPool* pool : {&p1, &p2}) {
            const auto b = run(p, vi, x, n, *pool);
            ASSERT_EQ(0, std::memcmp(scalar.data(), b.data(), b.size() * sizeof(float)))
                << simd_path_name(p) << " " << dtype_info(t).name << " rows " << rows << " cols "
                << cols << " tokens " << n << " threads " << pool->size();
          }
          for (size_t i = 0; i < a.size(); ++i)
            ASSERT_NEAR(scalar[i], a[i], 4e-6 * ref.mag[i] + 1e-30) << simd_path_name(p) << " " << i;
        }
      }
      // matmul_multi over two interleaved matrices (w1/w3 style) equals separate calls.
      const auto x = random_acts(6, cols, rng);
      std::vector<float> y0(6 * rows), y1(6 * rows);
      float* ys[2] = {y0.data(), y1.data()};
      const MatView two[2] = {vi, vi};
      for (SimdPath p : simd_paths()) {
        set_simd_path(p);
        matmul_multi(two, ys, 2, x.data(), 6, p2);
        const auto a = run(p, vi, x, 6, p1);
        ASSERT_EQ(0, std::memcmp(a.data(), y0.data(), a.size() * sizeof(float)));
        ASSERT_EQ(0, std::memcmp(a.data(), y1.data(), a.size() * sizeof(float)));
      }
    }
    token_counts_match_gemv(t, 48, 768, 13, 52);
  }
}

TEST(Matmul, Q8R16RejectsPartialGroups) {
  std::vector<uint8_t> w(row_bytes(DType::Q8_0, 64) * 24);
  const MatView v = view(DType::Q8_0R16, w, 24, 64);
  std::vector<float> x(64, 1.f), y(24);
  ThreadPool pool(1);
  EXPECT_THROW(matmul(v, x.data(), 1, y.data(), pool), std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulTypes, ::testing::ValuesIn(kAllTypes),
                         [](const ::testing::TestParamInfo<DType>& i) {
                           return std::string(dtype_info(i.param).name);
                         });

// Quantizing weights with the reference encoder, then multiplying, stays close to the f32
// product (end-to-end sanity of the formats the engine writes).
TEST(Matmul, QuantizedCloseToF32) {
  PathGuard guard;
  std::mt19937 rng(5);
  const int64_t rows = 24, cols = 512, n = 3;
  std::vector<float> wf(static_cast<size_t>(rows * cols));
  std::normal_distribution<float> g(0.f, 0.02f);
  for (float& v : wf) v = g(rng);
  auto x = random_acts(n, cols, rng);
  ThreadPool pool(2);
  std::vector<uint8_t> f32(wf.size() * 4);
  std::memcpy(f32.data(), wf.data(), f32.size());
  const auto yf = run(simd_path_for_env(nullptr), view(DType::F32, f32, rows, cols), x, n, pool);
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    std::vector<uint8_t> q(row_bytes(t, cols) * rows);
    for (int64_t r = 0; r < rows; ++r)
      ASSERT_TRUE(quantize_row(t, wf.data() + r * cols, q.data() + r * row_bytes(t, cols), cols));
    const auto y = run(simd_path_for_env(nullptr), view(t, q, rows, cols), x, n, pool);
    for (int64_t tk = 0; tk < n; ++tk) {
      double num = 0, den = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const double d = y[tk * rows + r] - yf[tk * rows + r];
        num += d * d;
        den += static_cast<double>(yf[tk * rows + r]) * yf[tk * rows + r];
      }
      const double rel = std::sqrt(num / den);
      EXPECT_LT(rel, t == DType::Q8_0 ? 0.02 : 0.15) << dtype_info(t).name << " token " << tk;
    }
  }
}

// Every path must quantize activations to the same bits (the paths may then differ only in
// float summation order).
TEST(Matmul, ActivationQuantizersAgreeBitForBit) {
  std::mt19937 rng(21);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<mmk::QuantBlockFn> fns;
  if (cpu_supports(SimdPath::Avx2)) fns.push_back(mmk::quant_block_avx2);
  if (cpu_supports(SimdPath::Avx512)) fns.push_back(mmk::quant_block_avx512);
  for (int n : {32, 256}) {
    for (int trial = 0; trial < 400; ++trial) {
      std::vector<float> x(static_cast<size_t>(n));
      for (float& v : x) v = g(rng) * (trial % 3 == 0 ? 1e-3f : 10.f);
      if (trial % 7 == 0) std::fill(x.begin(), x.end(), 0.f);
      if (trial % 5 == 1) {  // exact ties: values at k + 0.5 steps of d = 1
        x[0] = 127.f;
        for (int i = 1; i < n; ++i) x[i] = static_cast<float>(i % 50) - 24.5f;
      }
      int8_t q0[256], q1[256];
      float d0, d1;
      int32_t s0[16], s1[16];
      mmk::quant_block_scalar(x.data(), n, q0, &d0, s0);
      for (auto fn : fns) {
        fn(x.data(), n, q1, &d1, s1);
        ASSERT_EQ(0, std::memcmp(q0, q1, static_cast<size_t>(n))) << "n=" << n << " trial " << trial;
        ASSERT_EQ(0, std::memcmp(&d0, &d1, 4));
        ASSERT_EQ(0, std::memcmp(s0, s1, static_cast<size_t>(n / 16) * 4));
      }
    }
  }
}

// matmul_multi (shared activations, one parallel region) gives the bits of separate calls,
// including ragged row counts (16-row groups straddling matrices) and mixed dtypes (fallback).
TEST(Matmul, MultiMatchesSeparateCalls) {
  PathGuard guard;
  std::mt19937 rng(23);
  ThreadPool p2(2), p3(3);
  std::vector<SimdPath> paths = simd_paths();
  paths.push_back(SimdPath::Scalar);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::BF16}) {
    const int64_t cols = dtype_info(t).block_elems == 256 ? 512 : 320;
    const int64_t rows[3] = {37, 16, 70};
    std::vector<std::vector<uint8_t>> w;
    std::vector<MatView> v;
    for (int m = 0; m < 3; ++m) w.push_back(random_weights(t, rows[m], cols, rng));
    for (int m = 0; m < 3; ++m) v.push_back(view(t, w[static_cast<size_t>(m)], rows[m], cols));
    for (int64_t n : {1, 3, 9, 20}) {
      auto x = random_acts(n, cols, rng);
      for (SimdPath p : paths) {
        set_simd_path(p);
        std::vector<std::vector<float>> sep(3), mul(3);
        float* ys[3];
        for (int m = 0; m < 3; ++m) {
          sep[static_cast<size_t>(m)].resize(static_cast<size_t>(n * rows[m]));
          mul[static_cast<size_t>(m)].assign(static_cast<size_t>(n * rows[m]), -1.f);
          matmul(v[static_cast<size_t>(m)], x.data(), n, sep[static_cast<size_t>(m)].data(), p2);
          ys[m] = mul[static_cast<size_t>(m)].data();
        }
        matmul_multi(v.data(), ys, 3, x.data(), n, p3);
        for (int m = 0; m < 3; ++m)
          ASSERT_EQ(0, std::memcmp(sep[static_cast<size_t>(m)].data(), ys[m],
                                   sep[static_cast<size_t>(m)].size() * sizeof(float)))
              << simd_path_name(p) << " " << dtype_info(t).name << " n " << n << " m " << m;
      }
    }
  }
}

TEST(Matmul, Dispatch) {
  EXPECT_TRUE(cpu_supports(SimdPath::Scalar));
  EXPECT_EQ(simd_path_for_env("scalar"), SimdPath::Scalar);
  const SimdPath best = simd_path_for_env(nullptr);
  EXPECT_TRUE(cpu_supports(best));
  EXPECT_EQ(simd_path_for_env("bogus"), best);
  EXPECT_EQ(simd_path_for_env("avx512"), best);  // capped to what the CPU has
  if (cpu_supports(SimdPath::Avx2)) {
    EXPECT_EQ(simd_path_for_env("avx2"), SimdPath::Avx2);
  }
  if (cpu_supports(SimdPath::Avx512)) {
    EXPECT_TRUE(cpu_supports(SimdPath::Avx2));
  }
  EXPECT_EQ(simd_path_name(SimdPath::Avx512), "avx512");
}

TEST(Matmul, RejectsRaggedQuantizedRows) {
  std::vector<uint8_t> w(row_bytes(DType::Q8_0, 64));
  MatView v = view(DType::Q8_0, w, 1, 64);
  v.cols = 40;
  std::vector<float> x(40), y(1);
  ThreadPool pool(1);
  EXPECT_THROW(matmul(v, x.data(), 1, y.data(), pool), std::invalid_argument);
}

// The pool's spin-then-sleep hand-off: many back-to-back jobs (spinning workers), jobs after
// idle gaps longer than the spin window (sleeping workers), every index run exactly once.
TEST(ThreadPool, RunsEveryIndexOnceAcrossSpinAndSleep) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    std::vector<int> hits(1000);
    for (int round = 0; round < 1500; ++round) {
      const int64_t n = 1 + round % 997;
      std::atomic<int64_t> sum{0};
      pool.parallel_for(n, [&](int64_t b, int64_t e, int idx) {
        ASSERT_LT(idx, threads);
        int64_t s = 0;
        for (int64_t i = b; i < e; ++i) s += i + 1;
        sum.fetch_add(s);
      }, 1 + round % 5);
      ASSERT_EQ(sum.load(), n * (n + 1) / 2) << "threads " << threads << " round " << round;
      if (round % 500 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    // Contiguous ranges in multiples of the grain, the same split every time.
    std::vector<std::pair<int64_t, int64_t>> first(threads, {-1, -1}), again(threads, {-1, -1});
    pool.parallel_for(103, [&](int64_t b, int64_t e, int i) { first[i] = {b, e}; }, 8);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    pool.parallel_for(103, [&](int64_t b, int64_t e, int i) { again[i] = {b, e}; }, 8);
    EXPECT_EQ(first, again);
    for (auto [b, e] : first) {
      if (b >= 0 && e < 103) {
        EXPECT_EQ(0, (e - b) % 8);
      }
    }
  }
}

// Chunks on demand: every index exactly once, each range one whole chunk (the last may be
// short), whatever the timing; mixed with static jobs on the same pool.
TEST(ThreadPool, ChunksOnDemandCoverEveryIndexOnce) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    for (int round = 0; round < 600; ++round) {
      const int64_t n = 1 + (round * 37) % 1009, chunk = 1 + round % 64;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> bad{0};
      pool.parallel_chunks(n, [&](int64_t b, int64_t e, int idx) {
        if (idx < 0 || idx >= threads || b % chunk != 0 || (e - b != chunk && e != n)) bad.fetch_add(1);
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        if (round % 7 == 0 && idx == 1) std::this_thread::sleep_for(std::chrono::microseconds(50));
      }, chunk);
      ASSERT_EQ(bad.load(), 0) << "threads " << threads << " round " << round;
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "index " << i;
      std::atomic<int64_t> sum{0};
      pool.parallel_for(n, [&](int64_t b, int64_t e, int) { sum.fetch_add(e - b); }, 3);
      ASSERT_EQ(sum.load(), n);
      if (round % 200 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
}

}  // namespace
}  // namespace mx
