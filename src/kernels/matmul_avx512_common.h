// Helpers shared by the AVX-512 matmul files (matmul_avx512.cc, matmul_kr16_avx512.cc). Only
// those files include it: like matmul_drive.h everything here has internal linkage and is
// compiled with their ISA flags.
#pragma once
#include <immintrin.h>

#include "kernels/matmul_drive.h"

namespace mx::mmk {
namespace {

// acc += vpdpbusd(u, broadcast of the 4 bytes at x): the broadcast as the instruction's memory
// operand ({1to16}); GCC otherwise emits a separate vpbroadcastd per product.
inline __m512i dpbusd_bcast(__m512i acc, __m512i u, const void* x) {
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u), "m"(*static_cast<const int32_t*>(x)));
  return acc;
}

// Decode (one token) streams the weights from DRAM: with both cores streaming, the loop's
// out-of-order window alone does not keep enough misses in flight, so each step also
// prefetches the weights MX_PF bytes ahead (one prefetch per 64 bytes consumed, rounded
// down; the hardware prefetcher fills the odd line). Measured best at 8 KiB on Zen 5.
#ifndef MX_PF
#define MX_PF 8192
#endif
#ifndef MX_PF_HINT
#define MX_PF_HINT _MM_HINT_T0
#endif
template <int kBytes>
inline void prefetch_span(const uint8_t* p) {
  MX_UNROLL for (int o = 0; o < kBytes / 64 * 64; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p + MX_PF + o), MX_PF_HINT);
}

}  // namespace
}  // namespace mx::mmk
