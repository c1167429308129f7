// AVX2 kernels for the interleaved k-quants (Q4_KR16, Q5_KR16, Q6_KR16; dtype.h): 8 rows in
// the lanes (half a group), one token at a time. vpmaddubsw + vpmaddwd stand in for VNNI's
// vpdpbusd (no saturation: |q * x| pairs stay below 2 * 63 * 127), so the integer sums per
// (row, sub-block) are exact and equal the AVX-512 ones, and the float steps per super-block
// are the same (see matmul_kr16_avx512.cc): both paths and the scalar one give the same bits.
#include <immintrin.h>

// GCC 12's intrinsic headers trip -W(maybe-)uninitialized on their own _mm*_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/matmul_drive.h"

namespace mx::mmk {
namespace {

inline __m256i ld(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i bcast32(const void* p) {
  return _mm256_set1_epi32(static_cast<int>(ld32(static_cast<const uint8_t*>(p))));
}
// Sum of 4 u8 x s8 products per dword lane (vpdpbusd without VNNI; exact here).
inline __m256i dot4(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

template <DType DT>
struct KR16 {
  static constexpr bool kSix = DT == DType::Q6_KR16, kFive = DT == DType::Q5_KR16;
  static constexpr int kChunk = kSix ? 3360 : kFive ? 2816 : 2304;

  // Q5_K high bits of one vector's 8 rows (32 of the 64 mask bits) as +16 per byte.
  static __m256i high16(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bm = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
    const __m256i sel = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuf), bm);
    return _mm256_and_si256(_mm256_cmpeq_epi8(sel, bm), _mm256_set1_epi8(16));
  }

  // One super-block, rows 8h .. 8h+7, one token: returns isum; *imin for Q4_K / Q5_K.
  static __m256i sb_q45(const uint8_t* ch, int h, const int8_t* x, const int16_t* bs, __m256i* imin) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), k3f = _mm256_set1_epi32(0x3f3f3f3f);
    const __m256i k0f = _mm256_set1_epi32(0x0f0f0f0f), k30 = _mm256_set1_epi32(0x30303030);
    const __m256i A = ld(ch + 2112 + 32 * h), B = ld(ch + 2176 + 32 * h), C = ld(ch + 2240 + 32 * h);
    const __m256i sclo = _mm256_and_si256(A, k3f), mlo = _mm256_and_si256(B, k3f);
    const __m256i schi = _mm256_or_si256(_mm256_and_si256(C, k0f), _mm256_and_si256(_mm256_srli_epi32(A, 2), k30));
    const __m256i mhi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(C, 4), k0f),
                                        _mm256_and_si256(_mm256_srli_epi32(B, 2), k30));
    const __m256i lane_off = _mm256_setr_epi32(0, 0x00040004, 0x00080008, 0x000C000C, 0, 0x00040004, 0x00080008, 0x000C000C);
    const __m256i c01 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(0x80018000u)), lane_off);
    const __m256i c23 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(0x80038002u)), lane_off);
    const __m256i mp[4] = {_mm256_shuffle_epi8(mlo, c01), _mm256_shuffle_epi8(mlo, c23),
                           _mm256_shuffle_epi8(mhi, c01), _mm256_shuffle_epi8(mhi, c23)};
    __m256i m = _mm256_setzero_si256();
    MX_UNROLL for (int i = 0; i < 4; ++i) m = _mm256_add_epi32(m, _mm256_madd_epi16(mp[i], bcast32(bs + 2 * i)));
    *imin = m;
    const __m256i ff = _mm256_set1_epi32(0xff);
    __m256i isum = _mm256_setzero_si256();
    MX_UNROLL for (int s = 0; s < 8; ++s) {
      const __m256i sc = _mm256_and_si256(_mm256_srli_epi32(s < 4 ? sclo : schi, 8 * (s & 3)), ff);
      const uint8_t* q = ch + 512 * (s >> 1) + 32 * h;
      __m256i S = _mm256_setzero_si256();
      MX_UNROLL for (int v = 0; v < 8; ++v) {
        const __m256i raw = ld(q + 64 * v);
        __m256i W = _mm256_and_si256((s & 1) ? _mm256_srli_epi16(raw, 4) : raw, m4);
        if constexpr (kFive)
          W = _mm256_add_epi8(W, high16(static_cast<uint32_t>(ld64(ch + 2304 + 64 * s + 8 * v) >> (32 * h))));
        S = _mm256_add_epi32(S, dot4(W, bcast32(x + 32 * s + 4 * v)));
      }
      isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(S, sc));
    }
    return isum;
  }

  static __m256i sb_q6(const uint8_t* ch, int h, const int8_t* x, const int16_t* bs) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256i corr = _mm256_setzero_si256();
    MX_UNROLL for (int i = 0; i < 8; ++i) {
      const __m256i sp = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ch + 3072 + 32 * i + 16 * h)));
      corr = _mm256_add_epi32(corr, _mm256_madd_epi16(sp, bcast32(bs + 2 * i)));
    }
    __m256i isum = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(corr, 5));
    MX_UNROLL for (int n = 0; n < 2; ++n)
      MX_UNROLL for (int c = 0; c < 4; ++c) {
        const __m256i sp = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(ch + 3072 + 32 * (4 * n + c) + 16 * h)));
        const __m256i sc_e = _mm256_srai_epi32(_mm256_slli_epi32(sp, 16), 16), sc_o = _mm256_srai_epi32(sp, 16);
        const uint8_t* half = ch + 1536 * n + 32 * h;
        const int8_t* xc = x + 128 * n + 32 * c;
        __m256i S0 = _mm256_setzero_si256(), S1 = _mm256_setzero_si256();
        MX_UNROLL for (int v = 0; v < 8; ++v) {
          const __m256i raw = ld(half + 512 * (c & 1) + 64 * v), H = ld(half + 1024 + 64 * v);
          const __m256i nib = _mm256_and_si256(c >= 2 ? _mm256_srli_epi16(raw, 4) : raw, m4);
          const __m256i hb = c == 0 ? _mm256_slli_epi16(H, 4) : c == 1 ? _mm256_slli_epi16(H, 2)
                             : c == 2 ? H : _mm256_srli_epi16(H, 2);
          const __m256i W = _mm256_or_si256(nib, _mm256_and_si256(hb, m30));
          if (v < 4) S0 = _mm256_add_epi32(S0, dot4(W, bcast32(xc + 4 * v)));
          else S1 = _mm256_add_epi32(S1, dot4(W, bcast32(xc + 4 * v)));
        }
        isum = _mm256_add_epi32(isum, _mm256_add_epi32(_mm256_mullo_epi32(S0, sc_e), _mm256_mullo_epi32(S1, sc_o)));
      }
    return isum;
  }

  static void half(const uint8_t* grp, int64_t nsb, int h, const Prepared& p, int64_t t, float* y) {
    const int8_t* xq = p.q + t * p.q_stride;
    const float* xd = p.d + t * p.d_stride;
    const int16_t* bs = kSix ? p.bsum16 + t * p.bsum16_stride : p.bsum32 + t * p.bsum32_stride;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nsb; ++b) {
      const uint8_t* ch = grp + b * kChunk;
      const uint8_t* dp = ch + (kSix ? 3328 : 2048) + 16 * h;
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dp)));
      const __m256 dx = _mm256_broadcast_ss(xd + b);
      if constexpr (kSix) {
        const __m256i isum = sb_q6(ch, h, xq + 256 * b, bs + 16 * b);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, dx), acc);
      } else {
        __m256i imin;
        const __m256i isum = sb_q45(ch, h, xq + 256 * b, bs + 8 * b, &imin);
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dp + 32)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, dx), acc);
        acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dmin, dx), acc);
      }
    }
    _mm256_storeu_ps(y, acc);
  }

  static void rows(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y, int64_t ldy) {
    const int64_t nsb = w.cols / 256;
    for (int64_t r = r0; r < r1; r += 16)
      for (int64_t t = 0; t < p.n_tokens; ++t)
        for (int h = 0; h < 2; ++h) half(w.row(r), nsb, h, p, t, y + t * ldy + r + 8 * h);
  }
};

}  // namespace

void rows_kr16_avx2(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                    int64_t ldy) {
  switch (w.dtype) {
    case DType::Q4_KR16: return KR16<DType::Q4_KR16>::rows(w, p, r0, r1, y, ldy);
    case DType::Q5_KR16: return KR16<DType::Q5_KR16>::rows(w, p, r0, r1, y, ldy);
    case DType::Q6_KR16: return KR16<DType::Q6_KR16>::rows(w, p, r0, r1, y, ldy);
    default: break;
  }
}

}  // namespace mx::mmk
