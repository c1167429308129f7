// Tiling driver shared by the SIMD matmul files. Everything here has internal linkage on
// purpose: each *_avx2.cc / *_avx512.cc file compiles its own copy with its own ISA flags, and
// the linker must never pick an AVX-512 instantiation for another path. For the same reason the
// SIMD files avoid std:: templates.
//
// A kernel K provides `template <int NR, int NT> static void tile(w, p, r, t, y, ldy)`, which
// computes rows [r, r+NR) x tokens [t, t+NT). Each (row, token) pair must go through exactly
// the same operation sequence for every NR and NT: the driver only changes how many pairs share
// a weight load, never the arithmetic of one pair (the determinism contract in matmul.h).
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels/matmul_internal.h"

// GCC -O2 does not completely unroll short fixed-count loops; register tiles (arrays of
// vectors indexed by such loops) would then live on the stack.
#define MX_UNROLL _Pragma("GCC unroll 16")
#ifndef MX_GEMV_WIDE
#define MX_GEMV_WIDE (28 * 1024)
#endif

namespace mx::mmk {
namespace {

template <class K, int NR, int NT>
inline void call_nt(int nt, const MatView& w, const Prepared& p, int64_t r, int64_t t, float* y,
                    int64_t ldy) {
  if constexpr (NT > 1) {
    if (nt < NT) return call_nt<K, NR, NT - 1>(nt, w, p, r, t, y, ldy);
  }
  K::template tile<NR, NT>(w, p, r, t, y, ldy);
}

template <class K, int NR, int MT>
inline void call_tile(int nr, int nt, const MatView& w, const Prepared& p, int64_t r, int64_t t,
                      float* y, int64_t ldy) {
  if constexpr (NR > 1) {
    if (nr < NR) return call_tile<K, NR - 1, MT>(nr, nt, w, p, r, t, y, ldy);
  }
  call_nt<K, NR, MT>(nt, w, p, r, t, y, ldy);
}

// Rows [r0, r1) for all tokens. Weight rows are taken in blocks that stay in L2 while every
// token tile passes over them; a token tile's activations stay in L1/L2 across the block.
// A single token (decode GEMV) walks the rows one by one while its activations fit in L1:
// consecutive rows are contiguous, so the weights stream as one sequential read, which the
// hardware prefetcher follows better than several interleaved row streams. Larger activations
// would be re-read from L2 for every row and stall the stream, so then MRV rows share each
// activation load.
#ifndef MX_MRV
#define MX_MRV 4
#endif
template <class K, int MR, int MT, int MRV = MX_MRV>
void drive(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y, int64_t ldy) {
  const int64_t T = p.n_tokens;
  if (T == 1) {
    const int64_t step = p.act_bytes > MX_GEMV_WIDE ? MRV : 1;
    for (int64_t r = r0; r < r1; r += step) {
      const int nr = static_cast<int>(r1 - r < step ? r1 - r : step);
      call_tile<K, MRV, 1>(nr, 1, w, p, r, 0, y, ldy);
    }
    return;
  }
  const int64_t stride = w.stride > 0 ? static_cast<int64_t>(w.stride) : 1;
  int64_t rb = (int64_t{256} * 1024 / stride) / MR * MR;
  if (rb < MR) rb = MR;
  if (T <= MT) rb = r1 - r0;  // one token tile: plain streaming
  for (int64_t rs = r0; rs < r1; rs += rb) {
    const int64_t re = rs + rb < r1 ? rs + rb : r1;
    for (int64_t t = 0; t < T; t += MT) {
      const int nt = static_cast<int>(T - t < MT ? T - t : MT);
      for (int64_t r = rs; r < re; r += MR) {
        const int nr = static_cast<int>(re - r < MR ? re - r : MR);
        call_tile<K, MR, MT>(nr, nt, w, p, r, t, y, ldy);
      }
    }
  }
}

inline uint16_t ld16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t ld32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t ld64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// 6-bit scales and mins of the 8 sub-blocks of a Q4_K / Q5_K super-block (ggml's packing).
inline void k4_scales(const uint8_t* q, int16_t* sc, int16_t* m) {
  MX_UNROLL for (int j = 0; j < 4; ++j) {
    sc[j] = static_cast<int16_t>(q[j] & 63);
    m[j] = static_cast<int16_t>(q[j + 4] & 63);
  }
  MX_UNROLL for (int j = 4; j < 8; ++j) {
    sc[j] = static_cast<int16_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m[j] = static_cast<int16_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

}  // namespace
}  // namespace mx::mmk
