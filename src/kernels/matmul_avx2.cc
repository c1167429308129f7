// AVX2 + FMA + F16C matmul kernels (also used by the AVX-512 path on CPUs without VNNI).
//
// Quantized weights: one 32-value block per ymm. Legacy types use the sign trick
// (maddubs(|w|, sign(x, w))) so no int16 pair sum can saturate; k-quants multiply unsigned
// weights with signed Q8_K activations and apply sub-block scales with madd.
#include <immintrin.h>

// GCC 12's intrinsic headers trip -W(maybe-)uninitialized on their own _mm*_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/matmul_drive.h"

namespace mx::mmk {
namespace {

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float h2f(const uint8_t* p) { return _cvtsh_ss(ld16(p)); }

// ---------------------------------------------------------------- plain f32 / f16 / bf16

template <DType DT>
struct Plain {
  static constexpr int kEsz = DT == DType::F32 ? 4 : 2;
  static inline __m256 load8(const uint8_t* p) {
    if constexpr (DT == DType::F32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    } else if constexpr (DT == DType::F16) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    } else {
      const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
  }

  template <int NR, int NT>
  static void tile(const MatView& w, const Prepared& p, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t n8 = w.cols / 8, rem = w.cols % 8;
    const uint8_t* wr[NR];
    MX_UNROLL for (int i = 0; i < NR; ++i) wr[i] = w.row(r + i);
    const float* x[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) x[j] = p.xf + (t + j) * p.xf_stride;
    __m256 acc[NR][NT];
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t c = 0; c < n8; ++c) {
      __m256 wv[NR];
      MX_UNROLL for (int i = 0; i < NR; ++i) wv[i] = load8(wr[i] + c * 8 * kEsz);
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const __m256 xv = _mm256_loadu_ps(x[j] + c * 8);
        MX_UNROLL for (int i = 0; i < NR; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
      }
    }
    if (rem) {  // ragged tail: zero-padded copy of the weights (activations are padded already)
      alignas(32) uint8_t buf[NR][32];
      __m256 wv[NR];
      MX_UNROLL for (int i = 0; i < NR; ++i) {
        std::memset(buf[i], 0, 32);
        std::memcpy(buf[i], wr[i] + n8 * 8 * kEsz, static_cast<size_t>(rem * kEsz));
        wv[i] = load8(buf[i]);
      }
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const __m256 xv = _mm256_loadu_ps(x[j] + n8 * 8);
        MX_UNROLL for (int i = 0; i < NR; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
      }
    }
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) y[(t + j) * ldy + r + i] = hsum8(acc[i][j]);
  }
};

// ---------------------------------------------------------------- legacy 32-blocks

// Expands 32 bits to 32 bytes of 0x00 / 0xFF (bit j -> byte j).
inline __m256i bits_to_bytes(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                       3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i sel = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel);
}

inline __m256i nibbles32(const uint8_t* qs) {  // 16 bytes -> 32 values (low nibbles first)
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i v = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

template <DType DT>
struct Legacy {
  static constexpr bool kMin = DT == DType::Q4_1 || DT == DType::Q5_1;
  static constexpr int kBB = DT == DType::Q8_0 ? 34 : DT == DType::Q4_0 ? 18 : DT == DType::Q4_1 ? 20
                           : DT == DType::Q5_0 ? 22 : 24;

  // Integer weights of one block: signed for *_0 types, unsigned (0..31) for *_1.
  static inline __m256i unpack(const uint8_t* b) {
    if constexpr (DT == DType::Q8_0) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    } else if constexpr (DT == DType::Q4_0) {
      return _mm256_sub_epi8(nibbles32(b + 2), _mm256_set1_epi8(8));
    } else if constexpr (DT == DType::Q4_1) {
      return nibbles32(b + 4);
    } else if constexpr (DT == DType::Q5_0) {
      const __m256i hi = _mm256_and_si256(bits_to_bytes(ld32(b + 2)), _mm256_set1_epi8(16));
      return _mm256_sub_epi8(_mm256_or_si256(nibbles32(b + 6), hi), _mm256_set1_epi8(16));
    } else {
      const __m256i hi = _mm256_and_si256(bits_to_bytes(ld32(b + 4)), _mm256_set1_epi8(16));
      return _mm256_or_si256(nibbles32(b + 8), hi);
    }
  }

  template <int NR, int NT>
  static void tile(const MatView& w, const Prepared& p, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t nb = w.cols / 32;
    const uint8_t* wr[NR];
    MX_UNROLL for (int i = 0; i < NR; ++i) wr[i] = w.row(r + i);
    const int8_t* xq[NT];
    const float* xd[NT];
    const float* xs[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      xq[j] = p.q + (t + j) * p.q_stride;
      xd[j] = p.d + (t + j) * p.d_stride;
      xs[j] = kMin ? p.sd + (t + j) * p.d_stride : nullptr;
    }
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[NR][NT];
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256i wv[NR], wa[NR];
      __m256 dw[NR], mw[NR];
      MX_UNROLL for (int i = 0; i < NR; ++i) {
        const uint8_t* blk = wr[i] + b * kBB;
        wv[i] = unpack(blk);
        dw[i] = _mm256_set1_ps(h2f(blk));
        if constexpr (kMin) {
          mw[i] = _mm256_zextps128_ps256(_mm_set_ss(h2f(blk + 2)));  // m in lane 0 only
        } else {
          wa[i] = _mm256_abs_epi8(wv[i]);
        }
      }
      MX_UNROLL for (int j = 0; j < NT; ++j) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[j] + b * 32));
        const __m256 dx = _mm256_broadcast_ss(xd[j] + b);
        MX_UNROLL for (int i = 0; i < NR; ++i) {
          __m256i p16;
          if constexpr (kMin) {
            p16 = _mm256_maddubs_epi16(wv[i], xv);
          } else {
            p16 = _mm256_maddubs_epi16(wa[i], _mm256_sign_epi8(xv, wv[i]));
          }
          const __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
          acc[i][j] = _mm256_fmadd_ps(s, _mm256_mul_ps(dw[i], dx), acc[i][j]);
          if constexpr (kMin) acc[i][j] = _mm256_fmadd_ps(mw[i], _mm256_broadcast_ss(xs[j] + b), acc[i][j]);
        }
      }
    }
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) y[(t + j) * ldy + r + i] = hsum8(acc[i][j]);
  }
};

// ---------------------------------------------------------------- Q8_0R16

// Q8_0R16 (dtype.h) read in place. A load at 64 k of a block gives dword k of 8 rows, so
// acc[k] (lane = row) holds what Legacy<Q8_0>'s acc holds in lane k (lane = dword): the same
// integer sums, the same fma(S, dw * dx, acc) per block, and the final sum follows hsum8's
// order, so results equal Q8_0's bit for bit. Half-groups of 8 rows, one token at a time;
// the second half and later tokens re-read the group from L1/L2.
struct Q8R16 {
  static void half(const uint8_t* grp, int64_t nb, int h, const int8_t* xq, const float* xd,
                   const int32_t*, float* y) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[8];
    MX_UNROLL for (int k = 0; k < 8; ++k) acc[k] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* q = grp + 512 * b + 32 * h;
      const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(grp + 512 * nb + 32 * b + 16 * h)));
      const __m256 dd = _mm256_mul_ps(dw, _mm256_broadcast_ss(xd + b));
      MX_UNROLL for (int k = 0; k < 8; ++k) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * k));
        const __m256i x = _mm256_set1_epi32(static_cast<int>(ld32(reinterpret_cast<const uint8_t*>(xq) + 32 * b + 4 * k)));
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), dd, acc[k]);
      }
    }
    // hsum8's order: ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)).
    const __m256 e = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
    const __m256 o = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
    _mm256_storeu_ps(y, _mm256_add_ps(e, o));
  }

};

// Q4_0R16 read in place, 8 rows in lanes: exact integer block sums (nibbles 0..15 times the
// activations, plus the bias -8 * sum(x)), then f = fma(float(S), dw * dx, f) per block in
// order: the AVX-512 kernel's sequence, so both paths give the same bits.
struct Q4R16 {
  static void half(const uint8_t* grp, int64_t nb, int h, const int8_t* xq, const float* xd,
                   const int32_t* xb, float* y) {
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0F);
    const uint8_t* xu = reinterpret_cast<const uint8_t*>(xq);
    __m256 f = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* q = grp + 256 * b + 32 * h;
      __m256i S = _mm256_set1_epi32(xb[b]);
      MX_UNROLL for (int m = 0; m < 4; ++m) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * m));
        const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        const __m256i xl = _mm256_set1_epi32(static_cast<int>(ld32(xu + 32 * b + 4 * m)));
        const __m256i xh = _mm256_set1_epi32(static_cast<int>(ld32(xu + 32 * b + 16 + 4 * m)));
        S = _mm256_add_epi32(S, _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), ones));
        S = _mm256_add_epi32(S, _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), ones));
      }
      const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(grp + 256 * nb + 32 * b + 16 * h)));
      f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(S), _mm256_mul_ps(dw, _mm256_broadcast_ss(xd + b)), f);
    }
    _mm256_storeu_ps(y, f);
  }

};

// Rows [r0, r1) (multiples of 16) of an interleaved matrix with kernel K (Q8R16 / Q4R16).
template <class K>
void rows_r16(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / 32;
  for (int64_t r = r0; r < r1; r += 16)
    for (int h = 0; h < 2; ++h)
      for (int64_t t = 0; t < p.n_tokens; ++t)
        K::half(w.row(r), nb, h, p.q + t * p.q_stride, p.d + t * p.d_stride,
                p.bias ? p.bias + t * p.d_stride : nullptr, y + t * ldy + r + 8 * h);
}

// ---------------------------------------------------------------- k-quants

template <DType DT>
struct KQuant {
  static constexpr int kBB = DT == DType::Q4_K ? 144 : DT == DType::Q5_K ? 176 : 210;

  template <int NR, int NT>
  static void tile(const MatView& w, const Prepared& p, int64_t r, int64_t t, float* y,
                   int64_t ldy) {
    const int64_t nb = w.cols / 256;
    const uint8_t* wr[NR];
    MX_UNROLL for (int i = 0; i < NR; ++i) wr[i] = w.row(r + i);
    const int8_t* xq[NT];
    const float* xd[NT];
    const int16_t* bs16[NT];
    const int16_t* bs32[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      xq[j] = p.q + (t + j) * p.q_stride;
      xd[j] = p.d + (t + j) * p.d_stride;
      bs16[j] = p.bsum16 + (t + j) * p.bsum16_stride;
      bs32[j] = p.bsum32 + (t + j) * p.bsum32_stride;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[NR][NT];
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256i isum[NR][NT];
      float d[NR];
      if constexpr (DT == DType::Q6_K) {
        __m256i sc16[NR];
        MX_UNROLL for (int i = 0; i < NR; ++i) {
          const uint8_t* blk = wr[i] + b * kBB;
          d[i] = h2f(blk + 208);
          sc16[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
          // Offset -32 of every weight: isum starts at -32 * sum_g sc_g * bsum_g.
          MX_UNROLL for (int j = 0; j < NT; ++j) {
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bs16[j] + b * 16));
            isum[i][j] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                          _mm256_slli_epi32(_mm256_madd_epi16(sc16[i], bs), 5));
          }
        }
        MX_UNROLL for (int n = 0; n < 2; ++n) {
          MX_UNROLL for (int k = 0; k < 4; ++k) {
            __m256i qv[NR], sv[NR];
            MX_UNROLL for (int i = 0; i < NR; ++i) {
              const uint8_t* blk = wr[i] + b * kBB;
              const __m256i L = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n + 32 * (k & 1)));
              const __m256i H = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));
              const __m256i lo = k < 2 ? _mm256_and_si256(L, m4) : _mm256_and_si256(_mm256_srli_epi16(L, 4), m4);
              __m256i hb;
              switch (k) {  // bits 2k..2k+1 of qh moved to bits 4..5
                case 0: hb = _mm256_slli_epi16(H, 4); break;
                case 1: hb = _mm256_slli_epi16(H, 2); break;
                case 2: hb = H; break;
                default: hb = _mm256_srli_epi16(H, 2); break;
              }
              qv[i] = _mm256_or_si256(lo, _mm256_and_si256(hb, _mm256_set1_epi8(0x30)));
              const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192) + 8 * n + 2 * k;
              sv[i] = _mm256_set_m128i(_mm_set1_epi16(sc[1]), _mm_set1_epi16(sc[0]));
            }
            MX_UNROLL for (int j = 0; j < NT; ++j) {
              const __m256i xv = _mm256_loadu_si256(
                  reinterpret_cast<const __m256i*>(xq[j] + b * 256 + 128 * n + 32 * k));
              MX_UNROLL for (int i = 0; i < NR; ++i)
                isum[i][j] = _mm256_add_epi32(
                    isum[i][j], _mm256_madd_epi16(_mm256_maddubs_epi16(qv[i], xv), sv[i]));
            }
          }
        }
        MX_UNROLL for (int i = 0; i < NR; ++i)
          MX_UNROLL for (int j = 0; j < NT; ++j)
            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i][j]),
                                        _mm256_set1_ps(d[i] * xd[j][b]), acc[i][j]);
      } else {
        float dmin[NR];
        int16_t sc[NR][8], mn[NR][8];
        __m128i mv[NR];
        MX_UNROLL for (int i = 0; i < NR; ++i) {
          const uint8_t* blk = wr[i] + b * kBB;
          d[i] = h2f(blk);
          dmin[i] = h2f(blk + 2);
          k4_scales(blk + 4, sc[i], mn[i]);
          mv[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(mn[i]));
          MX_UNROLL for (int j = 0; j < NT; ++j) isum[i][j] = _mm256_setzero_si256();
        }
        MX_UNROLL for (int c = 0; c < 4; ++c) {
          __m256i lo[NR], hi[NR], slo[NR], shi[NR];
          MX_UNROLL for (int i = 0; i < NR; ++i) {
            const uint8_t* blk = wr[i] + b * kBB;
            const uint8_t* qs = blk + (DT == DType::Q5_K ? 48 : 16) + 32 * c;
            const __m256i Q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
            lo[i] = _mm256_and_si256(Q, m4);
            hi[i] = _mm256_and_si256(_mm256_srli_epi16(Q, 4), m4);
            if constexpr (DT == DType::Q5_K) {
              const __m256i H = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16));
              const __m256i b0 = _mm256_set1_epi8(static_cast<char>(1 << (2 * c)));
              const __m256i b1 = _mm256_set1_epi8(static_cast<char>(1 << (2 * c + 1)));
              const __m256i s16 = _mm256_set1_epi8(16);
              lo[i] = _mm256_or_si256(lo[i], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(H, b0), b0), s16));
              hi[i] = _mm256_or_si256(hi[i], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(H, b1), b1), s16));
            }
            slo[i] = _mm256_set1_epi16(sc[i][2 * c]);
            shi[i] = _mm256_set1_epi16(sc[i][2 * c + 1]);
          }
          MX_UNROLL for (int j = 0; j < NT; ++j) {
            const int8_t* xb = xq[j] + b * 256 + 64 * c;
            const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb));
            const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 32));
            MX_UNROLL for (int i = 0; i < NR; ++i) {
              const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[i], x0), slo[i]);
              const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[i], x1), shi[i]);
              isum[i][j] = _mm256_add_epi32(isum[i][j], _mm256_add_epi32(p0, p1));
            }
          }
        }
        MX_UNROLL for (int j = 0; j < NT; ++j) {
          const __m128i bs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bs32[j] + b * 8));
          MX_UNROLL for (int i = 0; i < NR; ++i) {
            const __m256 mins = _mm256_cvtepi32_ps(_mm256_zextsi128_si256(_mm_madd_epi16(mv[i], bs)));
            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i][j]),
                                        _mm256_set1_ps(d[i] * xd[j][b]), acc[i][j]);
            acc[i][j] = _mm256_fnmadd_ps(mins, _mm256_set1_ps(dmin[i] * xd[j][b]), acc[i][j]);
          }
        }
      }
    }
    MX_UNROLL for (int i = 0; i < NR; ++i)
      MX_UNROLL for (int j = 0; j < NT; ++j) y[(t + j) * ldy + r + i] = hsum8(acc[i][j]);
  }
};

void fill_plain_avx2(const float* x, int64_t cols, float* dst, int64_t stride) {
  std::memcpy(dst, x, static_cast<size_t>(cols) * sizeof(float));
  std::memset(dst + cols, 0, static_cast<size_t>(stride - cols) * sizeof(float));
}

}  // namespace

// Same arithmetic as quant_block_scalar (see quant_block_avx512).
void quant_block_avx2(const float* x, int n, int8_t* q, float* d, int32_t* sum16) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 m = _mm256_setzero_ps();
  for (int c = 0; c < n; c += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + c)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float dd = amax / 127.f;
  const float id = dd != 0.f ? 1.f / dd : 0.f;
  const __m256 vid = _mm256_set1_ps(id);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  for (int c = 0; c < n; c += 32) {
    __m256i v[4];
    MX_UNROLL for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c + 8 * k), vid));
      v[k] = _mm256_min_epi32(_mm256_max_epi32(v[k], lo), hi);
    }
    if (sum16) {
      MX_UNROLL for (int k = 0; k < 2; ++k) {
        const __m256i s = _mm256_add_epi32(v[2 * k], v[2 * k + 1]);
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
        sum16[c / 16 + k] = _mm_cvtsi128_si32(s4);
      }
    }
    // Packing interleaves 128-bit lanes; the final permute restores value order.
    const __m256i p16a = _mm256_packs_epi32(v[0], v[1]), p16b = _mm256_packs_epi32(v[2], v[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c),
                        _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  *d = dd;
}

void prepare_avx2(DType dt, int64_t n_tokens, int64_t cols, Arena& arena, Prepared* out,
                  PrepareJob* job) {
  *job = PrepareJob{};
  switch (dt) {
    case DType::F32: case DType::F16: case DType::BF16:
      job->plain = plain_alloc(n_tokens, cols, 32, arena, out);
      job->plain_stride = out->xf_stride;
      job->fill_plain = fill_plain_avx2;
      return;
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
    case DType::Q4_KR16: case DType::Q5_KR16: case DType::Q6_KR16:
      job->layout.block = 256;
      job->layout.want_bsums = true;
      break;
    default:
      job->layout.block = 32;
      job->layout.want_sd = dt == DType::Q4_1 || dt == DType::Q5_1;
      if (dt == DType::Q4_0R16) job->layout.bias_mul = -8;  // Q4R16: the Q4_0 offset
      break;
  }
  job->quant = true;
  job->qfn = quant_block_avx2;
  job->bufs = quant_alloc(job->layout, n_tokens, cols, arena, out);
}

void rows_avx2(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
               int64_t ldy) {
  switch (w.dtype) {
    case DType::F32: return drive<Plain<DType::F32>, 4, 3>(w, p, r0, r1, y, ldy);
    case DType::F16: return drive<Plain<DType::F16>, 4, 3>(w, p, r0, r1, y, ldy);
    case DType::BF16: return drive<Plain<DType::BF16>, 4, 3>(w, p, r0, r1, y, ldy);
    case DType::Q8_0: return drive<Legacy<DType::Q8_0>, 2, 3>(w, p, r0, r1, y, ldy);
    case DType::Q8_0R16: return rows_r16<Q8R16>(w, p, r0, r1, y, ldy);
    case DType::Q4_0R16: return rows_r16<Q4R16>(w, p, r0, r1, y, ldy);
    case DType::Q4_0: return drive<Legacy<DType::Q4_0>, 2, 3>(w, p, r0, r1, y, ldy);
    case DType::Q4_1: return drive<Legacy<DType::Q4_1>, 2, 3>(w, p, r0, r1, y, ldy);
    case DType::Q5_0: return drive<Legacy<DType::Q5_0>, 2, 3>(w, p, r0, r1, y, ldy);
    case DType::Q5_1: return drive<Legacy<DType::Q5_1>, 2, 3>(w, p, r0, r1, y, ldy);
    case DType::Q4_K: return drive<KQuant<DType::Q4_K>, 2, 2>(w, p, r0, r1, y, ldy);
    case DType::Q5_K: return drive<KQuant<DType::Q5_K>, 2, 2>(w, p, r0, r1, y, ldy);
    case DType::Q6_K: return drive<KQuant<DType::Q6_K>, 2, 2>(w, p, r0, r1, y, ldy);
    case DType::Q4_KR16: case DType::Q5_KR16: case DType::Q6_KR16:
      return rows_kr16_avx2(w, p, r0, r1, y, ldy);
    default: break;
  }
}

}  // namespace mx::mmk
