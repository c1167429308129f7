// AVX-512 VNNI kernels for the interleaved k-quants (Q4_KR16, Q5_KR16, Q6_KR16; dtype.h).
//
// 16 rows sit in the 16 lanes, so a vpdpbusd of one weight plane with a broadcast activation
// dword gives 4 products for each of 16 rows, and each sub-block's integer sum S (exact) is
// scaled by its 6-bit (Q4_K / Q5_K) or int8 (Q6_K) scale as an integer (vpmulld): per
// super-block and token the float work is one convert and one FMA for 16 rows (two with the
// mins). Activations are Q8_K-like (one scale per 256 values, sums per 16 / 32 values).
// The float sequence per (row, token) is the scalar reference's (rows_kr16 in
// matmul_scalar.cc) and the AVX2 kernels': acc = fma(float(isum), d * dx, acc), then
// acc = fma(-float(imin), dmin * dx, acc) for Q4_K / Q5_K. So all paths give the same bits.
#include <immintrin.h>

// GCC 12's intrinsic headers trip -W(maybe-)uninitialized on their own _mm*_undefined_*().
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/matmul_avx512_common.h"

// Tokens that share one pass over a 16-row group (register budget: 8 weight planes plus two
// accumulators and a partial sum per token).
#ifndef MX_KR16_NT
#define MX_KR16_NT 6
#endif
// Token count from which a group's planes are unpacked once for all tiles (rows()).
#ifndef MX_KR16_PRE
#define MX_KR16_PRE 18
#endif

namespace mx::mmk {
namespace {

inline __m512i ld(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline __m512i bcast32(const void* p) {
  return _mm512_set1_epi32(static_cast<int>(ld32(static_cast<const uint8_t*>(p))));
}

template <DType DT>
struct KR16 {
  static constexpr bool kSix = DT == DType::Q6_KR16, kFive = DT == DType::Q5_KR16;
  static constexpr int kChunk = kSix ? 3360 : kFive ? 2816 : 2304;

  // Q4_K / Q5_K super-block at ch: isum[j] = sum_s sc_s * S_s, imin[j] = sum_s m_s * bsum32_s.
  // Plane v (0..7) of sub-block s of a Q4_K / Q5_K super-block at ch (quants at q) as bytes.
  __attribute__((always_inline)) static __m512i plane_q45(const uint8_t* ch, const uint8_t* q, int s, int v, __m512i m4) {
    const __m512i raw = ld(q + 64 * v);
    __m512i w = _mm512_and_si512((s & 1) ? _mm512_srli_epi16(raw, 4) : raw, m4);
    if constexpr (kFive) {
      const __mmask64 hb = _cvtu64_mask64(ld64(ch + 2304 + 64 * s + 8 * v));
      w = _mm512_mask_add_epi8(w, hb, w, _mm512_set1_epi8(16));
    }
    return w;
  }
  // Plane v (0..7) of 32-value part c (0..3) of half n (0..1) of a Q6_K super-block, + 32.
  __attribute__((always_inline)) static __m512i plane_q6(const uint8_t* ch, int n, int c, int v) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const uint8_t* half = ch + 1536 * n;
    const __m512i raw = ld(half + 512 * (c & 1) + 64 * v), H = ld(half + 1024 + 64 * v);
    const __m512i nib = _mm512_and_si512(c >= 2 ? _mm512_srli_epi16(raw, 4) : raw, m4);
    // Bits 2c, 2c+1 of each qh byte to bits 4, 5 (the mask drops what crosses bytes).
    const __m512i hb = c == 0 ? _mm512_slli_epi16(H, 4) : c == 1 ? _mm512_slli_epi16(H, 2)
                       : c == 2 ? H : _mm512_srli_epi16(H, 2);
    return _mm512_ternarylogic_epi32(nib, hb, m30, 0xF8);  // nib | (hb & m30)
  }
  // A group's weight planes unpacked to bytes, kPlanes bytes a super-block in the order the
  // sb_* functions read them: with many token tiles the unpack is then done once per group
  // instead of once per tile, and each tile's inner loop is loads and vpdpbusd only.
  static constexpr int kPlanes = 4096;
  static void unpack_group(const uint8_t* grp, int64_t nsb, uint8_t* dst) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int64_t b = 0; b < nsb; ++b) {
      const uint8_t* ch = grp + b * kChunk;
      uint8_t* d = dst + b * kPlanes;
      if constexpr (kSix) {
        MX_UNROLL for (int n = 0; n < 2; ++n)
          MX_UNROLL for (int c = 0; c < 4; ++c)
            MX_UNROLL for (int v = 0; v < 8; ++v)
              _mm512_store_si512(d + 64 * (32 * n + 8 * c + v), plane_q6(ch, n, c, v));
      } else {
#pragma GCC unroll 1
        for (int s = 0; s < 8; ++s)
          MX_UNROLL for (int v = 0; v < 8; ++v)
            _mm512_store_si512(d + 64 * (8 * s + v), plane_q45(ch, ch + 512 * (s / 2), s, v, m4));
      }
    }
  }

  // A Q4_K / Q5_K super-block's 6-bit scales and mins, four sub-blocks per dword lane: sub-block
  // s's byte is lane byte s & 3 of lo (s < 4) or hi (ggml's packing, get_scale_min_k4).
  struct Scales45 {
    __m512i sclo, schi, mlo, mhi;
  };
  __attribute__((always_inline)) static Scales45 scales_q45(const uint8_t* ch) {
    const __m512i k3f = _mm512_set1_epi32(0x3f3f3f3f), k0f = _mm512_set1_epi32(0x0f0f0f0f);
    const __m512i k30 = _mm512_set1_epi32(0x30303030);
    const __m512i A = ld(ch + 2112), B = ld(ch + 2176), C = ld(ch + 2240);
    return {_mm512_and_si512(A, k3f),
            _mm512_or_si512(_mm512_and_si512(C, k0f), _mm512_and_si512(_mm512_srli_epi32(A, 2), k30)),
            _mm512_and_si512(B, k3f),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(C, 4), k0f), _mm512_and_si512(_mm512_srli_epi32(B, 2), k30))};
  }
  // Mins as int16 pairs (m_2i, m_2i+1) per lane, for vpdpwssd with a token's bsum32 pairs.
  struct Mins45 {
    __m512i mp[4];
  };
  __attribute__((always_inline)) static Mins45 mins_q45(const Scales45& sc) {
    const __m512i lane_off = _mm512_set4_epi32(0x000C000C, 0x00080008, 0x00040004, 0);
    const __m512i c01 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(0x80018000u)), lane_off);
    const __m512i c23 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(0x80038002u)), lane_off);
    return {{_mm512_shuffle_epi8(sc.mlo, c01), _mm512_shuffle_epi8(sc.mlo, c23),
             _mm512_shuffle_epi8(sc.mhi, c01), _mm512_shuffle_epi8(sc.mhi, c23)}};
  }
  // imin = sum_s m_s * bsum32_s of one token (bs: its 8 bsum32 of the super-block).
  __attribute__((always_inline)) static __m512i imin_q45(const Mins45& mn, const int16_t* bs) {
    __m512i m = _mm512_setzero_si512();
    MX_UNROLL for (int i = 0; i < 4; ++i) m = _mm512_dpwssd_epi32(m, mn.mp[i], bcast32(bs + 2 * i));
    return m;
  }

  // Planes of one super-block already unpacked to bytes (unpack_group), or null: unpack here.
  template <int NT, bool kPre>
  __attribute__((always_inline)) static void sb_q45(const uint8_t* ch, const uint8_t* pre, const int8_t* const* xq,
                     const int16_t* const* bs, int64_t b, __m512i* isum_out, __m512i* imin_out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const Scales45 sc = scales_q45(ch);
    const __m512i ff = _mm512_set1_epi32(0xff);
    alignas(64) __m512i scs[8];
    MX_UNROLL for (int s = 0; s < 8; ++s)
      scs[s] = _mm512_and_si512(_mm512_srli_epi32(s < 4 ? sc.sclo : sc.schi, 8 * (s & 3)), ff);
    // Accumulators stay local (through the out pointers every update would go to memory). The
    // sub-block loop is not unrolled: fully unrolled, GCC hoists loads across sub-blocks and
    // spills the dpbusd partial sums to the stack.
    __m512i isum[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) isum[j] = _mm512_setzero_si512();
#pragma GCC unroll 1
    for (int sp = 0; sp < 4; ++sp) {
      const uint8_t* q = ch + 512 * sp;
      MX_UNROLL for (int h = 0; h < 2; ++h) {
        const int s = 2 * sp + h;
        // The sub-block's 8 weight planes in two halves of 4 registers, leaving room for NT
        // partial sums (independent dpbusd chains: enough of them hide its latency).
        __m512i S[NT];
        MX_UNROLL for (int j = 0; j < NT; ++j) S[j] = _mm512_setzero_si512();
        MX_UNROLL for (int hv = 0; hv < 2; ++hv) {
          __m512i W[4];
          MX_UNROLL for (int v = 0; v < 4; ++v) {
            if constexpr (kPre) {
              W[v] = ld(pre + 64 * (8 * s + 4 * hv + v));
            } else {
              W[v] = plane_q45(ch, q, s, 4 * hv + v, m4);
            }
          }
          MX_UNROLL for (int v = 0; v < 4; ++v)
            MX_UNROLL for (int j = 0; j < NT; ++j)
              S[j] = dpbusd_bcast(S[j], W[v], xq[j] + 256 * b + 32 * s + 16 * hv + 4 * v);
        }
        const __m512i sc = scs[s];
        MX_UNROLL for (int j = 0; j < NT; ++j) isum[j] = _mm512_add_epi32(isum[j], _mm512_mullo_epi32(S[j], sc));
      }
    }
    const Mins45 mn = mins_q45(sc);
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      imin_out[j] = imin_q45(mn, bs[j] + 8 * b);
      isum_out[j] = isum[j];
    }
  }

  // One token (decode), Q4_K / Q5_K: the same integer sums as sb_q45<1> (so the same bits),
  // scheduled for a single token. Each 64-byte plane is loaded once for its two sub-blocks (low
  // and high nibbles), and each sub-block's 8 products go to two chains: with one token there is
  // no other token's work to hide vpdpbusd's latency behind, and the loads are the bottleneck.
  __attribute__((always_inline)) static void sb1_q45(const uint8_t* ch, const int8_t* x, const int16_t* bs,
                                                     __m512i* isum_out, __m512i* imin_out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), ff = _mm512_set1_epi32(0xff);
    const Scales45 sc = scales_q45(ch);
    __m512i isum = _mm512_setzero_si512();
    MX_UNROLL for (int sp = 0; sp < 4; ++sp) {
      const uint8_t* q = ch + 512 * sp;
      const int8_t* xs = x + 64 * sp;
      __m512i S[4];
      MX_UNROLL for (int i = 0; i < 4; ++i) S[i] = _mm512_setzero_si512();
      MX_UNROLL for (int v = 0; v < 8; ++v) {
        __m512i raw = ld(q + 64 * v);
        __asm__("" : "+v"(raw));  // one load for both nibbles (GCC would fold it into each use)
        __m512i lo = _mm512_and_si512(raw, m4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
        if constexpr (kFive) {
          const __mmask64 hl = _cvtu64_mask64(ld64(ch + 2304 + 64 * (2 * sp) + 8 * v));
          const __mmask64 hh = _cvtu64_mask64(ld64(ch + 2304 + 64 * (2 * sp + 1) + 8 * v));
          lo = _mm512_mask_add_epi8(lo, hl, lo, _mm512_set1_epi8(16));
          hi = _mm512_mask_add_epi8(hi, hh, hi, _mm512_set1_epi8(16));
        }
        S[v >> 2] = dpbusd_bcast(S[v >> 2], lo, xs + 4 * v);
        S[2 + (v >> 2)] = dpbusd_bcast(S[2 + (v >> 2)], hi, xs + 32 + 4 * v);
      }
      const __m512i sc_lo = _mm512_and_si512(_mm512_srli_epi32(sp < 2 ? sc.sclo : sc.schi, 8 * ((2 * sp) & 3)), ff);
      const __m512i sc_hi = _mm512_and_si512(_mm512_srli_epi32(sp < 2 ? sc.sclo : sc.schi, 8 * ((2 * sp + 1) & 3)), ff);
      isum = _mm512_add_epi32(isum, _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(S[0], S[1]), sc_lo),
                                                     _mm512_mullo_epi32(_mm512_add_epi32(S[2], S[3]), sc_hi)));
    }
    *imin_out = imin_q45(mins_q45(sc), bs);
    *isum_out = isum;
  }

  // Q6_K super-block at ch: isum[j] = sum_s sc_s * (S_s - 32 * bsum16_s) (weights stored + 32).
  template <int NT, bool kPre>
  static void sb_q6(const uint8_t* ch, const uint8_t* pre, const int8_t* const* xq,
                    const int16_t* const* bs, int64_t b, __m512i* isum) {
    __m512i corr[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) corr[j] = _mm512_setzero_si512();
    MX_UNROLL for (int i = 0; i < 8; ++i) {  // scale pairs (sc_2i, sc_2i+1) as int16 per lane
      const __m512i sp = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ch + 3072 + 32 * i)));
      MX_UNROLL for (int j = 0; j < NT; ++j)
        corr[j] = _mm512_dpwssd_epi32(corr[j], sp, bcast32(bs[j] + 16 * b + 2 * i));
    }
    MX_UNROLL for (int j = 0; j < NT; ++j) isum[j] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(corr[j], 5));
    MX_UNROLL for (int n = 0; n < 2; ++n)
      MX_UNROLL for (int c = 0; c < 4; ++c) {
        const __m512i sp = _mm512_cvtepi8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ch + 3072 + 32 * (4 * n + c))));
        const __m512i sc_e = _mm512_srai_epi32(_mm512_slli_epi32(sp, 16), 16), sc_o = _mm512_srai_epi32(sp, 16);
        __m512i W[8];
        MX_UNROLL for (int v = 0; v < 8; ++v)
          W[v] = kPre ? ld(pre + 64 * (32 * n + 8 * c + v)) : plane_q6(ch, n, c, v);
        MX_UNROLL for (int j = 0; j < NT; ++j) {
          const int8_t* x = xq[j] + 256 * b + 128 * n + 32 * c;
          __m512i S0 = _mm512_setzero_si512(), S1 = _mm512_setzero_si512();
          MX_UNROLL for (int v = 0; v < 4; ++v) S0 = dpbusd_bcast(S0, W[v], x + 4 * v);
          MX_UNROLL for (int v = 4; v < 8; ++v) S1 = dpbusd_bcast(S1, W[v], x + 4 * v);
          isum[j] = _mm512_add_epi32(isum[j], _mm512_add_epi32(_mm512_mullo_epi32(S0, sc_e),
                                                                _mm512_mullo_epi32(S1, sc_o)));
        }
      }
  }

  // Tokens [t, t + NT) x the 16 rows of the group at grp; y points at the group's first row.
  // pre: the group's planes from unpack_group, or null (kPre false).
  template <int NT, bool kPf, bool kPre = false>
  static void group(const uint8_t* grp, int64_t nsb, const Prepared& p, int64_t t, float* y,
                    int64_t ldy, const uint8_t* pre = nullptr) {
    const int8_t* xq[NT];
    const float* xd[NT];
    const int16_t* bs[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) {
      xq[j] = p.q + (t + j) * p.q_stride;
      xd[j] = p.d + (t + j) * p.d_stride;
      bs[j] = kSix ? p.bsum16 + (t + j) * p.bsum16_stride : p.bsum32 + (t + j) * p.bsum32_stride;
    }
    __m512 acc[NT];
    MX_UNROLL for (int j = 0; j < NT; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nsb; ++b) {
      const uint8_t* ch = grp + b * kChunk;
      if constexpr (kPf) prefetch_span<kChunk>(ch);
      __m512i isum[NT], imin[NT];
      const uint8_t* dp = ch + (kSix ? 3328 : 2048);
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dp)));
      if constexpr (kSix) {
        sb_q6<NT, kPre>(ch, kPre ? pre + b * kPlanes : nullptr, xq, bs, b, isum);
        MX_UNROLL for (int j = 0; j < NT; ++j)
          acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j]), _mm512_mul_ps(d, _mm512_set1_ps(xd[j][b])), acc[j]);
      } else {
        if constexpr (NT == 1 && !kPre) sb1_q45(ch, xq[0] + 256 * b, bs[0] + 8 * b, isum, imin);
        else sb_q45<NT, kPre>(ch, kPre ? pre + b * kPlanes : nullptr, xq, bs, b, isum, imin);
        const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dp + 32)));
        MX_UNROLL for (int j = 0; j < NT; ++j) {
          const __m512 dx = _mm512_set1_ps(xd[j][b]);
          acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j]), _mm512_mul_ps(d, dx), acc[j]);
          acc[j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin[j]), _mm512_mul_ps(dmin, dx), acc[j]);
        }
      }
    }
    MX_UNROLL for (int j = 0; j < NT; ++j) _mm512_storeu_ps(y + (t + j) * ldy, acc[j]);
  }

  template <int NT, bool kPre = false>
  static void tail(int nt, const uint8_t* grp, int64_t nsb, const Prepared& p, int64_t t,
                   float* y, int64_t ldy, const uint8_t* pre = nullptr) {
    if constexpr (NT > 1)
      if (nt < NT) return tail<NT - 1, kPre>(nt, grp, nsb, p, t, y, ldy, pre);
    group<NT, false, kPre>(grp, nsb, p, t, y, ldy, pre);
  }

  // Rows [r0, r1) (multiples of 16): each group is read from memory once (the first token
  // tile, with prefetch) and from cache by the other tiles. With MX_KR16_PRE tokens or more,
  // each group is first unpacked to bytes (unpack_group) and every tile reads those.
  // With two or more full tiles, the next group is prefetched into L2, a slice in each tile
  // but the first, while this one is in use; only the range's first group streams in with
  // the loads' own prefetch (the first tile of every group used to wait on DRAM: ~9% of
  // prefill time).
  static void rows(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                   int64_t ldy) {
    const int64_t T = p.n_tokens, nsb = w.cols / 256;
    constexpr int kNT = MX_KR16_NT;
    const int64_t gbytes = nsb * kChunk, ntile = T / kNT;
    const bool spread = ntile >= 2;
    const int64_t per = spread ? ((gbytes + ntile - 2) / (ntile - 1) + 63) / 64 * 64 : 0;
    const bool unpack = T >= MX_KR16_PRE;
    uint8_t* pre = nullptr;
    if (unpack) {
      thread_local Arena buf;
      pre = static_cast<uint8_t*>(buf.get(static_cast<size_t>(nsb * kPlanes)));
    }
    for (int64_t r = r0; r < r1; r += 16) {
      const uint8_t* g = w.row(r);
      const uint8_t* next = r + 16 < r1 ? w.row(r + 16) : nullptr;
      int64_t t = 0;
      if (unpack) {
        unpack_group(g, nsb, pre);
        for (; t + kNT <= T; t += kNT) {
          if (spread && next && t > 0)
            for (int64_t o = (t / kNT - 1) * per; o < (t / kNT) * per && o < gbytes; o += 64)
              _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T1);
          group<kNT, false, true>(g, nsb, p, t, y + r, ldy, pre);
        }
        if (t < T) tail<kNT, true>(static_cast<int>(T - t), g, nsb, p, t, y + r, ldy, pre);
        continue;
      }
      if (T >= kNT) {
        if (!spread || r == r0) group<kNT, true>(g, nsb, p, 0, y + r, ldy);
        else group<kNT, false>(g, nsb, p, 0, y + r, ldy);
        for (t = kNT; t + kNT <= T; t += kNT) {
          if (spread && next)
            for (int64_t o = (t / kNT - 1) * per; o < (t / kNT) * per && o < gbytes; o += 64)
              _mm_prefetch(reinterpret_cast<const char*>(next + o), _MM_HINT_T1);
          group<kNT, false>(g, nsb, p, t, y + r, ldy);
        }
      } else if (T == 1) {
        group<1, true>(g, nsb, p, 0, y + r, ldy);
        t = 1;
      }
      if (t < T) tail<kNT>(static_cast<int>(T - t), g, nsb, p, t, y + r, ldy);
    }
  }
};

}  // namespace

void rows_kr16_avx512(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                      int64_t ldy) {
  switch (w.dtype) {
    case DType::Q4_KR16: return KR16<DType::Q4_KR16>::rows(w, p, r0, r1, y, ldy);
    case DType::Q5_KR16: return KR16<DType::Q5_KR16>::rows(w, p, r0, r1, y, ldy);
    case DType::Q6_KR16: return KR16<DType::Q6_KR16>::rows(w, p, r0, r1, y, ldy);
    default: break;
  }
}

}  // namespace mx::mmk
