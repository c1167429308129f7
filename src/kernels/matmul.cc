// Matmul dispatch: picks the SIMD path, prepares activations once per call, then splits weight
// rows (never a reduction) across the pool, which is what keeps the determinism contract.
#include "kernels/matmul.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/matmul_internal.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"

namespace mx {

namespace {

std::atomic<int> g_path{-1};

SimdPath best_supported() {
  if (cpu_supports(SimdPath::Avx512)) return SimdPath::Avx512;
  if (cpu_supports(SimdPath::Avx2)) return SimdPath::Avx2;
  return SimdPath::Scalar;
}

}  // namespace

SimdPath simd_path_for_env(const char* env) {
  SimdPath p = best_supported();
  if (env) {
    SimdPath want = p;
    if (std::strcmp(env, "scalar") == 0) want = SimdPath::Scalar;
    else if (std::strcmp(env, "avx2") == 0) want = SimdPath::Avx2;
    else if (std::strcmp(env, "avx512") == 0) want = SimdPath::Avx512;
    // Capped to what the CPU runs (the enum is ordered by capability).
    if (static_cast<int>(want) < static_cast<int>(p)) p = want;
  }
  return p;
}

bool cpu_supports(SimdPath p) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  switch (p) {
    case SimdPath::Scalar: return true;
    case SimdPath::Avx2: return avx2;
    case SimdPath::Avx512:
      // The *_avx512.cc files are built with -mavx512dq too, so it is required as well.
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

namespace mmk {
bool has_vnni() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return v;
}
}  // namespace mmk

std::string simd_path_name(SimdPath p) {
  switch (p) {
    case SimdPath::Scalar: return "scalar";
    case SimdPath::Avx2: return "avx2";
    case SimdPath::Avx512: return "avx512";
  }
  return "?";
}

SimdPath simd_path() {
  int v = g_path.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(simd_path_for_env(std::getenv("MIXTRAL_SIMD")));
    g_path.store(v, std::memory_order_relaxed);
  }
  return static_cast<SimdPath>(v);
}

void set_simd_path(SimdPath p) { g_path.store(static_cast<int>(p), std::memory_order_relaxed); }

namespace {

void check(const MatView& w) {
  const DTypeInfo& info = dtype_info(w.dtype);
  const bool supported = w.dtype <= DType::Q6_K || is_r16(w.dtype);
  if (!supported || w.cols % info.block_elems != 0)
    throw std::invalid_argument("matmul: unsupported weight " + std::string(info.name) + " with " +
                                std::to_string(w.cols) + " columns");
  if (is_r16(w.dtype) && w.rows % 16 != 0)
    throw std::invalid_argument("matmul: " + std::string(info.name) + " weight with " + std::to_string(w.rows) +
                                " rows (the layout needs whole 16-row groups)");
}

// Q8_0R16 / Q4_0R16 on the scalar path (AVX2 and AVX-512 have their own kernels): each 16-row
// group is deinterleaved into plain rows of the base type (an L2-resident copy) and run by the
// scalar kernel of that type. r0 and r1 are multiples of 16.
void rows_r16_via_base(mmk::RowsFn rows, const MatView& w, const mmk::Prepared& p, int64_t r0,
                       int64_t r1, float* y, int64_t ldy) {
  thread_local std::vector<uint8_t> buf;
  const size_t rb = row_bytes(r16_base(w.dtype), w.cols);
  buf.resize(16 * rb);
  MatView v;
  v.dtype = r16_base(w.dtype);
  v.data = buf.data();
  v.rows = 16;
  v.cols = w.cols;
  v.stride = rb;
  for (int64_t r = r0; r < r1; r += 16) {
    deinterleave_r16(w.dtype, w.row(r), w.cols, buf.data());
    rows(v, p, 0, 16, y + r, ldy);
  }
}

// Token count from which rows are scheduled in chunks on demand (run_shared).
constexpr int64_t kDynamicTokens = 16;

// Matrices sharing dtype and cols, all multiplied with the same x: activations are prepared
// once, then the concatenated rows are split across the pool in one parallel region.
void run_shared(const MatView* ws, float* const* ys, int n, const float* x, int64_t n_tokens,
                ThreadPool& pool) {
  const MatView& w0 = ws[0];
  mmk::PrepareFn prepare = mmk::prepare_scalar;
  mmk::RowsFn rows = mmk::rows_scalar;
  switch (simd_path()) {
    case SimdPath::Avx512: prepare = mmk::prepare_avx512; rows = mmk::rows_avx512; break;
    case SimdPath::Avx2: prepare = mmk::prepare_avx2; rows = mmk::rows_avx2; break;
    case SimdPath::Scalar: break;
  }

  // One buffer per calling thread, reused across calls (no allocation per op in decode).
  const bool r16_copy = is_r16(w0.dtype) && !is_r16_k(w0.dtype) && simd_path() == SimdPath::Scalar;
  thread_local mmk::Arena arena;
  mmk::Prepared p;
  mmk::PrepareJob job;
  prepare(r16_copy ? r16_base(w0.dtype) : w0.dtype, n_tokens, w0.cols, arena, &p, &job);
  auto run_rows = [&](const MatView& w, int64_t lo, int64_t hi, float* y) {
    if (r16_copy) rows_r16_via_base(rows, w, p, lo, hi, y, w.rows);
    else rows(w, p, lo, hi, y, w.rows);
  };
  if (n_tokens >= 8 && pool.size() > 1) {
    pool.parallel_for(n_tokens, [&](int64_t b, int64_t e, int) {
      mmk::run_prepare(job, x, w0.cols, b, e);
    }, 4);
  } else {
    mmk::run_prepare(job, x, w0.cols, 0, n_tokens);
  }

  // Grain: enough rows that a thread's share is worth waking it for; multiples of 16 keep the
  // 4-row and 16-row microkernels full.
  const int64_t grain = 16;
  int64_t total = 0;
  for (int m = 0; m < n; ++m) total += ws[m].rows;
  const auto run_range = [&](int64_t b, int64_t e, int) {
    int64_t off = 0;
    for (int m = 0; m < n && off < e; off += ws[m].rows, ++m) {
      const int64_t lo = b > off ? b - off : 0;
      const int64_t hi = e - off < ws[m].rows ? e - off : ws[m].rows;
      if (lo < hi) run_rows(ws[m], lo, hi, ys[m]);
    }
  };
  // Prefill: rows are handed out in chunks on demand, ~8 per thread, so a core that runs
  // slower (the VM's cores do, by 10% and more at times) does less instead of making the
  // other wait at the end. Decode keeps one contiguous range per thread: one sequential
  // stream each, and no chunk bookkeeping per step. Rows are independent: same results.
  if (n_tokens >= kDynamicTokens && pool.size() > 1) {
    int64_t chunk = total / (8 * static_cast<int64_t>(pool.size()));
    chunk = chunk < 64 ? 64 : chunk / 64 * 64;
    pool.parallel_chunks(total, run_range, chunk);
    return;
  }
  pool.parallel_for(total, run_range, grain);
}

}  // namespace

void matmul(const MatView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  if (n_tokens <= 0 || w.rows <= 0) return;
  check(w);
  if (w.cols == 0) {
    for (int64_t i = 0; i < n_tokens * w.rows; ++i) y[i] = 0.f;
    return;
  }
  run_shared(&w, &y, 1, x, n_tokens, pool);
}

void matmul_multi(const MatView* ws, float* const* ys, int n, const float* x, int64_t n_tokens,
                  ThreadPool& pool) {
  if (n_tokens <= 0 || n <= 0) return;
  bool shared = true;
  for (int m = 0; m < n; ++m) {
    check(ws[m]);
    shared = shared && ws[m].dtype == ws[0].dtype && ws[m].cols == ws[0].cols &&
             ws[m].rows > 0 && ws[m].cols > 0;
  }
  if (!shared) {
    for (int m = 0; m < n; ++m) matmul(ws[m], x, n_tokens, ys[m], pool);
    return;
  }
  run_shared(ws, ys, n, x, n_tokens, pool);
}

}  // namespace mx
