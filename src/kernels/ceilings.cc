// Roofline ceilings. The SIMD loops use function-level target attributes and are called only
// when CPUID reports the instructions, so this file itself builds for any x86-64.
#include "kernels/ceilings.h"

#include <sys/mman.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/thread_pool.h"

// GCC 12's intrinsic headers trip -W(maybe-)uninitialized on their own _mm*_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace mx {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool has(const char* feature) {
  __builtin_cpu_init();
  if (std::strcmp(feature, "avx512vnni") == 0) return __builtin_cpu_supports("avx512vnni");
  if (std::strcmp(feature, "avx512bf16") == 0) {
#if defined(__GNUC__) && __GNUC__ >= 12
    return __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
  }
  return false;
}

// Keeps the compiler from treating a value as known or hoisting work that uses it.
template <class T>
inline void opaque(T& v) { asm volatile("" : "+x"(v)); }

// ---------------------------------------------------------------- read bandwidth

__attribute__((target("avx512f"))) uint64_t read_avx512(const uint8_t* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 256 <= n; i += 256) {
    a0 = _mm512_or_si512(a0, _mm512_load_si512(p + i));
    a1 = _mm512_or_si512(a1, _mm512_load_si512(p + i + 64));
    a2 = _mm512_or_si512(a2, _mm512_load_si512(p + i + 128));
    a3 = _mm512_or_si512(a3, _mm512_load_si512(p + i + 192));
  }
  const __m512i a = _mm512_or_si512(_mm512_or_si512(a0, a1), _mm512_or_si512(a2, a3));
  return static_cast<uint64_t>(_mm512_reduce_or_epi64(a));
}

__attribute__((target("avx2"))) uint64_t read_avx2(const uint8_t* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 128 <= n; i += 128) {
    a0 = _mm256_or_si256(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_or_si256(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_or_si256(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_or_si256(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  const __m256i a = _mm256_or_si256(_mm256_or_si256(a0, a1), _mm256_or_si256(a2, a3));
  return static_cast<uint64_t>(_mm256_extract_epi64(a, 0) | _mm256_extract_epi64(a, 1) |
                               _mm256_extract_epi64(a, 2) | _mm256_extract_epi64(a, 3));
}

uint64_t read_scalar(const uint8_t* p, size_t n) {
  uint64_t a0 = 0, a1 = 0;
  for (size_t i = 0; i + 16 <= n; i += 16) {
    uint64_t u, v;
    std::memcpy(&u, p + i, 8);
    std::memcpy(&v, p + i + 8, 8);
    a0 |= u;
    a1 |= v;
  }
  return a0 | a1;
}

// ---------------------------------------------------------------- int8 / bf16 peaks

// Independent accumulators, enough to cover latency x throughput. Every chain loop is fully
// unrolled (PEAK_UNROLL) so the accumulators stay in registers: a rolled loop keeps them in
// memory and measures store-to-load forwarding instead of the multiply-add units.
constexpr int kChains = 16;
#define PEAK_UNROLL _Pragma("GCC unroll 16")

// The sum only keeps the probe's work alive. Its lanes wrap after enough iterations, so they are
// added as unsigned (defined wrap-around), not with _mm512_reduce_add_epi32's signed int adds,
// which UBSan rightly reports as overflow.
__attribute__((target("avx512f"))) int64_t wrapping_sum(__m512i s) {
  alignas(64) uint32_t lanes[16];
  _mm512_store_si512(lanes, s);
  uint32_t t = 0;
  for (uint32_t v : lanes) t += v;
  return t;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) int64_t int8_vnni(int64_t iters) {
  __m512i acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_epi32(k);
  __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  for (int64_t it = 0; it < iters; ++it) {
    opaque(a);
    opaque(b);
    PEAK_UNROLL
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_dpbusd_epi32(acc[k], a, b);
  }
  __m512i s = acc[0];
  for (int k = 1; k < kChains; ++k) s = _mm512_add_epi32(s, acc[k]);
  return wrapping_sum(s);
}

// Without VNNI: maddubs (u8 x s8 -> 2 MACs per int16) + madd to int32 + add.
__attribute__((target("avx512f,avx512bw"))) int64_t int8_bw(int64_t iters) {
  __m512i acc[kChains / 2];
  for (int k = 0; k < kChains / 2; ++k) acc[k] = _mm512_set1_epi32(k);
  __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  const __m512i ones = _mm512_set1_epi16(1);
  for (int64_t it = 0; it < iters; ++it) {
    opaque(a);
    opaque(b);
    PEAK_UNROLL
    for (int k = 0; k < kChains / 2; ++k)
      acc[k] = _mm512_add_epi32(acc[k], _mm512_madd_epi16(_mm512_maddubs_epi16(a, b), ones));
  }
  __m512i s = acc[0];
  for (int k = 1; k < kChains / 2; ++k) s = _mm512_add_epi32(s, acc[k]);
  return wrapping_sum(s);
}

__attribute__((target("avx2"))) int64_t int8_avx2(int64_t iters) {
  __m256i acc[kChains / 2];
  for (int k = 0; k < kChains / 2; ++k) acc[k] = _mm256_set1_epi32(k);
  __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t it = 0; it < iters; ++it) {
    opaque(a);
    opaque(b);
    PEAK_UNROLL
    for (int k = 0; k < kChains / 2; ++k)
      acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
  }
  __m256i s = acc[0];
  for (int k = 1; k < kChains / 2; ++k) s = _mm256_add_epi32(s, acc[k]);
  return int64_t{_mm256_extract_epi32(s, 0)} + _mm256_extract_epi32(s, 7);  // 64-bit: no int overflow
}

int64_t int8_scalar(int64_t iters) {
  int32_t acc[8] = {};
  volatile int8_t va = 3, vb = -2;
  const int a = va, b = vb;
  for (int64_t it = 0; it < iters; ++it)
    PEAK_UNROLL
    for (int k = 0; k < 8; ++k) acc[k] += a * (b + k);
  int64_t s = 0;
  PEAK_UNROLL
  for (int k = 0; k < 8; ++k) s += acc[k];
  return s;
}

__attribute__((target("avx512f,avx512bf16"))) float bf16_dp(int64_t iters) {
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(static_cast<float>(k));
  __m512i a = _mm512_set1_epi16(0x3f80), b = _mm512_set1_epi16(0x3c00);  // 1.0, 2^-7
  for (int64_t it = 0; it < iters; ++it) {
    opaque(a);
    opaque(b);
    PEAK_UNROLL
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_dpbf16_ps(acc[k], (__m512bh)a, (__m512bh)b);
  }
  __m512 s = acc[0];
  for (int k = 1; k < kChains; ++k) s = _mm512_add_ps(s, acc[k]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f"))) float fma512(int64_t iters) {
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(static_cast<float>(k));
  __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
    opaque(a);
    opaque(b);
    PEAK_UNROLL
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_fmadd_ps(a, b, acc[k]);
  }
  __m512 s = acc[0];
  for (int k = 1; k < kChains; ++k) s = _mm512_add_ps(s, acc[k]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) float fma256(int64_t iters) {
  __m256 acc[12];
  for (int k = 0; k < 12; ++k) acc[k] = _mm256_set1_ps(static_cast<float>(k));
  __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
    opaque(a);
    opaque(b);
    PEAK_UNROLL
    for (int k = 0; k < 12; ++k) acc[k] = _mm256_fmadd_ps(a, b, acc[k]);
  }
  __m256 s = acc[0];
  for (int k = 1; k < 12; ++k) s = _mm256_add_ps(s, acc[k]);
  alignas(32) float o[8];
  _mm256_store_ps(o, s);
  return o[0] + o[7];
}

float fma_scalar(int64_t iters) {
  float acc[8] = {};
  volatile float va = 1.0001f, vb = 1e-7f;
  const float a = va, b = vb;
  for (int64_t it = 0; it < iters; ++it)
    PEAK_UNROLL
    for (int k = 0; k < 8; ++k) acc[k] += a * b;
  return acc[0] + acc[7];
}

std::atomic<int64_t> g_sink{0};

// Runs kernel(iters) on every thread; iterations are grown until one run takes ~0.1 s, then
// the best of 3 runs gives ops/s with `ops_per_iter` per thread per iteration.
template <class F>
double peak_rate(ThreadPool& pool, double ops_per_iter, F kernel) {
  int64_t iters = 1 << 12;
  double best = 0;
  for (;;) {
    const auto t0 = Clock::now();
    pool.parallel_for(pool.size(), [&](int64_t, int64_t, int) {
      g_sink.fetch_add(static_cast<int64_t>(kernel(iters)), std::memory_order_relaxed);
    }, 1);
    const double s = seconds_since(t0);
    if (s > 0.05) {
      best = ops_per_iter * static_cast<double>(iters) * pool.size() / s;
      break;
    }
    iters *= s < 0.005 ? 8 : 2;
  }
  for (int run = 0; run < 2; ++run) {
    const auto t0 = Clock::now();
    pool.parallel_for(pool.size(), [&](int64_t, int64_t, int) {
      g_sink.fetch_add(static_cast<int64_t>(kernel(iters)), std::memory_order_relaxed);
    }, 1);
    best = std::max(best, ops_per_iter * static_cast<double>(iters) * pool.size() / seconds_since(t0));
  }
  return best;
}

}  // namespace

double measure_read_bandwidth_gbps(ThreadPool& pool) {
  // 256 MiB: 8x a 32 MiB L3; larger caches get a larger buffer.
  size_t bytes = size_t{256} << 20;
  const int nt = pool.size();
  const size_t per = (bytes / static_cast<size_t>(nt)) & ~size_t{4095};
  bytes = per * static_cast<size_t>(nt);
  // Mapped directly, not malloc'ed: the pages must go back to the system when the probe ends
  // (the engine keeps its heap untrimmed: cli/main.cc), so the probe never counts in peak RSS.
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return 0;
  uint8_t* buf = static_cast<uint8_t*>(mem);
  pool.parallel_for(nt, [&](int64_t b, int64_t e, int) {  // first touch by the reading thread
    std::memset(buf + static_cast<size_t>(b) * per, 1, static_cast<size_t>(e - b) * per);
  }, 1);
  uint64_t (*reader)(const uint8_t*, size_t) =
      cpu_supports(SimdPath::Avx512) ? read_avx512 : cpu_supports(SimdPath::Avx2) ? read_avx2 : read_scalar;
  double best = 0;
  const auto start = Clock::now();
  for (int run = 0; run < 12 && (run < 3 || seconds_since(start) < 0.3); ++run) {
    const auto t0 = Clock::now();
    pool.parallel_for(nt, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i)
        g_sink.fetch_add(static_cast<int64_t>(reader(buf + static_cast<size_t>(i) * per, per)),
                         std::memory_order_relaxed);
    }, 1);
    best = std::max(best, static_cast<double>(bytes) / seconds_since(t0) / 1e9);
  }
  ::munmap(mem, bytes);
  return best;
}

const char* int8_gops_kernel_name() {
  if (cpu_supports(SimdPath::Avx512) && has("avx512vnni")) return "vpdpbusd zmm";
  if (cpu_supports(SimdPath::Avx512)) return "vpmaddubsw+vpmaddwd zmm";
  if (cpu_supports(SimdPath::Avx2)) return "vpmaddubsw+vpmaddwd ymm";
  return "scalar";
}

double measure_int8_gops(ThreadPool& pool) {
  double ops;
  if (cpu_supports(SimdPath::Avx512) && has("avx512vnni")) {
    ops = peak_rate(pool, kChains * 64 * 2.0, int8_vnni);
  } else if (cpu_supports(SimdPath::Avx512)) {
    ops = peak_rate(pool, kChains / 2 * 64 * 2.0, int8_bw);
  } else if (cpu_supports(SimdPath::Avx2)) {
    ops = peak_rate(pool, kChains / 2 * 32 * 2.0, int8_avx2);
  } else {
    ops = peak_rate(pool, 8 * 2.0, int8_scalar);
  }
  return ops / 1e9;
}

const char* bf16_gflops_kernel_name() {
  if (cpu_supports(SimdPath::Avx512) && has("avx512bf16")) return "vdpbf16ps zmm";
  if (cpu_supports(SimdPath::Avx512)) return "vfmadd231ps zmm";
  if (cpu_supports(SimdPath::Avx2)) return "vfmadd231ps ymm";
  return "scalar";
}

double measure_bf16_gflops(ThreadPool& pool) {
  double flops;
  if (cpu_supports(SimdPath::Avx512) && has("avx512bf16")) {
    flops = peak_rate(pool, kChains * 32 * 2.0, bf16_dp);
  } else if (cpu_supports(SimdPath::Avx512)) {
    flops = peak_rate(pool, kChains * 16 * 2.0, fma512);
  } else if (cpu_supports(SimdPath::Avx2)) {
    flops = peak_rate(pool, 12 * 8 * 2.0, fma256);
  } else {
    flops = peak_rate(pool, 8 * 2.0, fma_scalar);
  }
  return flops / 1e9;
}

}  // namespace mx
