// Kernel benchmarks: GEMV (decode, 1 token) and GEMM (prefill, many tokens) at Mixtral shapes,
// reporting weight bytes/s (GEMV roofline) and int8 ops/s (GEMM), plus the machine ceilings.
//   build-*/bin/kernels_bench [--benchmark_filter=...]; MIXTRAL_SIMD picks the path.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/ceilings.h"
#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"

namespace {

using namespace mx;

ThreadPool& pool() {
  static ThreadPool p(0);
  return p;
}

struct Weights {
  std::vector<uint8_t> data;
  MatView view;
};

// Random weights of any dtype (valid blocks: random packed quants, sane fp16 scales). Cached
// per (dtype, rows, cols) so several benchmarks share one allocation.
const Weights& weights(DType t, int64_t rows, int64_t cols) {
  static std::vector<std::pair<std::tuple<int, int64_t, int64_t>, Weights*>> cache;
  const auto key = std::make_tuple(static_cast<int>(t), rows, cols);
  for (auto& [k, w] : cache)
    if (k == key) return *w;
  auto* w = new Weights;
  const size_t rb = row_bytes(t, cols);
  w->data.resize(rb * static_cast<size_t>(rows));
  std::mt19937 rng(42);
  for (size_t i = 0; i < w->data.size(); i += 4) {
    const uint32_t v = rng();
    std::memcpy(&w->data[i], &v, std::min<size_t>(4, w->data.size() - i));
  }
  const DTypeInfo& info = dtype_info(t);
  const uint16_t h = f32_to_f16(0.01f), b = f32_to_bf16(0.01f);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = w->data.data() + r * rb;
    if (t == DType::BF16) {
      for (int64_t i = 0; i < cols; ++i) std::memcpy(row + 2 * i, &b, 2);
    } else if (t == DType::F16) {
      for (int64_t i = 0; i < cols; ++i) std::memcpy(row + 2 * i, &h, 2);
    } else if (info.quantized) {
      for (int64_t k = 0; k < cols / info.block_elems; ++k) {
        uint8_t* blk = row + k * info.block_bytes;
        const int off = t == DType::Q6_K ? 208 : 0;
        std::memcpy(blk + off, &h, 2);
        if (t == DType::Q4_1 || t == DType::Q5_1 || t == DType::Q4_K || t == DType::Q5_K)
          std::memcpy(blk + 2, &h, 2);
      }
    }
  }
  w->view = MatView{t, w->data.data(), rows, cols, rb};
  cache.push_back({key, w});
  return *w;
}

void BM_matmul(benchmark::State& state, DType t, int64_t rows, int64_t cols) {
  const int64_t n = state.range(0);
  const Weights& w = weights(t, rows, cols);
  std::vector<float> x(static_cast<size_t>(n * cols)), y(static_cast<size_t>(n * rows));
  std::mt19937 rng(1);
  std::normal_distribution<float> g;
  for (float& v : x) v = g(rng);
  for (auto _ : state) {
    matmul(w.view, x.data(), n, y.data(), pool());
    benchmark::ClobberMemory();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_bytes/s"] = benchmark::Counter(
      iters * static_cast<double>(w.data.size()), benchmark::Counter::kIsRate);
  state.counters["ops/s"] = benchmark::Counter(
      iters * 2.0 * static_cast<double>(rows) * cols * n, benchmark::Counter::kIsRate);
  state.SetLabel(simd_path_name(simd_path()));
}

// Mixtral-8x7B: dim 4096, expert hidden 14336, 32 heads x 128, 8 kv heads.
#define MX_SHAPES(T, name)                                                                     \
  BENCHMARK_CAPTURE(BM_matmul, name##_w1_14336x4096, T, 14336, 4096)                           \
      ->Arg(1)->Arg(4)->Arg(16)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();         \
  BENCHMARK_CAPTURE(BM_matmul, name##_w2_4096x14336, T, 4096, 14336)                           \
      ->Arg(1)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();                          \
  BENCHMARK_CAPTURE(BM_matmul, name##_wq_4096x4096, T, 4096, 4096)                             \
      ->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();                                   \
  BENCHMARK_CAPTURE(BM_matmul, name##_wk_1024x4096, T, 1024, 4096)                             \
      ->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

MX_SHAPES(DType::Q8_0, q8_0)
MX_SHAPES(DType::Q4_0, q4_0)
MX_SHAPES(DType::BF16, bf16)
MX_SHAPES(DType::Q4_K, q4_k)
MX_SHAPES(DType::Q6_K, q6_k)

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

}  // namespace

BENCHMARK_MAIN();
