// Kernel benchmarks: GEMV (decode, 1 token) and GEMM (prefill, many tokens) at Mixtral shapes,
// reporting weight bytes/s (GEMV roofline) and int8 ops/s (GEMM), plus the machine ceilings.
//   build-*/bin/kernels_bench [--benchmark_filter=...]; MIXTRAL_SIMD picks the path.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/ceilings.h"
#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"

namespace {

using namespace mx;

ThreadPool& pool() {
  // KB_THREADS=1 gives per-thread CPU-time figures that stay comparable on a busy machine.
  static ThreadPool p(std::getenv("KB_THREADS") ? std::atoi(std::getenv("KB_THREADS")) : 0);
  return p;
}

// Weight copies rotated through so every call streams from DRAM (their total exceeds the LLC
// several times over), each 64-byte aligned as the loaders map tensors.
struct Weights {
  uint8_t* base = nullptr;
  size_t bytes = 0;  // one copy
  std::vector<MatView> copies;
  ~Weights() { std::free(base); }
};

// Random weights of any dtype (valid blocks: random packed quants, sane fp16 scales). One
// (dtype, shape) is kept at a time.
const Weights& weights(DType t, int64_t rows, int64_t cols) {
  static std::unique_ptr<Weights> cur;
  static std::tuple<int, int64_t, int64_t> key{-1, 0, 0};
  const auto k = std::make_tuple(static_cast<int>(t), rows, cols);
  if (cur && key == k) return *cur;
  cur.reset();
  auto w = std::make_unique<Weights>();
  const size_t rb = row_bytes(t, cols);
  w->bytes = rb * static_cast<size_t>(rows);
  const size_t stride = (w->bytes + 4095) & ~size_t{4095};
  const size_t n = std::clamp<size_t>((size_t{160} << 20) / w->bytes + 1, 1, 64);
  w->base = static_cast<uint8_t*>(std::aligned_alloc(4096, stride * n));
  uint8_t* first = w->base;
  std::mt19937_64 rng(42);
  for (size_t i = 0; i + 8 <= w->bytes; i += 8) {
    const uint64_t v = rng();
    std::memcpy(first + i, &v, 8);
  }
  const DTypeInfo& info = dtype_info(t);
  const uint16_t h = f32_to_f16(0.01f), b = f32_to_bf16(0.01f);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = first + r * rb;
    if (t == DType::BF16) {
      for (int64_t i = 0; i < cols; ++i) std::memcpy(row + 2 * i, &b, 2);
    } else if (t == DType::F16) {
      for (int64_t i = 0; i < cols; ++i) std::memcpy(row + 2 * i, &h, 2);
    } else if (t == DType::F32) {
      const float f = 0.01f;
      for (int64_t i = 0; i < cols; ++i) std::memcpy(row + 4 * i, &f, 4);
    } else if (is_r16_k(t)) {  // f16 d (and dmin) planes in each super-block chunk (dtype.h)
      const size_t chunk = 16 * static_cast<size_t>(info.block_bytes);
      const int off = t == DType::Q6_KR16 ? 3328 : 2048, n16 = t == DType::Q6_KR16 ? 16 : 32;
      if (r % 16 == 0)
        for (int64_t c = 0; c < cols / 256; ++c)
          for (int k2 = 0; k2 < n16; ++k2) std::memcpy(row + c * chunk + off + 2 * k2, &h, 2);
    } else if (is_r16(t)) {  // scales after each 16-row group's quants (16 or 8 bytes a value)
      const int64_t qbytes = t == DType::Q8_0R16 ? cols * 16 : cols * 8;
      if (r % 16 == 0)
        for (int64_t k2 = 0; k2 < cols / 32 * 16; ++k2) std::memcpy(row + qbytes + 2 * k2, &h, 2);
    } else if (info.quantized) {
      for (int64_t k2 = 0; k2 < cols / info.block_elems; ++k2) {
        uint8_t* blk = row + k2 * info.block_bytes;
        std::memcpy(blk + (t == DType::Q6_K ? 208 : 0), &h, 2);
        if (t == DType::Q4_1 || t == DType::Q5_1 || t == DType::Q4_K || t == DType::Q5_K)
          std::memcpy(blk + 2, &h, 2);
      }
    }
  }
  for (size_t c = 0; c < n; ++c) {
    if (c) std::memcpy(w->base + c * stride, first, w->bytes);
    w->copies.push_back(MatView{t, w->base + c * stride, rows, cols, rb});
  }
  cur = std::move(w);
  key = k;
  return *cur;
}

// hot: reuse one copy (weights stay in L2 / L3): the kernel's compute ceiling, not DRAM's.
void BM_matmul_impl(benchmark::State& state, DType t, int64_t rows, int64_t cols, bool hot) {
  const int64_t n = state.range(0);
  const Weights& w = weights(t, rows, cols);
  std::vector<float> x(static_cast<size_t>(n * cols)), y(static_cast<size_t>(n * rows));
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  for (float& v : x) v = g(rng);
  size_t c = 0;
  for (auto _ : state) {
    matmul(w.copies[c], x.data(), n, y.data(), pool());
    if (!hot) c = (c + 1) % w.copies.size();
    benchmark::ClobberMemory();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_bytes/s"] = benchmark::Counter(
      iters * static_cast<double>(w.bytes), benchmark::Counter::kIsRate);
  state.counters["ops/s"] = benchmark::Counter(
      iters * 2.0 * static_cast<double>(rows) * cols * n, benchmark::Counter::kIsRate);
  state.SetLabel(simd_path_name(simd_path()));
}

void BM_matmul(benchmark::State& state, DType t, int64_t rows, int64_t cols) {
  BM_matmul_impl(state, t, rows, cols, false);
}
void BM_matmul_hot(benchmark::State& state, DType t, int64_t rows, int64_t cols) {
  BM_matmul_impl(state, t, rows, cols, true);
}

// Mixtral-8x7B: dim 4096, expert hidden 14336, 32 heads x 128, 8 kv heads.
#define MX_SHAPES(T, name)                                                                     \
  BENCHMARK_CAPTURE(BM_matmul, name##_w1_14336x4096, T, 14336, 4096)                           \
      ->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Arg(16)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();         \
  BENCHMARK_CAPTURE(BM_matmul, name##_w2_4096x14336, T, 4096, 14336)                           \
      ->Arg(1)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();                          \
  BENCHMARK_CAPTURE(BM_matmul, name##_wq_4096x4096, T, 4096, 4096)                             \
      ->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();                                   \
  BENCHMARK_CAPTURE(BM_matmul, name##_wk_1024x4096, T, 1024, 4096)                             \
      ->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

MX_SHAPES(DType::Q8_0, q8_0)
MX_SHAPES(DType::Q8_0R16, q8_0r16)
BENCHMARK_CAPTURE(BM_matmul, q8_0_w1_14336x4096_prefill, DType::Q8_0, 14336, 4096)
    ->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_matmul, q8_0r16_w1_14336x4096_prefill, DType::Q8_0R16, 14336, 4096)
    ->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_matmul, bf16_w1_14336x4096_prefill, DType::BF16, 14336, 4096)
    ->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();
// Cache-resident weights (L2: 256 rows per call, 2 threads; L3: 2048 rows): compute ceilings.
BENCHMARK_CAPTURE(BM_matmul_hot, q8_0_l2_256x4096, DType::Q8_0, 256, 4096)
    ->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_matmul_hot, q8_0r16_l2_256x4096, DType::Q8_0R16, 256, 4096)
    ->Arg(1)->Arg(8)->Arg(64)->Arg(128)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_matmul_hot, q8_0_l3_2048x4096, DType::Q8_0, 2048, 4096)
    ->Arg(1)->Arg(8)->Arg(64)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_matmul_hot, q4_kr16_l2_256x4096, DType::Q4_KR16, 256, 4096)
    ->Arg(1)->Arg(8)->Arg(64)->Arg(128)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_matmul_hot, q5_kr16_l2_256x4096, DType::Q5_KR16, 256, 4096)
    ->Arg(1)->Arg(8)->Arg(128)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_matmul_hot, q6_kr16_l2_256x4096, DType::Q6_KR16, 256, 4096)
    ->Arg(1)->Arg(8)->Arg(64)->Arg(128)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_matmul_hot, q4_kr16_l2_256x14336, DType::Q4_KR16, 256, 14336)
    ->Arg(128)->Unit(benchmark::kMicrosecond)->UseRealTime();
MX_SHAPES(DType::Q4_0, q4_0)
MX_SHAPES(DType::Q4_0R16, q4_0r16)
MX_SHAPES(DType::BF16, bf16)
MX_SHAPES(DType::Q4_K, q4_k)
MX_SHAPES(DType::Q6_K, q6_k)
MX_SHAPES(DType::Q4_KR16, q4_kr16)
MX_SHAPES(DType::Q5_KR16, q5_kr16)
MX_SHAPES(DType::Q6_KR16, q6_kr16)

// Decode attention alone: one query token, Mixtral's 32 query / 8 kv heads of 128, an f16 cache
// of N positions, all 8 kv heads on one thread (process CPU time). pos_heads/s = N * 8 / time:
// the kernel's cost per cached position and kv head (4 query heads each), without the pool.
void BM_attention_decode(benchmark::State& state) {
  const int nkv = 8, nh = 32, hd = 128, n = static_cast<int>(state.range(0));
  const size_t rb = static_cast<size_t>(nkv) * hd * 2;
  std::vector<uint8_t> k(rb * n), v(rb * n);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (size_t i = 0; i + 1 < k.size(); i += 2) {
    const uint16_t a = f32_to_f16(u(rng)), b = f32_to_f16(u(rng));
    std::memcpy(&k[i], &a, 2);
    std::memcpy(&v[i], &b, 2);
  }
  std::vector<float> q(static_cast<size_t>(nh) * hd), out(q.size());
  for (float& f : q) f = 0.1f * u(rng);
  const ops::KvRows kr{DType::F16, k.data(), rb}, vr{DType::F16, v.data(), rb};
  for (auto _ : state) {
    ops::attention(q.data(), kr, vr, n, nh, nkv, hd, 0.0884f, out.data(), 0, nkv);
    benchmark::ClobberMemory();
  }
  state.counters["pos_heads/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * n * nkv, benchmark::Counter::kIsRate);
  state.SetLabel(simd_path_name(simd_path()));
}
BENCHMARK(BM_attention_decode)->Arg(256)->Arg(4096)->Arg(16384)->Unit(benchmark::kMicrosecond)->MeasureProcessCPUTime();

void BM_ceilings(benchmark::State& state) {
  double bw = 0, i8 = 0, bf = 0;
  for (auto _ : state) {
    bw = measure_read_bandwidth_gbps(pool());
    i8 = measure_int8_gops(pool());
    bf = measure_bf16_gflops(pool());
  }
  state.counters["read_GB/s"] = bw;
  state.counters["int8_GOPS"] = i8;
  state.counters["bf16_GFLOPS"] = bf;
  state.SetLabel(std::string(int8_gops_kernel_name()) + ", " + bf16_gflops_kernel_name());
}
BENCHMARK(BM_ceilings)->Iterations(1)->Unit(benchmark::kMillisecond);

// Which instructions share the vpdpbusd pipes (one thread, no memory): 24 independent
// vpdpbusd plus 4 or 8 of another instruction per loop. The dpbusd rate falls only when the
// other instruction competes for its pipes. On the project's Zen 5 VM (2026-12-03): vpmulld,
// vfmadd231ps, vmulps and vpdpwssd compete (24+4 -> 6.2 of 7.3 G/s); vpaddd, vpandd, vpshufd
// and vcvtdq2ps do not. So a kernel's ceiling is vpdpbusd / (vpdpbusd + those), e.g. 80% for
// q8_0r16 (per block and 16 rows: 8 vpdpbusd, one vmulps, one FMA) - docs/benchmarks.md.
#if defined(__x86_64__)
#define MX_DP12                                                                                \
  "vpdpbusd %%zmm30, %%zmm31, %%zmm0\n vpdpbusd %%zmm30, %%zmm31, %%zmm1\n"                     \
  "vpdpbusd %%zmm30, %%zmm31, %%zmm2\n vpdpbusd %%zmm30, %%zmm31, %%zmm3\n"                     \
  "vpdpbusd %%zmm30, %%zmm31, %%zmm4\n vpdpbusd %%zmm30, %%zmm31, %%zmm5\n"                     \
  "vpdpbusd %%zmm30, %%zmm31, %%zmm6\n vpdpbusd %%zmm30, %%zmm31, %%zmm7\n"                     \
  "vpdpbusd %%zmm30, %%zmm31, %%zmm8\n vpdpbusd %%zmm30, %%zmm31, %%zmm9\n"                     \
  "vpdpbusd %%zmm30, %%zmm31, %%zmm10\n vpdpbusd %%zmm30, %%zmm31, %%zmm11\n"
// Sources zeroed each pass (zero idioms, no pipe): no denormals or NaNs in the float ones.
#define MX_ZERO_SRC                                                                            \
  "vpxord %%zmm26, %%zmm26, %%zmm26\n vpxord %%zmm27, %%zmm27, %%zmm27\n"                       \
  "vpxord %%zmm28, %%zmm28, %%zmm28\n vpxord %%zmm29, %%zmm29, %%zmm29\n"                       \
  "vpxord %%zmm30, %%zmm30, %%zmm30\n vpxord %%zmm31, %%zmm31, %%zmm31\n"
#define MX_X4(op) op " %%zmm29, %%zmm28, %%zmm16\n " op " %%zmm29, %%zmm28, %%zmm17\n " op \
                  " %%zmm29, %%zmm28, %%zmm18\n " op " %%zmm29, %%zmm28, %%zmm19\n"
#define MX_PIPE_BENCH(name, body, other)                                                        \
  __attribute__((target("avx512f,avx512vnni"))) void pipes_##name(benchmark::State& state) {  \
    const int64_t n = 1 << 20;                                                                 \
    for (auto _ : state)                                                                       \
      for (int64_t i = 0; i < n; ++i)                                                          \
        __asm__ volatile(MX_ZERO_SRC body ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",  \
                         "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm16", "xmm17",   \
                         "xmm18", "xmm19", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30",         \
                         "xmm31");                                                             \
    const double it = static_cast<double>(state.iterations()) * static_cast<double>(n);       \
    state.counters["dpbusd/s"] = benchmark::Counter(24 * it, benchmark::Counter::kIsRate);     \
    state.counters["other/s"] = benchmark::Counter(other * it, benchmark::Counter::kIsRate);   \
  }                                                                                            \
  void BM_pipes_##name(benchmark::State& state) {                                              \
    if (!__builtin_cpu_supports("avx512vnni")) {                                               \
      state.SkipWithError("needs AVX-512 VNNI");                                               \
      return;                                                                                  \
    }                                                                                          \
    pipes_##name(state);                                                                       \
  }                                                                                            \
  BENCHMARK(BM_pipes_##name)->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime();
MX_PIPE_BENCH(dpbusd_only, MX_DP12 MX_DP12, 0)
MX_PIPE_BENCH(plus_vpmulld, MX_DP12 MX_DP12 MX_X4("vpmulld"), 4)
MX_PIPE_BENCH(plus_vfmadd, MX_DP12 MX_DP12 MX_X4("vfmadd231ps"), 4)
MX_PIPE_BENCH(plus_vmulps, MX_DP12 MX_DP12 MX_X4("vmulps"), 4)
MX_PIPE_BENCH(plus_vpdpwssd, MX_DP12 MX_DP12 MX_X4("vpdpwssd"), 4)
MX_PIPE_BENCH(plus_vpaddd_x8, MX_DP12 MX_DP12 MX_X4("vpaddd") MX_X4("vpaddd"), 8)
MX_PIPE_BENCH(plus_vpandd_x8, MX_DP12 MX_DP12 MX_X4("vpandd") MX_X4("vpandd"), 8)
MX_PIPE_BENCH(plus_vcvtdq2ps, MX_DP12 MX_DP12 "vcvtdq2ps %%zmm29, %%zmm16\n vcvtdq2ps %%zmm28, %%zmm17\n vcvtdq2ps %%zmm27, %%zmm18\n vcvtdq2ps %%zmm26, %%zmm19\n", 4)
MX_PIPE_BENCH(plus_vpshufd, MX_DP12 MX_DP12 "vpshufd $0, %%zmm29, %%zmm16\n vpshufd $0x55, %%zmm28, %%zmm17\n vpshufd $0xaa, %%zmm27, %%zmm18\n vpshufd $0xff, %%zmm26, %%zmm19\n", 4)
#endif

}  // namespace

BENCHMARK_MAIN();
