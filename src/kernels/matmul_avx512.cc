// AVX-512 (F/BW/VL/DQ) matmul kernels; quantized types additionally need AVX512-VNNI and fall
// back to the AVX2 kernels without it.
//
// Legacy 32-blocks: Q8_0 with 16 rows in lanes (Q8T; the interleaved Q8_0R16 / Q4_0R16 cache
// layouts feed the same tiles without transposing); 4/5-bit types two blocks per zmm
// (Nibble); integer block sums exact. k-quants: unsigned weights x signed Q8_K activations with vpmaddubsw, sub-block scales
// applied with vpdpwssd. bf16: widened exactly to f32 (shift / mask), then FMA.
#include <immintrin.h>

// GCC 12's intrinsic headers trip -W(maybe-)uninitialized on their own _mm*_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/matmul_avx512_common.h"

namespace mx::mmk {
namespace {

inline float h2f(const uint8_t* p) { return _cvtsh_ss(ld16(p)); }


// ---------------------------------------------------------------- plain f32 / f16 / bf16

template <DType DT>
struct Plain {
  // Elements consumed per step: bf16 widens 32 values (even / odd halves) per 64-byte load.
  static constexpr int kStep = DT == DType::BF16 ? 32 : 16;
  static constexpr int kEsz = DT == DType::F32 ? 4 : 2;

  // One step of kStep values; the ragged last step loads with a mask (zeros past the row),
  // which feeds the FMAs the same values a zero-padded full step would. Two accumulators per
  // (row, token) halve the FMA dependency chain: bf16 sends even / odd elements to a0 / a1,
  // f32 / f16 alternate whole steps (step c -> a[c & 1]).
  template <int NR, int NT, bool kTail>
  static inline void step(const uint8_t* const* wr, int64_t c, int rem, const float* const* x,
                          __m512 (&a0)[NR][NT], __m512 (&a1)[NR][NT]) {
    if constexpr (DT == DType::BF16) {
      __m512 ev[NR], od[NR];
      MX_UNROLL for (int i = 0; i < NR; ++i) {
        const uint8_t* src = wr[i] + c * kStep * kEsz;
        const __m512i v = kTail ? _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ull << rem) - 1), src)
                                : _mm512_loadu_si512(src);
        ev[i] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        od[i] = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
      }
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const __m512 xe = _mm512_load_ps(x[j] + c * 32);
        const __m512 xo = _mm512_load_ps(x[j] + c * 32 + 16);
        MX_UNROLL for (int i = 0; i < NR; ++i) {
          a0[i][j] = _mm512_fmadd_ps(ev[i], xe, a0[i][j]);
          a1[i][j] = _mm512_fmadd_ps(od[i], xo, a1[i][j]);
        }
      }
    } else {
      __m512 wv[NR];
      MX_UNROLL for (int i = 0; i < NR; ++i) {
        const uint8_t* src = wr[i] + c * kStep * kEsz;
        if constexpr (DT == DType::F32) {
          wv[i] = kTail ? _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << rem) - 1), src)
                        : _mm512_loadu_ps(src);
        } else {
          wv[i] = _mm512_cvtph_ps(kTail ? _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << rem) - 1), src)
                                        : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
        }
      }
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const __m512 xv = _mm512_load_ps(x[j] + c * 16);
        MX_UNROLL for (int i = 0; i < NR; ++i) {
          if (c & 1) a1[i][j] = _mm512_fmadd_ps(wv[i], xv, a1[i][j]);
          else a0[i][j] = _mm512_fmadd_ps(wv[i], xv, a0[i][j]);
        }
      }
    }
  }

  template <int NR, int NT>
  static void tile(const MatView& w, const Prepared& p, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t ns = w.cols / kStep;
    const int rem = static_cast<int>(w.cols % kStep);
    const uint8_t* wr[NR];
    MX_UNROLL for (int i = 0; i < NR; ++i) wr[i] = w.row(r + i);
    const float* x[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) x[j] = p.xf + (t + j) * p.xf_stride;
    __m512 a0[NR][NT], a1[NR][NT];
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) a0[i][j] = a1[i][j] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 1 < ns; c += 2) {  // pairs of steps keep (c & 1) a compile-time pattern
      step<NR, NT, false>(wr, c, rem, x, a0, a1);
      step<NR, NT, false>(wr, c + 1, rem, x, a0, a1);
    }
    if (c < ns) step<NR, NT, false>(wr, c++, rem, x, a0, a1);
    if (rem) step<NR, NT, true>(wr, c, rem, x, a0, a1);
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j)
        y[(t + j) * ldy + r + i] = _mm512_reduce_add_ps(_mm512_add_ps(a0[i][j], a1[i][j]));
  }
};

// bf16 activations: each 32-chunk stored as its 16 even then its 16 odd elements, matching
// the lanes the shift / mask widening produces.
void fill_plain_bf16(const float* x, int64_t cols, float* dst, int64_t stride) {
  for (int64_t c = 0; c < stride; c += 32) {
    MX_UNROLL for (int i = 0; i < 16; ++i) {
      const int64_t e = c + 2 * i, o = e + 1;
      dst[c + i] = e < cols ? x[e] : 0.f;
      dst[c + 16 + i] = o < cols ? x[o] : 0.f;
    }
  }
}

void fill_plain_512(const float* x, int64_t cols, float* dst, int64_t stride) {
  std::memcpy(dst, x, static_cast<size_t>(cols) * sizeof(float));
  std::memset(dst + cols, 0, static_cast<size_t>(stride - cols) * sizeof(float));
}

// ---------------------------------------------------------------- legacy 32-blocks (VNNI)

// Q8T GEMV: prefetch distance in each of the 16 row streams; packed row-block budget (bytes).
#ifndef MX_PF16_HINT
#define MX_PF16_HINT _MM_HINT_T0
#endif
#ifndef MX_Q8T_FUSED
#define MX_Q8T_FUSED 16
#endif
#ifndef MX_Q8T_FT
#define MX_Q8T_FT 16
#endif
#ifndef MX_Q8T_L2
#define MX_Q8T_L2 (384 * 1024)
#endif
// q8_0r16 calls with at most this many tokens stream 16-row groups with all tokens at once;
// more go through the 32-row x 4-token tiles over K chunks of MX_Q8R_KC blocks (A/B at
// 14336 x 4096, 2 threads: 16 tokens 760-800 -> 790-870 GOPS that way; 8 tokens no better).
// A chunk of 128 blocks (32 rows x 4096: 136 KB of weights, L2-resident, plus 128 tokens'
// 512 KB of activations) beat 32 (L1-resident weights, but each tile's partial sums stored and
// reloaded 4x as often): Q8_0 prefill 512, same machine alternating, 515/560 -> 578/586 tok/s.
#ifndef MX_Q8R_DIRECT
#define MX_Q8R_DIRECT 8
#endif
#ifndef MX_Q8R_KC
#define MX_Q8R_KC 128
#endif

// ---------------------------------------------------------------- Q8_0, rows in lanes (VNNI)

// Q8_0 weights times Q8 activations with 16 weight rows in the 16 lanes of a vector. A block
// (32 values) of 16 rows is transposed in registers into 8 vectors W[k] (lane l = dword k of
// row l, stored + 128 as unsigned), so 8 vpdpbusd with broadcast activation dwords give the
// exact integer block sums of 16 rows at once, and the int -> float work is one convert and
// one FMA per (block, token) for 16 rows. The + 128 is removed exactly: the accumulator starts
// at -128 * sum(x) of the block (Prepared::bias).
// Per (row, token) the float sequence is always: acc = fma(float(S_b), dw_b * dx_b, acc) for
// blocks b = 0, 1, ... in order (S_b exact), whatever the tile, so GEMV and GEMM agree.
// Several tokens (> kMT) first pack row blocks once into a thread-local buffer (L2-resident),
// which every token tile then reads.
struct Q8T {
  static constexpr int kBB = 34;
  static constexpr int kMT = 8;   // token tile of the packed path
  static constexpr int kFT = MX_Q8T_FT;  // largest token tile of the fused path
  static constexpr int kPacked = 9 * 64;  // 8 weight vectors + 16 f32 scales per block

  // f16 scales of block b of the 16 rows as f32 lanes. Built from 16 scalar loads packed four
  // to a 64-bit register: measured ~20% faster GEMV than one vpgatherdd (which the 2-block
  // GEMV step needs twice), the scalar units being otherwise idle.
  static inline __m512 scales(const uint8_t* const* wr, int64_t o) {
    uint64_t q[4];
    MX_UNROLL for (int g = 0; g < 4; ++g)
      q[g] = uint64_t{ld16(wr[4 * g] + o)} | uint64_t{ld16(wr[4 * g + 1] + o)} << 16 |
             uint64_t{ld16(wr[4 * g + 2] + o)} << 32 | uint64_t{ld16(wr[4 * g + 3] + o)} << 48;
    return _mm512_cvtph_ps(_mm256_set_epi64x(static_cast<int64_t>(q[3]), static_cast<int64_t>(q[2]),
                                             static_cast<int64_t>(q[1]), static_cast<int64_t>(q[0])));
  }

  // wr: 16 row pointers.
  static inline void pack(const uint8_t* const* wr, int64_t b, __m512i (&W)[8], __m512& dw) {
    const int64_t o = b * kBB;
    __m512i Z[8], A[8], B0[4], B1[4];
    MX_UNROLL for (int i = 0; i < 8; ++i) {
      const int a = i < 4 ? i : i + 4;
      Z[i] = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[a] + o + 2))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[a + 4] + o + 2)), 1);
    }
    MX_UNROLL for (int q = 0; q < 4; ++q) {
      A[2 * q] = _mm512_unpacklo_epi32(Z[2 * q], Z[2 * q + 1]);
      A[2 * q + 1] = _mm512_unpackhi_epi32(Z[2 * q], Z[2 * q + 1]);
    }
    B0[0] = _mm512_unpacklo_epi64(A[0], A[2]);
    B0[1] = _mm512_unpackhi_epi64(A[0], A[2]);
    B0[2] = _mm512_unpacklo_epi64(A[1], A[3]);
    B0[3] = _mm512_unpackhi_epi64(A[1], A[3]);
    B1[0] = _mm512_unpacklo_epi64(A[4], A[6]);
    B1[1] = _mm512_unpackhi_epi64(A[4], A[6]);
    B1[2] = _mm512_unpacklo_epi64(A[5], A[7]);
    B1[3] = _mm512_unpackhi_epi64(A[5], A[7]);
    const __m512i s80 = _mm512_set1_epi8(static_cast<char>(0x80));
    MX_UNROLL for (int k = 0; k < 4; ++k) {
      W[k] = _mm512_xor_si512(_mm512_shuffle_i32x4(B0[k], B1[k], 0x88), s80);
      W[k + 4] = _mm512_xor_si512(_mm512_shuffle_i32x4(B0[k], B1[k], 0xDD), s80);
    }
    dw = scales(wr, o);
  }

  // Integer sums k-outer / token-inner up to 8 tokens: NT (x 2 when NT < 4) independent
  // vpdpbusd chains, so the multiply units never wait on one chain's latency. More tokens
  // (fused tiles of 9..16) go token by token (two chains each), which keeps the live registers
  // at 8 W + NT accumulators + 2. Integer sums are exact, so the split is invisible.
  template <int NT>
  static inline void dot(const __m512i (&W)[8], __m512 dw, int64_t b, const int8_t* const* xq,
                         const float* const* xd, const int32_t* const* xb, __m512 (&f)[NT]) {
    if constexpr (NT > 8) {
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const uint8_t* xp = reinterpret_cast<const uint8_t*>(xq[j] + 32 * b);
        __m512i a0 = _mm512_set1_epi32(xb[j][b]), a1 = _mm512_setzero_si512();
        MX_UNROLL for (int k = 0; k < 8; k += 2) {
          a0 = dpbusd_bcast(a0, W[k], xp + 4 * k);
          a1 = dpbusd_bcast(a1, W[k + 1], xp + 4 * k + 4);
        }
        f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a0, a1)),
                               _mm512_mul_ps(dw, _mm512_set1_ps(xd[j][b])), f[j]);
      }
      return;
    }
    constexpr int kC = NT < 4 ? 2 : 1;  // chains per token
    __m512i a[kC][NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      a[0][j] = _mm512_set1_epi32(xb[j][b]);
      if constexpr (kC == 2) a[1][j] = _mm512_setzero_si512();
    }
    MX_UNROLL for (int k = 0; k < 8; ++k)
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const uint8_t* xp = reinterpret_cast<const uint8_t*>(xq[j] + 32 * b);
        a[k % kC][j] = dpbusd_bcast(a[k % kC][j], W[k], xp + 4 * k);
      }
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      const __m512i s = kC == 2 ? _mm512_add_epi32(a[0][j], a[kC - 1][j]) : a[0][j];
      f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(xd[j][b])), f[j]);
    }
  }

  template <int NT>
  static inline void store(const __m512 (&f)[NT], int64_t t, int64_t r, int n, float* y, int64_t ldy) {
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    MX_UNROLL for (int j = 0; j < NT; ++j) _mm512_mask_storeu_ps(y + (t + j) * ldy + r, m, f[j]);
  }

  static inline void acts(const Prepared& p, int64_t t, int nt, const int8_t** xq, const float** xd,
                          const int32_t** xb) {
    for (int j = 0; j < nt; ++j) {
      xq[j] = p.q + (t + j) * p.q_stride;
      xd[j] = p.d + (t + j) * p.d_stride;
      xb[j] = p.bias + (t + j) * p.d_stride;
    }
  }

  // One token (decode), rows [r, r + n) (n <= 16) in their plain layout: each row's block pair
  // is one 64-byte vector (one insert), one vpdpbusd gives 8 dword partials per block, and an
  // unpack / add tree over the 16 rows reduces them to the exact block sums with row l in lane l
  // (about 23 shuffles per block instead of the 32 of pack). The float work per (row, token) is
  // then exactly dot<1>'s: acc = fma(float(S_b), dw_b * dx_b, acc), b in order, so results
  // are bit-identical to the packed multi-token path.
  // P[i]: dword partials of row i (dwords 0-7 block b, 8-15 block b + 1) -> S0 / S1 (lane = row):
  // unpack / add tree (32-bit, then 64-bit pairs give each 128-bit lane's sum for 4 rows), then
  // 128-bit lanes pair up across vectors.
  static inline void reduce16(const __m512i (&P)[16], __m512i& S0, __m512i& S1) {
    __m512i M1[8], M2[4], M3[2];
    MX_UNROLL for (int k = 0; k < 8; ++k)
      M1[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(P[2 * k], P[2 * k + 1]),
                               _mm512_unpackhi_epi32(P[2 * k], P[2 * k + 1]));
    MX_UNROLL for (int k = 0; k < 4; ++k)
      M2[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(M1[2 * k], M1[2 * k + 1]),
                               _mm512_unpackhi_epi64(M1[2 * k], M1[2 * k + 1]));
    MX_UNROLL for (int k = 0; k < 2; ++k)  // [b rows 0-3, b+1 rows 0-3, b rows 4-7, b+1 rows 4-7] (+ 8k)
      M3[k] = _mm512_add_epi32(_mm512_shuffle_i32x4(M2[2 * k], M2[2 * k + 1], 0x88),
                               _mm512_shuffle_i32x4(M2[2 * k], M2[2 * k + 1], 0xDD));
    S0 = _mm512_shuffle_i32x4(M3[0], M3[1], 0x88);
    S1 = _mm512_shuffle_i32x4(M3[0], M3[1], 0xDD);
  }

  static void gemv(const MatView& w, const Prepared& p, int64_t r, int n, float* y,
                   const uint8_t* next) {
    const int64_t nb = w.cols / 32;
    const uint8_t* wr[16];
    for (int i = 0; i < 16; ++i) wr[i] = w.row(r + (i < n ? i : n - 1));
    const int8_t* xq = p.q;
    const float* xd = p.d;
    const int32_t* xb = p.bias;
    const __m512i s80 = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512 f = _mm512_setzero_ps();
    auto fin = [&](__m512i S, int64_t b) {  // same float operations as dot<1>
      const __m512 dw = scales(wr, b * kBB);
      S = _mm512_add_epi32(S, _mm512_set1_epi32(xb[b]));
      f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S), _mm512_mul_ps(dw, _mm512_set1_ps(xd[b])), f);
    };
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
      if (next) {  // the next group's 16 rows are one contiguous span: stream it sequentially
        MX_UNROLL for (int o = 0; o < 2 * 16 * kBB; o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(next + b * 16 * kBB + o), MX_PF16_HINT);
      }
      const __m512i X = _mm512_loadu_si512(xq + 32 * b);
      __m512i P[16];
      MX_UNROLL for (int i = 0; i < 16; ++i) {
        const uint8_t* b0 = wr[i] + b * kBB;
        const __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + kBB + 2)), 1);
        P[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(v, s80), X);
      }
      __m512i S0, S1;
      reduce16(P, S0, S1);
      fin(S0, b);
      fin(S1, b + 1);
    }
    if (b < nb) {  // lone last block: upper halves zero
      const __m512i X = _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b)));
      __m512i P[16];
      MX_UNROLL for (int i = 0; i < 16; ++i) {
        const __m512i v = _mm512_zextsi256_si512(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[i] + b * kBB + 2)));
        P[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(v, s80), X);
      }
      __m512i S0, S1;
      reduce16(P, S0, S1);
      fin(S0, b);
    }
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    _mm512_mask_storeu_ps(y + r, m, f);
  }

  static void pack_group(const MatView& w, int64_t r, int n, uint8_t* dst, const uint8_t* next) {
    const int64_t nb = w.cols / 32;
    const uint8_t* wr[16];
    for (int i = 0; i < 16; ++i) wr[i] = w.row(r + (i < n ? i : n - 1));
    for (int64_t b = 0; b < nb; ++b) {
      if (next) {  // as in gemv: the next group streams in sequentially
        MX_UNROLL for (int o = 0; o < 16 * kBB; o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(next + b * 16 * kBB + o), MX_PF16_HINT);
      }
      __m512i W[8];
      __m512 dw;
      pack(wr, b, W, dw);
      uint8_t* d = dst + b * kPacked;
      MX_UNROLL for (int k = 0; k < 8; ++k) _mm512_store_si512(d + 64 * k, W[k]);
      _mm512_store_ps(d + 512, dw);
    }
  }

  // Where a block's 8 weight vectors (+ 128) and 16 f32 scales come from: the packed buffer
  // (kPacked bytes a block, aligned), or a Q8_0R16 group read in place (dtype.h), where the
  // vectors are stored signed and the scales as f16 after the group's quants. kPf: prefetch the
  // stream ahead (weights coming from DRAM; groups are back to back, so it is one sequence).
  struct FromPacked {
    static inline void load(const uint8_t* src, int64_t, int64_t b, __m512i (&W)[8], __m512& dw) {
      const uint8_t* s = src + b * kPacked;
      MX_UNROLL for (int k = 0; k < 8; ++k) W[k] = _mm512_load_si512(s + 64 * k);
      dw = _mm512_load_ps(s + 512);
    }
  };
  template <bool kPf>
  struct FromR16 {
    static inline void load(const uint8_t* grp, int64_t nb, int64_t b, __m512i (&W)[8], __m512& dw) {
      const uint8_t* s = grp + 512 * b;
      if constexpr (kPf) prefetch_span<512>(s);
      const __m512i s80 = _mm512_set1_epi8(static_cast<char>(0x80));
      MX_UNROLL for (int k = 0; k < 8; ++k) W[k] = _mm512_xor_si512(_mm512_loadu_si512(s + 64 * k), s80);
      dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + 512 * nb + 32 * b)));
    }
  };

  // Q4_0R16 in place: 4 vectors of nibble dwords per block; low nibbles are values 4k .. 4k+3
  // (W[k]), high nibbles 16 + 4k .. (W[4 + k]), already unsigned (0..15). The Q4_0 offset 8
  // is removed exactly as the Q8_0 offset is: the bias is -8 * sum(x).
  template <bool kPf>
  struct FromQ4R16 {
    static inline void load(const uint8_t* grp, int64_t nb, int64_t b, __m512i (&W)[8], __m512& dw) {
      const uint8_t* s = grp + 256 * b;
      if constexpr (kPf) prefetch_span<256>(s);
      const __m512i m4 = _mm512_set1_epi8(0x0F);
      MX_UNROLL for (int k = 0; k < 4; ++k) {
        const __m512i v = _mm512_loadu_si512(s + 64 * k);
        W[k] = _mm512_and_si512(v, m4);
        W[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
      }
      dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + 256 * nb + 32 * b)));
    }
  };

  template <class L, int NT>
  static void packed(const uint8_t* src, int64_t nb, const Prepared& p, int64_t r, int n, int64_t t,
                     float* y, int64_t ldy) {
    const int8_t* xq[NT];
    const float* xd[NT];
    const int32_t* xb[NT];
    acts(p, t, NT, xq, xd, xb);
    __m512 f[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) f[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m512i W[8];
      __m512 dw;
      L::load(src, nb, b, W, dw);
      dot<NT>(W, dw, b, xq, xd, xb, f);
    }
    store<NT>(f, t, r, n, y, ldy);
  }

  // Two packed groups (32 rows) x NT <= 4 tokens: each activation broadcast feeds two
  // vpdpbusd, halving the activation loads per product (per measurement the loads rather than
  // the multipliers bound the 16-row x 8-token tile: 14336 x 4096 x 64 tokens, 2 threads,
  // 840-895 -> 940-1080 GOPS). Same float sequence per (row, token) as dot.
  // Blocks [b0, b1) only (K chunks, rows_r16): with b0 > 0 the accumulators resume from the
  // partial sums stored in y, so the float sequence per (row, token) is unchanged.
  template <class L, int NT>
  static void packed2(const uint8_t* src, int64_t gbytes, int64_t nb, const Prepared& p, int64_t r,
                      int64_t t, float* y, int64_t ldy, int64_t b0 = 0, int64_t b1 = -1) {
    if (b1 < 0) b1 = nb;
    const int8_t* xq[NT];
    const float* xd[NT];
    const int32_t* xb[NT];
    acts(p, t, NT, xq, xd, xb);
    __m512 f0[NT], f1[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      if (b0 > 0) {
        f0[j] = _mm512_loadu_ps(y + (t + j) * ldy + r);
        f1[j] = _mm512_loadu_ps(y + (t + j) * ldy + r + 16);
      } else {
        f0[j] = f1[j] = _mm512_setzero_ps();
      }
    }
    for (int64_t b = b0; b < b1; ++b) {
      __m512i W0[8], W1[8];
      __m512 dw0, dw1;
      L::load(src, nb, b, W0, dw0);
      L::load(src + gbytes, nb, b, W1, dw1);
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const uint8_t* xp = reinterpret_cast<const uint8_t*>(xq[j] + 32 * b);
        __m512i a0 = _mm512_set1_epi32(xb[j][b]), a1 = a0;
        MX_UNROLL for (int k = 0; k < 8; ++k) {
          const __m512i x = _mm512_set1_epi32(static_cast<int>(ld32(xp + 4 * k)));
          a0 = _mm512_dpbusd_epi32(a0, W0[k], x);
          a1 = _mm512_dpbusd_epi32(a1, W1[k], x);
        }
        const __m512 dx = _mm512_set1_ps(xd[j][b]);
        f0[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_mul_ps(dw0, dx), f0[j]);
        f1[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_mul_ps(dw1, dx), f1[j]);
      }
    }
    store<NT>(f0, t, r, 16, y, ldy);
    store<NT>(f1, t, r + 16, 16, y, ldy);
  }

  template <class L, int NT = 4>
  static void packed2_n(int nt, const uint8_t* src, int64_t gbytes, int64_t nb, const Prepared& p,
                        int64_t r, int64_t t, float* y, int64_t ldy, int64_t b0 = 0, int64_t b1 = -1) {
    if constexpr (NT > 1) {
      if (nt < NT) return packed2_n<L, NT - 1>(nt, src, gbytes, nb, p, r, t, y, ldy, b0, b1);
    }
    packed2<L, NT>(src, gbytes, nb, p, r, t, y, ldy, b0, b1);
  }

  // One token tile (T <= kMT): each block of 16 rows is transposed in registers and used at
  // once, without the packed buffer. Same speed when the weights are cache-resident, but from
  // DRAM the transposition now overlaps the weight stream instead of alternating with it:
  // 14336 x 4096, 8 tokens, 2 threads 2.5 -> 1.47 ms (memory bound).
  template <int NT>
  static void fused(const MatView& w, const Prepared& p, int64_t r, int n, int64_t t, float* y,
                    int64_t ldy, const uint8_t* next) {
    const int64_t nb = w.cols / 32;
    const uint8_t* wr[16];
    for (int i = 0; i < 16; ++i) wr[i] = w.row(r + (i < n ? i : n - 1));
    const int8_t* xq[NT];
    const float* xd[NT];
    const int32_t* xb[NT];
    acts(p, t, NT, xq, xd, xb);
    __m512 f[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) f[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      if (next) {  // as in gemv: the next group streams in sequentially
        MX_UNROLL for (int o = 0; o < 16 * kBB; o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(next + b * 16 * kBB + o), MX_PF16_HINT);
      }
      __m512i W[8];
      __m512 dw;
      pack(wr, b, W, dw);
      dot<NT>(W, dw, b, xq, xd, xb, f);
    }
    store<NT>(f, t, r, n, y, ldy);
  }

  template <int NT = kFT>
  static void fused_n(int nt, const MatView& w, const Prepared& p, int64_t r, int n, int64_t t,
                      float* y, int64_t ldy, const uint8_t* next) {
    if constexpr (NT > 1) {
      if (nt < NT) return fused_n<NT - 1>(nt, w, p, r, n, t, y, ldy, next);
    }
    fused<NT>(w, p, r, n, t, y, ldy, next);
  }

  template <class L, int NT = kMT>
  static void packed_n(int nt, const uint8_t* src, int64_t nb, const Prepared& p, int64_t r, int n,
                       int64_t t, float* y, int64_t ldy) {
    if constexpr (NT > 1) {
      if (nt < NT) return packed_n<L, NT - 1>(nt, src, nb, p, r, n, t, y, ldy);
    }
    packed<L, NT>(src, nb, p, r, n, t, y, ldy);
  }

  static void rows(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                   int64_t ldy) {
    const int64_t T = p.n_tokens;
    if (T == 1) {
      for (int64_t r = r0; r < r1; r += 16) {
        const uint8_t* next =
            r + 32 <= r1 && w.stride == static_cast<size_t>(w.cols / 32 * kBB) ? w.row(r + 16) : nullptr;
        gemv(w, p, r, static_cast<int>(r1 - r < 16 ? r1 - r : 16), y, next);
      }
      return;
    }
    const int64_t nb = w.cols / 32;
    const bool dense = w.stride == static_cast<size_t>(nb * kBB);  // rows back to back
    if (T <= MX_Q8T_FUSED) {
      for (int64_t r = r0; r < r1; r += 16) {
        const uint8_t* next = r + 32 <= r1 && dense ? w.row(r + 16) : nullptr;
        for (int64_t t = 0; t < T; t += kFT) {
          const int nt = static_cast<int>(T - t < kFT ? T - t : kFT);
          fused_n(nt, w, p, r, static_cast<int>(r1 - r < 16 ? r1 - r : 16), t, y, ldy, t == 0 ? next : nullptr);
        }
      }
      return;
    }
    const int64_t gbytes = nb * kPacked;
    // 16-row groups per packed row block; one token tile needs no reuse beyond one group.
    int64_t gpb = MX_Q8T_L2 / gbytes;
    gpb = gpb < 2 ? 2 : gpb & ~int64_t{1};  // whole 32-row pairs (wide rows: 2 groups anyway)
    thread_local Arena buf;
    const int64_t ng_all = (r1 - r0 + 15) / 16;
    if (gpb > ng_all) gpb = ng_all;
    uint8_t* pk = static_cast<uint8_t*>(buf.get(static_cast<size_t>(gpb * gbytes)));
    for (int64_t rs = r0; rs < r1; rs += 16 * gpb) {
      const int64_t re = rs + 16 * gpb < r1 ? rs + 16 * gpb : r1;
      const int64_t ng = (re - rs + 15) / 16;
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t r = rs + 16 * g;
        const uint8_t* next = r + 32 <= r1 && dense ? w.row(r + 16) : nullptr;
        pack_group(w, r, static_cast<int>(re - r < 16 ? re - r : 16), pk + g * gbytes, next);
      }
      // Full group pairs: 32 rows x 4 tokens; a ragged last group: 16 rows x 8 tokens.
      const int64_t npair = (re - rs) / 32;
      for (int64_t t = 0; t < T; t += 4) {
        const int nt = static_cast<int>(T - t < 4 ? T - t : 4);
        for (int64_t g = 0; g < npair; ++g)
          packed2_n<FromPacked>(nt, pk + 2 * g * gbytes, gbytes, nb, p, rs + 32 * g, t, y, ldy);
      }
      for (int64_t t = 0; t < T; t += kMT) {
        const int nt = static_cast<int>(T - t < kMT ? T - t : kMT);
        for (int64_t g = 2 * npair; g < ng; ++g) {
          const int64_t r = rs + 16 * g;
          packed_n<FromPacked>(nt, pk + g * gbytes, nb, p, r, static_cast<int>(re - r < 16 ? re - r : 16), t, y, ldy);
        }
      }
    }
  }

  // Q8_0R16 / Q4_0R16 (dtype.h), blocks read in place by loader L. For Q8_0R16 the arithmetic
  // is the above, so results equal Q8_0's bit for bit, without the transposition; Q4_0R16 gets
  // the same exact integer block sums (not the Nibble kernel's float order). Every thread
  // streams its groups in order. r0 and r1 are multiples of 16.
  template <template <bool> class L>
  static void rows_r16(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                       int64_t ldy) {
    const int64_t T = p.n_tokens, nb = w.cols / 32;
    const int64_t gbytes = 16 * static_cast<int64_t>(w.stride);
    if (T <= MX_Q8R_DIRECT) {  // decode and small expert groups: one pass, 16 rows at a time
      for (int64_t r = r0; r < r1; r += 16)
        for (int64_t t = 0; t < T; t += kFT)
          packed_n<L<true>, kFT>(static_cast<int>(T - t < kFT ? T - t : kFT), w.row(r), nb, p,
                                       r, 16, t, y, ldy);
      return;
    }
    // 32-row pairs in K chunks of MX_Q8R_KC blocks (136 KB of weights: they stay in L2 while
    // every token tile passes, with the tokens' activation chunks). The first tile of a chunk
    // brings it in from memory, with prefetch. (Prefetching the next chunk into L2 during the
    // tiles, as rows_kr16 does with its smaller groups, measured slower here: 2 chunks of
    // 136 KB plus 512 KB of activations crowd the 1 MB L2.)
    const int64_t kc = MX_Q8R_KC;
    int64_t r = r0;
    for (; r + 32 <= r1; r += 32)
      for (int64_t b0 = 0; b0 < nb; b0 += kc) {
        const int64_t b1 = b0 + kc < nb ? b0 + kc : nb;
        for (int64_t t = 0; t < T; t += 4) {
          const int nt = static_cast<int>(T - t < 4 ? T - t : 4);
          if (t == 0) packed2_n<L<true>>(nt, w.row(r), gbytes, nb, p, r, t, y, ldy, b0, b1);
          else packed2_n<L<false>>(nt, w.row(r), gbytes, nb, p, r, t, y, ldy, b0, b1);
        }
      }
    if (r < r1)  // a lone last group: 16 rows x 8 tokens over whole rows (from L2)
      for (int64_t t = 0; t < T; t += kMT)
        packed_n<L<false>>(static_cast<int>(T - t < kMT ? T - t : kMT), w.row(r), nb, p, r, 16,
                                 t, y, ldy);
  }
};

// 4/5-bit legacy types: unsigned weights (0..15 / 0..31) times signed activations. The
// *_0 offset (8 / 16) is subtracted exactly: the accumulator starts at -offset * sum(x) of the
// block (Prepared::bias). A pair's 64 values are ordered [b0 0..15, b1 0..15, b0 16..31,
// b1 16..31] on both sides (activations are stored permuted to match), which makes the
// nibble unpack one shift + one insert; dpbusd lanes 0-3, 8-11 then belong to b0, 4-7, 12-15
// to b1.
template <DType DT>
struct Nibble {
  static constexpr bool kMin = DT == DType::Q4_1 || DT == DType::Q5_1;
  static constexpr int kBB = DT == DType::Q4_0 ? 18 : DT == DType::Q4_1 ? 20 : DT == DType::Q5_0 ? 22 : 24;
  static constexpr int kQh = DT == DType::Q5_0 ? 2 : DT == DType::Q5_1 ? 4 : -1;
  static constexpr int kQs = DT == DType::Q4_0 ? 2 : DT == DType::Q4_1 ? 4 : DT == DType::Q5_0 ? 6 : 8;

  static inline __m512i lanes() { return _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1); }

  static inline __m512i unpack(const uint8_t* b0, const uint8_t* b1) {
    const __m256i v = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + kQs))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + kQs)), 1);
    __m512i z = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1),
                                 _mm512_set1_epi8(0x0F));
    if constexpr (kQh >= 0) {  // bit j of qh is the 5th bit of value j
      const uint64_t a = ld32(b0 + kQh), b = ld32(b1 + kQh);
      const __mmask64 k = (a & 0xFFFFu) | ((b & 0xFFFFu) << 16) | ((a >> 16) << 32) | ((b >> 16) << 48);
      z = _mm512_mask_add_epi8(z, k, z, _mm512_set1_epi8(16));
    }
    return z;
  }
  static inline __m128 scales2(uint32_t h0, uint32_t h1) {  // [f(h0), f(h1), 0, 0]
    return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(h0 | (h1 << 16))));
  }
  static inline __m128 load2(const float* p) {
    return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
  }

  // Per group of kPairs block pairs, per (row, token): t (+)= cvt(isum) * expand(dw * dx) (+ expand(m * d*sum(x))).
  // The *_0 types (no mins) expand dw per row and dx per token before multiplying (a lane copy
  // commutes with the product, so every lane's dw * dx is the same float): one vmulps per
  // (row, token, pair) instead of a vmulps and a vpermps, the expansions shared by the tile.
  template <int NR, int NT, int kPairs, bool kLastFull>
  static inline void group(const uint8_t* const* wr, int64_t pp, const Prepared& p,
                           const int8_t* const* xq, int64_t t, __m512 (&acc)[NR][NT]) {
    if constexpr (!kMin && NT > 1) return group0<NR, NT, kPairs, kLastFull>(wr, pp, p, xq, t, acc);
    __m512i wv[NR][kPairs];
    __m128 dw[NR][kPairs], mw[NR][kPairs];
    MX_UNROLL for (int i = 0; i < NR; ++i) {
      MX_UNROLL for (int q = 0; q < kPairs; ++q) {
        const bool full = q + 1 < kPairs || kLastFull;
        const uint8_t* b0 = wr[i] + 2 * (pp + q) * kBB;
        const uint8_t* b1 = full ? b0 + kBB : b0;
        if (NT == 1 && q == 0) prefetch_span<2 * kPairs * kBB>(b0);
        wv[i][q] = unpack(b0, b1);
        if (!full) wv[i][q] = _mm512_maskz_mov_epi8(0x0000FFFF0000FFFFull, wv[i][q]);  // lone block
        dw[i][q] = scales2(ld16(b0), full ? ld16(b1) : 0);
        if constexpr (kMin) mw[i][q] = scales2(ld16(b0 + 2), full ? ld16(b1 + 2) : 0);
      }
    }
    const __m512i P = lanes();
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      __m512i xv[kPairs], corr[kPairs];
      __m128 dx[kPairs], sd[kPairs];
      MX_UNROLL for (int q = 0; q < kPairs; ++q) {
        const int64_t o = (t + j) * p.d_stride + 2 * (pp + q);
        xv[q] = _mm512_load_si512(xq[j] + 64 * (pp + q));
        dx[q] = load2(p.d + o);
        if constexpr (kMin) {
          sd[q] = load2(p.sd + o);
          corr[q] = _mm512_setzero_si512();
        } else {
          corr[q] = _mm512_maskz_permutexvar_epi32(
              0x0011, P, _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.bias + o))));
        }
      }
      MX_UNROLL for (int i = 0; i < NR; ++i) {
        __m512 tv = _mm512_setzero_ps();
        MX_UNROLL for (int q = 0; q < kPairs; ++q) {
          const __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr[q], wv[i][q], xv[q]));
          const __m512 sc = _mm512_permutexvar_ps(P, _mm512_castps128_ps512(_mm_mul_ps(dw[i][q], dx[q])));
          tv = q == 0 ? _mm512_mul_ps(f, sc) : _mm512_fmadd_ps(f, sc, tv);
          if constexpr (kMin)
            tv = _mm512_add_ps(tv, _mm512_maskz_permutexvar_ps(
                                       0x0011, P, _mm512_castps128_ps512(_mm_mul_ps(mw[i][q], sd[q]))));
        }
        acc[i][j] = _mm512_add_ps(acc[i][j], tv);
      }
    }
  }

  // group for Q4_0 / Q5_0 with several tokens: same float operations per lane as above. The
  // first token tile (t == 0) also prefetches its rows, as the GEMV does: a few tokens are
  // still bound by the weight stream (14336 x 4096, 2 tokens, 2 threads: 1.6 -> 1.05 ms).
  template <int NR, int NT, int kPairs, bool kLastFull>
  static inline void group0(const uint8_t* const* wr, int64_t pp, const Prepared& p,
                            const int8_t* const* xq, int64_t t, __m512 (&acc)[NR][NT]) {
    const __m512i P = lanes();
    const __m512i P2 = _mm512_add_epi32(P, _mm512_set1_epi32(2));  // blocks 2, 3 of the group
    __m512i wv[NR][kPairs];
    __m512 dwe[NR][kPairs];
    MX_UNROLL for (int i = 0; i < NR; ++i) {
      uint64_t h = 0;
      MX_UNROLL for (int q = 0; q < kPairs; ++q) {
        const bool full = q + 1 < kPairs || kLastFull;
        const uint8_t* b0 = wr[i] + 2 * (pp + q) * kBB;
        const uint8_t* b1 = full ? b0 + kBB : b0;
        if ((NT == 1 || t == 0) && q == 0) prefetch_span<2 * kPairs * kBB>(b0);
        wv[i][q] = unpack(b0, b1);
        if (!full) wv[i][q] = _mm512_maskz_mov_epi8(0x0000FFFF0000FFFFull, wv[i][q]);  // lone block
        h |= (uint64_t{ld16(b0)} | (full ? uint64_t{ld16(b1)} << 16 : 0)) << (32 * q);
      }
      const __m512 d4 = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<int64_t>(h))));
      dwe[i][0] = _mm512_permutexvar_ps(P, d4);
      if constexpr (kPairs == 2) dwe[i][1] = _mm512_permutexvar_ps(P2, d4);
    }
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      const int64_t o = (t + j) * p.d_stride + 2 * pp;
      const __m512 dx4 = _mm512_castps128_ps512(kPairs == 2 ? _mm_loadu_ps(p.d + o) : load2(p.d + o));
      __m512i xv[kPairs], corr[kPairs];
      __m512 dxe[kPairs];
      MX_UNROLL for (int q = 0; q < kPairs; ++q) {
        xv[q] = _mm512_load_si512(xq[j] + 64 * (pp + q));
        dxe[q] = _mm512_permutexvar_ps(q == 0 ? P : P2, dx4);
        corr[q] = _mm512_maskz_permutexvar_epi32(
            0x0011, P, _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p.bias + o + 2 * q))));
      }
      MX_UNROLL for (int i = 0; i < NR; ++i) {
        __m512 tv = _mm512_setzero_ps();
        MX_UNROLL for (int q = 0; q < kPairs; ++q) {
          const __m512 f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr[q], wv[i][q], xv[q]));
          const __m512 sc = _mm512_mul_ps(dwe[i][q], dxe[q]);
          tv = q == 0 ? _mm512_mul_ps(f, sc) : _mm512_fmadd_ps(f, sc, tv);
        }
        acc[i][j] = _mm512_add_ps(acc[i][j], tv);
      }
    }
  }

  template <int NR, int NT>
  static void tile(const MatView& w, const Prepared& p, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t nb = w.cols / 32;
    const uint8_t* wr[NR];
    MX_UNROLL for (int i = 0; i < NR; ++i) wr[i] = w.row(r + i);
    const int8_t* xq[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) xq[j] = p.q + (t + j) * p.q_stride;
    __m512 acc[NR][NT];
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();
    const int64_t ng = nb / 4;  // groups of 4 blocks
    for (int64_t g = 0; g < ng; ++g) group<NR, NT, 2, true>(wr, 2 * g, p, xq, t, acc);
    switch (nb % 4) {
      case 1: group<NR, NT, 1, false>(wr, 2 * ng, p, xq, t, acc); break;
      case 2: group<NR, NT, 1, true>(wr, 2 * ng, p, xq, t, acc); break;
      case 3: group<NR, NT, 2, false>(wr, 2 * ng, p, xq, t, acc); break;
      default: break;
    }
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) y[(t + j) * ldy + r + i] = _mm512_reduce_add_ps(acc[i][j]);
  }
};

// ---------------------------------------------------------------- k-quants (VNNI)

// Stored order of the 16-value chunks of a Q8_K block for Q4_K / Q5_K weights: one 64-byte
// load of the weights' packed nibbles holds 32-value sub-blocks (0, 2) in its low nibbles and
// (1, 3) in its high nibbles, so activations are stored in sub-block order 0 2 1 3 4 6 5 7.
constexpr uint8_t kPermK45[16] = {0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15};
// Pairs of legacy blocks for the nibble kernels: [b0 lo, b1 lo, b0 hi, b1 hi] (16 values each).
constexpr uint8_t kPermNib[4] = {0, 2, 1, 3};

// Scales and mins of a Q4_K / Q5_K super-block as 8 int16 each (ggml's 6-bit packing, decoded
// four at a time in 32-bit words).
inline void k4_scales_vec(const uint8_t* q, __m128i* sc, __m128i* mn) {
  const uint32_t a = ld32(q), b = ld32(q + 4), c = ld32(q + 8);
  const uint32_t sc_lo = a & 0x3f3f3f3fu, m_lo = b & 0x3f3f3f3fu;
  const uint32_t sc_hi = (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u);
  const uint32_t m_hi = ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u);
  *sc = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc_lo | (uint64_t{sc_hi} << 32))));
  *mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(m_lo | (uint64_t{m_hi} << 32))));
}

inline __m512i idx16(int a, int b) {  // int16 lanes 0..15 -> a, 16..31 -> b
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(static_cast<int16_t>(a))),
                            _mm256_set1_epi16(static_cast<int16_t>(b)), 1);
}

template <DType DT>
struct K45 {
  static constexpr int kBB = DT == DType::Q4_K ? 144 : 176;

  template <int NR, int NT>
  static void tile(const MatView& w, const Prepared& p, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t nb = w.cols / 256;
    const uint8_t* wr[NR];
    MX_UNROLL for (int i = 0; i < NR; ++i) wr[i] = w.row(r + i);
    const int8_t* xq[NT];
    const float* xd[NT];
    const int16_t* bs32[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      xq[j] = p.q + (t + j) * p.q_stride;
      xd[j] = p.d + (t + j) * p.d_stride;
      bs32[j] = p.bsum32 + (t + j) * p.bsum32_stride;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i sidx[4] = {idx16(0, 2), idx16(1, 3), idx16(4, 6), idx16(5, 7)};
    __m512 acc[NR][NT];
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m512i v[NR][4], S[NR][4];
      __m128i mv[NR];
      float d[NR], dmin[NR];
      MX_UNROLL for (int i = 0; i < NR; ++i) {
        const uint8_t* blk = wr[i] + b * kBB;
        if constexpr (NT == 1) prefetch_span<kBB>(blk);
        d[i] = h2f(blk);
        dmin[i] = h2f(blk + 2);
        __m128i sc;
        k4_scales_vec(blk + 4, &sc, &mv[i]);
        const __m512i scz = _mm512_castsi128_si512(sc);
        MX_UNROLL for (int k = 0; k < 4; ++k) S[i][k] = _mm512_permutexvar_epi16(sidx[k], scz);
        const uint8_t* qs = blk + (DT == DType::Q5_K ? 48 : 16);
        const __m512i Q0 = _mm512_loadu_si512(qs), Q1 = _mm512_loadu_si512(qs + 64);
        v[i][0] = _mm512_and_si512(Q0, m4);
        v[i][1] = _mm512_and_si512(_mm512_srli_epi16(Q0, 4), m4);
        v[i][2] = _mm512_and_si512(Q1, m4);
        v[i][3] = _mm512_and_si512(_mm512_srli_epi16(Q1, 4), m4);
        if constexpr (DT == DType::Q5_K) {
          const __m512i H = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)));
          const __m512i s16 = _mm512_set1_epi8(16);
          MX_UNROLL for (int k = 0; k < 4; ++k) {
            // Sub-block s takes bit s of qh; vector k holds sub-blocks (lo, lo + 2).
            const int lo = (k & 1) + 4 * (k >> 1);
            const __m512i sel = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_set1_epi8(static_cast<char>(1 << lo))),
                _mm256_set1_epi8(static_cast<char>(1 << (lo + 2))), 1);
            v[i][k] = _mm512_mask_add_epi8(v[i][k], _mm512_test_epi8_mask(H, sel), v[i][k], s16);
          }
        }
      }
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const int8_t* xb = xq[j] + b * 256;
        __m512i X[4];
        MX_UNROLL for (int k = 0; k < 4; ++k) X[k] = _mm512_load_si512(xb + 64 * k);
        const __m128i bs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bs32[j] + b * 8));
        const float dx = xd[j][b];
        MX_UNROLL for (int i = 0; i < NR; ++i) {
          __m512i is = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_maddubs_epi16(v[i][0], X[0]), S[i][0]);
          MX_UNROLL for (int k = 1; k < 4; ++k)
            is = _mm512_dpwssd_epi32(is, _mm512_maddubs_epi16(v[i][k], X[k]), S[i][k]);
          const __m512 mins = _mm512_zextps128_ps512(_mm_cvtepi32_ps(_mm_madd_epi16(mv[i], bs)));
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(d[i] * dx), acc[i][j]);
          acc[i][j] = _mm512_fnmadd_ps(mins, _mm512_set1_ps(dmin[i] * dx), acc[i][j]);
        }
      }
    }
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) y[(t + j) * ldy + r + i] = _mm512_reduce_add_ps(acc[i][j]);
  }
};

struct K6 {
  template <int NR, int NT>
  static void tile(const MatView& w, const Prepared& p, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t nb = w.cols / 256;
    const uint8_t* wr[NR];
    MX_UNROLL for (int i = 0; i < NR; ++i) wr[i] = w.row(r + i);
    const int8_t* xq[NT];
    const float* xd[NT];
    const int16_t* bs16[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      xq[j] = p.q + (t + j) * p.q_stride;
      xd[j] = p.d + (t + j) * p.d_stride;
      bs16[j] = p.bsum16 + (t + j) * p.bsum16_stride;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    // qh bits (2s, 2s+1) -> bits 4..5: shift left 4 / 2 for the low nibble vector's halves,
    // right 0 / 2 for the high nibble vector's halves.
    const __m512i sh_lo = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sh_hi = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    __m512i sidx[4];
    MX_UNROLL for (int k = 0; k < 4; ++k) {  // int16 lane l of vector k covers values 64k + 2l, + 1
      alignas(64) int16_t ix[32];
      MX_UNROLL for (int l = 0; l < 32; ++l) ix[l] = static_cast<int16_t>(4 * k + l / 8);
      sidx[k] = _mm512_load_si512(ix);
    }
    __m512 acc[NR][NT];
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m512i v[NR][4], S[NR][4];
      __m256i sc16[NR];
      float d[NR];
      MX_UNROLL for (int i = 0; i < NR; ++i) {
        const uint8_t* blk = wr[i] + b * 210;
        if constexpr (NT == 1) prefetch_span<210>(blk);
        d[i] = h2f(blk + 208);
        sc16[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
        const __m512i scz = _mm512_castsi256_si512(sc16[i]);
        MX_UNROLL for (int k = 0; k < 4; ++k) S[i][k] = _mm512_permutexvar_epi16(sidx[k], scz);
        MX_UNROLL for (int n = 0; n < 2; ++n) {
          const __m512i L = _mm512_loadu_si512(blk + 64 * n);
          const __m512i H = _mm512_broadcast_i64x4(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n)));
          v[i][2 * n] = _mm512_or_si512(_mm512_and_si512(L, m4),
                                        _mm512_and_si512(_mm512_sllv_epi16(H, sh_lo), m30));
          v[i][2 * n + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L, 4), m4),
                                            _mm512_and_si512(_mm512_srlv_epi16(H, sh_hi), m30));
        }
      }
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const int8_t* xb = xq[j] + b * 256;
        __m512i X[4];
        MX_UNROLL for (int k = 0; k < 4; ++k) X[k] = _mm512_load_si512(xb + 64 * k);
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bs16[j] + b * 16));
        const float dx = xd[j][b];
        MX_UNROLL for (int i = 0; i < NR; ++i) {
          // Weights are stored +32: start from -32 * sum_g sc_g * bsum_g.
          const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16[i], bs), 5);
          __m512i is = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), corr));
          MX_UNROLL for (int k = 0; k < 4; ++k)
            is = _mm512_dpwssd_epi32(is, _mm512_maddubs_epi16(v[i][k], X[k]), S[i][k]);
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(d[i] * dx), acc[i][j]);
        }
      }
    }
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) y[(t + j) * ldy + r + i] = _mm512_reduce_add_ps(acc[i][j]);
  }
};

bool plain(DType dt) { return dt == DType::F32 || dt == DType::F16 || dt == DType::BF16; }

}  // namespace

// Same arithmetic as quant_block_scalar: exact amax, d = amax / 127, q = RNE(x * (1/d))
// clamped to +-127 (vcvtps2dq rounds to nearest even under the default MXCSR).
void quant_block_avx512(const float* x, int n, int8_t* q, float* d, int32_t* sum16) {
  __m512 m = _mm512_setzero_ps();
  for (int c = 0; c < n; c += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + c)));
  const float amax = _mm512_reduce_max_ps(m);
  const float dd = amax / 127.f;
  const float id = dd != 0.f ? 1.f / dd : 0.f;
  const __m512 vid = _mm512_set1_ps(id);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int c = 0; c < n; c += 16) {
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + c), vid));
    v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), _mm512_cvtepi32_epi8(v));
    if (sum16) sum16[c / 16] = _mm512_reduce_add_epi32(v);
  }
  *d = dd;
}

void prepare_avx512(DType dt, int64_t n_tokens, int64_t cols, Arena& arena, Prepared* out,
                    PrepareJob* job) {
  if (!plain(dt) && !has_vnni()) return prepare_avx2(dt, n_tokens, cols, arena, out, job);
  *job = PrepareJob{};
  switch (dt) {
    case DType::F32: case DType::F16: case DType::BF16:
      job->plain = plain_alloc(n_tokens, cols, 32, arena, out);
      job->plain_stride = out->xf_stride;
      job->fill_plain = dt == DType::BF16 ? fill_plain_bf16 : fill_plain_512;
      return;
    case DType::Q4_K: case DType::Q5_K:
      job->layout.perm = kPermK45;
      job->layout.perm_span = 256;
      [[fallthrough]];
    case DType::Q6_K:
    case DType::Q4_KR16: case DType::Q5_KR16: case DType::Q6_KR16:
      job->layout.block = 256;
      job->layout.want_bsums = true;
      break;
    case DType::Q8_0: case DType::Q8_0R16:
      job->layout.block = 32;
      job->layout.bias_mul = -128;  // Q8T: weights + 128, activations signed
      break;
    case DType::Q4_0R16:
      job->layout.block = 32;
      job->layout.bias_mul = -8;  // Q8T's tiles on nibbles 0..15: the Q4_0 offset
      break;
    default:
      job->layout.block = 32;
      job->layout.perm = kPermNib;
      job->layout.perm_span = 64;
      job->layout.want_sd = dt == DType::Q4_1 || dt == DType::Q5_1;
      job->layout.bias_mul = dt == DType::Q4_0 ? -8 : dt == DType::Q5_0 ? -16 : 0;
      break;
  }
  job->quant = true;
  job->qfn = quant_block_avx512;
  job->bufs = quant_alloc(job->layout, n_tokens, cols, arena, out);
}

void rows_avx512(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                 int64_t ldy) {
  if (!plain(w.dtype) && !has_vnni()) return rows_avx2(w, p, r0, r1, y, ldy);
  switch (w.dtype) {
    // Tile shapes (rows x tokens) for multi-token calls, tuned on Zen 5 at 4096-wide rows.
    case DType::F32: return drive<Plain<DType::F32>, 4, 3>(w, p, r0, r1, y, ldy);
    case DType::F16: return drive<Plain<DType::F16>, 4, 3>(w, p, r0, r1, y, ldy);
    case DType::BF16: return drive<Plain<DType::BF16>, 4, 3>(w, p, r0, r1, y, ldy);
    case DType::Q8_0: return Q8T::rows(w, p, r0, r1, y, ldy);
    case DType::Q8_0R16: return Q8T::rows_r16<Q8T::FromR16>(w, p, r0, r1, y, ldy);
    case DType::Q4_0R16: return Q8T::rows_r16<Q8T::FromQ4R16>(w, p, r0, r1, y, ldy);
    case DType::Q4_0: return drive<Nibble<DType::Q4_0>, 4, 4>(w, p, r0, r1, y, ldy);
    case DType::Q4_1: return drive<Nibble<DType::Q4_1>, 2, 4>(w, p, r0, r1, y, ldy);
    case DType::Q5_0: return drive<Nibble<DType::Q5_0>, 2, 4>(w, p, r0, r1, y, ldy);
    case DType::Q5_1: return drive<Nibble<DType::Q5_1>, 2, 4>(w, p, r0, r1, y, ldy);
    case DType::Q4_K: return drive<K45<DType::Q4_K>, 1, 6>(w, p, r0, r1, y, ldy);
    case DType::Q5_K: return drive<K45<DType::Q5_K>, 1, 6>(w, p, r0, r1, y, ldy);
    case DType::Q6_K: return drive<K6, 1, 6>(w, p, r0, r1, y, ldy);
    case DType::Q4_KR16: case DType::Q5_KR16: case DType::Q6_KR16:
      return rows_kr16_avx512(w, p, r0, r1, y, ldy);
    default: break;
  }
}

}  // namespace mx::mmk
