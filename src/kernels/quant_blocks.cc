// Scalar reference decoders/encoders. Each one reproduces ggml's dequantize_row_* /
// quantize_row_*_ref bit for bit: same element order, same float operations in the same order
// (no fused multiply-add; this file is built without -mfma), same rounding.
#include "kernels/quant_blocks.h"
#include "kernels/quant_r16k.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/half.h"

namespace mx {

namespace {

// Loads a possibly unaligned little-endian field (blocks are packed, 2-byte aligned at best).
template <typename T>
inline T load(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

inline float fp16(uint16_t h) { return f16_to_f32(h); }

// Round half to even via the 1.5*2^23 trick, as ggml's nearest_int (valid for |x| < 2^22).
inline int nearest_int(float fval) {
  const float val = fval + 12582912.f;
  int i;
  std::memcpy(&i, &val, sizeof(int));
  return (i & 0x007fffff) - 0x00400000;
}

void dequant_q8_0(const BlockQ8_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16(x[i].d);
    for (int j = 0; j < QK; ++j) y[i * QK + j] = x[i].qs[j] * d;
  }
}

// Low nibbles hold elements 0..15 of the block, high nibbles 16..31.
void dequant_q4_0(const BlockQ4_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16(x[i].d);
    for (int j = 0; j < QK / 2; ++j) {
      const int x0 = (x[i].qs[j] & 0x0F) - 8;
      const int x1 = (x[i].qs[j] >> 4) - 8;
      y[i * QK + j] = x0 * d;
      y[i * QK + j + QK / 2] = x1 * d;
    }
  }
}

void dequant_q4_1(const BlockQ4_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16(x[i].d);
    const float m = fp16(x[i].m);
    for (int j = 0; j < QK / 2; ++j) {
      const int x0 = x[i].qs[j] & 0x0F;
      const int x1 = x[i].qs[j] >> 4;
      y[i * QK + j] = x0 * d + m;
      y[i * QK + j + QK / 2] = x1 * d + m;
    }
  }
}

// qh bit j is the 5th bit of element j (0..31).
void dequant_q5_0(const BlockQ5_0* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16(x[i].d);
    const uint32_t qh = load<uint32_t>(x[i].qh);
    for (int j = 0; j < QK / 2; ++j) {
      const int xh0 = static_cast<int>(((qh >> j) << 4) & 0x10);
      const int xh1 = static_cast<int>((qh >> (j + 12)) & 0x10);
      const int x0 = ((x[i].qs[j] & 0x0F) | xh0) - 16;
      const int x1 = ((x[i].qs[j] >> 4) | xh1) - 16;
      y[i * QK + j] = x0 * d;
      y[i * QK + j + QK / 2] = x1 * d;
    }
  }
}

void dequant_q5_1(const BlockQ5_1* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16(x[i].d);
    const float m = fp16(x[i].m);
    const uint32_t qh = load<uint32_t>(x[i].qh);
    for (int j = 0; j < QK / 2; ++j) {
      const int xh0 = static_cast<int>(((qh >> j) << 4) & 0x10);
      const int xh1 = static_cast<int>((qh >> (j + 12)) & 0x10);
      const int x0 = (x[i].qs[j] & 0x0F) | xh0;
      const int x1 = (x[i].qs[j] >> 4) | xh1;
      y[i * QK + j] = x0 * d + m;
      y[i * QK + j + QK / 2] = x1 * d + m;
    }
  }
}

// 8 sub-blocks of 32; each 64-element chunk uses 32 bytes of qs (low nibbles first).
void dequant_q4_k(const BlockQ4_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* q = x[i].qs;
    const float d = fp16(x[i].d);
    const float mn = fp16(x[i].dmin);
    int is = 0;
    for (int j = 0; j < QK_K; j += 64) {
      uint8_t sc, m;
      get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = mn * m;
      get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = mn * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
      q += 32;
      is += 2;
    }
  }
}

// Like Q4_K plus one high bit per element: qh[l] bit 2c / 2c+1 for chunk c's low / high half.
void dequant_q5_k(const BlockQ5_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* ql = x[i].qs;
    const uint8_t* qh = x[i].qh;
    const float d = fp16(x[i].d);
    const float mn = fp16(x[i].dmin);
    int is = 0;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < QK_K; j += 64) {
      uint8_t sc, m;
      get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = mn * m;
      get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = mn * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
      ql += 32;
      is += 2;
      u1 = static_cast<uint8_t>(u1 << 2);
      u2 = static_cast<uint8_t>(u2 << 2);
    }
  }
}

// Two 128-element halves; in each, element l + 32k takes a nibble of ql and 2 bits of qh[l].
void dequant_q6_k(const BlockQ6_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16(x[i].d);
    const uint8_t* ql = x[i].ql;
    const uint8_t* qh = x[i].qh;
    const int8_t* sc = x[i].scales;
    for (int n = 0; n < QK_K; n += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

void dequant_q8_k(const BlockQ8_K* x, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = x[i].d;
    for (int j = 0; j < QK_K; ++j) *y++ = d * x[i].qs[j];
  }
}

void quant_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) amax = amax > std::fabs(x[j]) ? amax : std::fabs(x[j]);
    const float d = amax / ((1 << 7) - 1);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    // Scaled by the unrounded 1/d (as ggml does), not by the fp16 d that is stored.
    for (int j = 0; j < QK; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

// The value of largest magnitude (the first one on ties), with its sign: ggml's encoders map it
// to the end of the code range.
float largest_magnitude(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

// d is chosen so that the largest-magnitude value maps to -8 exactly (full use of 0..15).
void quant_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    const float max = largest_magnitude(x, QK);
    const float d = max / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    for (int j = 0; j < QK / 2; ++j) {
      const float x0 = x[j] * id;
      const float x1 = x[QK / 2 + j] * id;
      // Truncation of (v + 8.5) is round-half-up of v + 8; |v| <= 8 so it is never negative.
      const int xi0 = std::min(15, static_cast<int>(static_cast<int8_t>(x0 + 8.5f)));
      const int xi1 = std::min(15, static_cast<int>(static_cast<int8_t>(x1 + 8.5f)));
      y[i].qs[j] = static_cast<uint8_t>(xi0 | (xi1 << 4));
    }
  }
}

// Symmetric 8-bit super-blocks for activations; bsums (sums of 16 quants) let k-quant dot
// products fold the per-sub-block minimums in without touching the quants again.
void quant_q8_k(const float* x, BlockQ8_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    const float max = largest_magnitude(x, QK_K);
    if (max == 0.0f) {  // ggml leaves bsums untouched here; we zero them to be deterministic
      y[i].d = 0.0f;
      std::memset(y[i].qs, 0, sizeof(y[i].qs));
      std::memset(y[i].bsums, 0, sizeof(y[i].bsums));
      continue;
    }
    // -127 rather than -128 keeps every quant symmetric (ggml changed this for IQ2 kernels).
    const float iscale = -127.f / max;
    for (int j = 0; j < QK_K; ++j) {
      const int v = nearest_int(iscale * x[j]);
      y[i].qs[j] = static_cast<int8_t>(std::min(127, v));
    }
    for (int j = 0; j < QK_K / 16; ++j) {
      int sum = 0;
      for (int k = 0; k < 16; ++k) sum += y[i].qs[j * 16 + k];
      y[i].bsums[j] = static_cast<int16_t>(sum);
    }
    y[i].d = 1 / iscale;
  }
}

// ggml's Q5_0: like Q4_0 with 32 levels; the value of largest magnitude maps to code 0.
void quant_q5_0(const float* x, BlockQ5_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    const float max = largest_magnitude(x, QK);
    const float d = max / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; ++j) {
      const int xi0 = std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f)));
      const int xi1 = std::min(31, static_cast<int>(static_cast<int8_t>(x[QK / 2 + j] * id + 16.5f)));
      y[i].qs[j] = static_cast<uint8_t>((xi0 & 15) | ((xi1 & 15) << 4));
      qh |= static_cast<uint32_t>(xi0 >> 4) << j;
      qh |= static_cast<uint32_t>(xi1 >> 4) << (j + QK / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

// ggml's Q5_1: 32 levels from the block's minimum to its maximum.
void quant_q5_1(const float* x, BlockQ5_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float min = x[0], max = x[0];
    for (int j = 1; j < QK; ++j) min = std::min(min, x[j]), max = std::max(max, x[j]);
    const float d = (max - min) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    y[i].m = f32_to_f16(min);
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; ++j) {
      // Truncation of a non-negative value + 0.5: round half up.
      const int xi0 = static_cast<uint8_t>((x[j] - min) * id + 0.5f);
      const int xi1 = static_cast<uint8_t>((x[QK / 2 + j] - min) * id + 0.5f);
      y[i].qs[j] = static_cast<uint8_t>((xi0 & 15) | ((xi1 & 15) << 4));
      qh |= static_cast<uint32_t>((xi0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((xi1 >> 4) & 1) << (j + QK / 2);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

// ---- k-quant encoders ----------------------------------------------------------------------
// The search follows ggml's reference quantizer (make_qkx2_quants / make_qx_quants): per
// sub-block, try a few grids over the value range and keep the weighted least-squares fit with
// the smallest weighted error. ggml then rounds the sub-block scales to 6 or 8 bits and re-rounds
// the quants; we additionally try the neighbouring scale codes of each sub-block, which for the
// same fit never raises the weighted error and undoes part of the loss of that last rounding.

inline float clampf(float v, float lo, float hi) { return std::min(hi, std::max(lo, v)); }

// Sub-block of Q4_K / Q5_K: x ~ scale * q - m with q in [0, nmax], scale > 0, m >= 0 (zero must
// stay representable without a sign bit on m). Grids of nmax + rmin + k * rdelta steps
// (k = 0..nstep) span [min(x, 0), max(x)]; each rounding is refit by weighted least squares.
// Returns the scale and m; L gets the quants of the best fit.
struct ScaleMin { float scale, m; };
ScaleMin fit_scale_min(const float* x, const float* w, int n, int nmax, float rmin, float rdelta,
                       int nstep, uint8_t* L) {
  float lo = x[0], hi = x[0], sw = 0, sx = 0;
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sw += w[i];
    sx += w[i] * x[i];
  }
  lo = std::min(lo, 0.0f);
  if (hi == lo) {  // constant (non-positive) values: all in the offset
    std::memset(L, 0, static_cast<size_t>(n));
    return {0.0f, -lo};
  }
  auto error = [&](float scale, float off, const uint8_t* q) {
    float e = 0;
    for (int i = 0; i < n; ++i) {
      const float diff = scale * q[i] + off - x[i];
      e += w[i] * diff * diff;
    }
    return e;
  };
  // Plain min/max grid first: the fit every refinement must beat.
  const float iscale0 = nmax / (hi - lo);
  float best_scale = 1 / iscale0, best_off = lo;
  for (int i = 0; i < n; ++i)
    L[i] = static_cast<uint8_t>(std::clamp(nearest_int(iscale0 * (x[i] - lo)), 0, nmax));
  float best = error(best_scale, best_off, L);
  uint8_t q[QK_K];
  for (int k = 0; k <= nstep; ++k) {
    // Summed in ggml's order, so that without fused multiply-add the fits are ggml's.
    const float iscale = (rmin + rdelta * k + nmax) / (hi - lo);
    float sl = 0, sl2 = 0, sxl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - lo)), 0, nmax);
      q[i] = static_cast<uint8_t>(l);
      sl += w[i] * l;
      sl2 += w[i] * l * l;
      sxl += w[i] * l * x[i];
    }
    const float det = sw * sl2 - sl * sl;
    if (det <= 0) continue;
    float scale = (sw * sxl - sx * sl) / det;
    float off = (sl2 * sx - sl * sxl) / det;
    if (off > 0) {  // an offset above zero is not representable: fit the scale alone
      off = 0;
      scale = sxl / sl2;
    }
    if (!(scale > 0)) continue;
    const float e = error(scale, off, q);
    if (e < best) {
      best = e;
      best_scale = scale;
      best_off = off;
      std::memcpy(L, q, static_cast<size_t>(n));
    }
  }
  return {best_scale, -best_off};
}

// Quants of one sub-block for the decoded scale d and offset m (x ~ d * q - m); returns the
// weighted squared error.
float round_sub_block(const float* x, const float* w, int n, int nmax, float d, float m, uint8_t* L) {
  float e = 0;
  for (int i = 0; i < n; ++i) {
    const int l = d != 0.0f ? std::clamp(nearest_int((x[i] + m) / d), 0, nmax) : 0;
    L[i] = static_cast<uint8_t>(l);
    const float diff = d * l - m - x[i];
    e += w[i] * diff * diff;
  }
  return e;
}

// The shared part of Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scale and min codes against
// the fp16 super-block d and dmin. Fills d, dmin, the 12 packed scale bytes and L (0..nmax).
void quant_k_scale_min(const float* x, int nmax, float rmin, float rdelta, int nstep,
                       uint16_t* d_out, uint16_t* dmin_out, uint8_t* scales, uint8_t* L) {
  float w[QK_K], sc[8], mn[8];
  float max_sc = 0, max_mn = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    // Weights favour large values, but never ignore small ones (as ggml's reference does).
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[32 * j + l] = av + std::fabs(xs[l]);
    const ScaleMin f = fit_scale_min(xs, w + 32 * j, 32, nmax, rmin, rdelta, nstep, L + 32 * j);
    sc[j] = f.scale;
    mn[j] = f.m;
    max_sc = std::max(max_sc, sc[j]);
    max_mn = std::max(max_mn, mn[j]);
  }
  const uint16_t dh = f32_to_f16(max_sc / 63), mh = f32_to_f16(max_mn / 63);
  const float d = fp16(dh), dmin = fp16(mh);
  const float inv_sc = max_sc > 0 ? 63 / max_sc : 0, inv_mn = max_mn > 0 ? 63 / max_mn : 0;
  uint8_t ls[8], lm[8];
  uint8_t q[32];
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    const float* ws = w + 32 * j;
    const int ls0 = std::min(63, nearest_int(inv_sc * sc[j]));
    const int lm0 = std::min(63, nearest_int(inv_mn * mn[j]));
    // The rounded codes, then their neighbours: keep the pair with the least error.
    float best = round_sub_block(xs, ws, 32, nmax, d * ls0, dmin * lm0, L + 32 * j);
    ls[j] = static_cast<uint8_t>(ls0);
    lm[j] = static_cast<uint8_t>(lm0);
    for (int a = std::max(0, ls0 - 1); a <= std::min(63, ls0 + 1); ++a) {
      for (int b = std::max(0, lm0 - 1); b <= std::min(63, lm0 + 1); ++b) {
        if (a == ls0 && b == lm0) continue;
        const float e = round_sub_block(xs, ws, 32, nmax, d * a, dmin * b, q);
        if (e < best) {
          best = e;
          ls[j] = static_cast<uint8_t>(a);
          lm[j] = static_cast<uint8_t>(b);
          std::memcpy(L + 32 * j, q, 32);
        }
      }
    }
  }
  // The packing get_scale_min_k4 undoes.
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(ls[j] | ((ls[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<uint8_t>(lm[j] | ((lm[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<uint8_t>((ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4));
  }
  *d_out = dh;
  *dmin_out = mh;
}

void quant_q4_k(const float* x, BlockQ4_K* y, int64_t nb) {
  uint8_t L[QK_K];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    quant_k_scale_min(x, 15, -1.0f, 0.1f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
    // Each 64-element chunk: its first 32 quants in the low nibbles, the next 32 in the high.
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l)
        y[i].qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  }
}

void quant_q5_k(const float* x, BlockQ5_K* y, int64_t nb) {
  uint8_t L[QK_K];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    quant_k_scale_min(x, 31, -0.5f, 0.1f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
    std::memset(y[i].qh, 0, sizeof(y[i].qh));
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        const int a = L[64 * c + l], b = L[64 * c + 32 + l];
        y[i].qs[32 * c + l] = static_cast<uint8_t>((a & 15) | ((b & 15) << 4));
        y[i].qh[l] = static_cast<uint8_t>(y[i].qh[l] | ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1)));
      }
    }
  }
}

// Sub-block of Q6_K: x ~ scale * q with q in [-nmax, nmax - 1], weighted by x^2. The value of
// largest magnitude sits at -nmax (the long side) for grids of nmax + 0.1 k steps, k = -9..9;
// the best least-squares scale over them wins. Returns the scale (signed; 0 for a zero block).
float fit_scale_signed(const float* x, int n, int nmax, int8_t* L) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < 1e-15f) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.0f;
  }
  // With the optimal scale sum(w x l) / sum(w l^2), the weighted error is
  // sum(w x^2) - sum(w x l)^2 / sum(w l^2): maximize the last ratio.
  float best_scale = 0, best_num = -1, best_den = 1;
  int8_t q[QK_K];
  for (int k = 0; k <= 18; ++k) {
    const float steps = k == 0 ? static_cast<float>(nmax) : nmax + 0.1f * (k <= 9 ? k - 10 : k - 9);
    const float iscale = -steps / max;
    float sxl = 0, sl2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      q[i] = static_cast<int8_t>(l);
      const float w = x[i] * x[i];
      sxl += w * x[i] * l;
      sl2 += w * l * l;
    }
    if (sl2 <= 0) continue;
    if (best_num < 0 || sxl * sxl * best_den > best_num * sl2) {
      best_num = sxl * sxl;
      best_den = sl2;
      best_scale = sxl / sl2;
      std::memcpy(L, q, static_cast<size_t>(n));
    }
  }
  return best_scale;
}

void quant_q6_k(const float* x, BlockQ6_K* y, int64_t nb) {
  int8_t L[QK_K];
  float sc[QK_K / 16];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float max_sc = 0, amax_sc = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
      sc[j] = fit_scale_signed(x + 16 * j, 16, 32, L + 16 * j);
      if (std::fabs(sc[j]) > amax_sc) {
        amax_sc = std::fabs(sc[j]);
        max_sc = sc[j];
      }
    }
    if (amax_sc < 1e-15f) {
      std::memset(&y[i], 0, sizeof(BlockQ6_K));
      continue;
    }
    // The largest sub-block scale maps to code -128, the long end of int8.
    const float iscale = -128.0f / max_sc;
    y[i].d = f32_to_f16(1 / iscale);
    const float d = fp16(y[i].d);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float* xs = x + 16 * j;
      const int s0 = std::min(127, nearest_int(iscale * sc[j]));
      auto round16 = [&](int s, int8_t* q) {  // weighted error, as the search's x^2 weights
        const float ds = d * s;
        float e = 0;
        for (int l = 0; l < 16; ++l) {
          const int v = ds != 0.0f ? std::clamp(nearest_int(xs[l] / ds), -32, 31) : 0;
          q[l] = static_cast<int8_t>(v);
          const float diff = ds * v - xs[l];
          e += xs[l] * xs[l] * diff * diff;
        }
        return e;
      };
      int8_t q[16];
      float best = round16(s0, L + 16 * j);
      int s_best = s0;
      for (int s = std::max(-128, s0 - 1); s <= std::min(127, s0 + 1); ++s) {
        if (s == s0) continue;
        const float e = round16(s, q);
        if (e < best) {
          best = e;
          s_best = s;
          std::memcpy(L + 16 * j, q, 16);
        }
      }
      y[i].scales[j] = static_cast<int8_t>(s_best);
    }
    // Two halves of 128: element l + 32 k (k = 0..3) keeps its low nibble in ql and its top
    // two bits in qh[l] (bits 2k, 2k + 1), stored offset by 32.
    for (int h = 0; h < 2; ++h) {
      const int8_t* Lh = L + 128 * h;
      uint8_t* ql = y[i].ql + 64 * h;
      uint8_t* qh = y[i].qh + 32 * h;
      for (int l = 0; l < 32; ++l) {
        const int q1 = Lh[l] + 32, q2 = Lh[l + 32] + 32, q3 = Lh[l + 64] + 32, q4 = Lh[l + 96] + 32;
        ql[l] = static_cast<uint8_t>((q1 & 15) | ((q3 & 15) << 4));
        ql[l + 32] = static_cast<uint8_t>((q2 & 15) | ((q4 & 15) << 4));
        qh[l] = static_cast<uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
      }
    }
  }
}

}  // namespace

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  const int64_t nb = n / dtype_info(t).block_elems;
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::F16: {
      const auto* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load<uint16_t>(p + 2 * i));
      return;
    }
    case DType::BF16: {
      const auto* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load<uint16_t>(p + 2 * i));
      return;
    }
    case DType::Q8_0: return dequant_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb);
    case DType::Q4_0: return dequant_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb);
    case DType::Q4_1: return dequant_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb);
    case DType::Q5_0: return dequant_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb);
    case DType::Q5_1: return dequant_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb);
    case DType::Q4_K: return dequant_q4_k(static_cast<const BlockQ4_K*>(src), dst, nb);
    case DType::Q5_K: return dequant_q5_k(static_cast<const BlockQ5_K*>(src), dst, nb);
    case DType::Q6_K: return dequant_q6_k(static_cast<const BlockQ6_K*>(src), dst, nb);
    case DType::Q8_K: return dequant_q8_k(static_cast<const BlockQ8_K*>(src), dst, nb);
    case DType::Q8_0R16: case DType::Q4_0R16: case DType::Q4_KR16: case DType::Q5_KR16:
    case DType::Q6_KR16:
      throw std::invalid_argument("dequantize_row: " + std::string(dtype_info(t).name) +
                                  " rows are interleaved in 16-row groups");
    // Integer tensors are never weights, but converting them keeps this total over DType.
    case DType::I32: {
      const auto* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(load<int32_t>(p + 4 * i));
      return;
    }
    case DType::I64: {
      const auto* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(load<int64_t>(p + 8 * i));
      return;
    }
    case DType::U8: {
      const auto* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(p[i]);
      return;
    }
    case DType::Count: break;
  }
}

namespace {
// Moves one 16-row group between its rows (base-type blocks {f16 d, quants}) and its
// interleaved form, in the direction `to_group`. Q8_0 blocks have 32 quant bytes, Q4_0 16.
void r16_move(DType t, uint8_t* group, uint8_t* rows16, int64_t cols, bool to_group) {
  const DType base = r16_base(t);
  const int64_t nb = cols / QK;
  const int qb = t == DType::Q4_0R16 ? 16 : 32, bb = dtype_info(base).block_bytes;
  const size_t rb = row_bytes(base, cols);
  auto move = [to_group](uint8_t* g, uint8_t* r, size_t n) {
    if (to_group) std::memcpy(g, r, n);
    else std::memcpy(r, g, n);
  };
  for (int l = 0; l < 16; ++l) {
    uint8_t* row = rows16 + l * rb;
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* q = group + 16 * qb * b + 4 * l;
      for (int k = 0; k < qb / 4; ++k) move(q + 64 * k, row + b * bb + 2 + 4 * k, 4);
      move(group + 16 * qb * nb + 32 * b + 2 * l, row + b * bb, 2);
    }
  }
}
}  // namespace

void interleave_r16(DType t, const uint8_t* rows16, int64_t cols, uint8_t* group) {
  if (is_r16_k(t)) return interleave_r16k(t, rows16, cols, group);
  r16_move(t, group, const_cast<uint8_t*>(rows16), cols, true);  // rows16 is only read
}

void deinterleave_r16(DType t, const uint8_t* group, int64_t cols, uint8_t* rows16) {
  if (is_r16_k(t)) return deinterleave_r16k(t, group, cols, rows16);
  r16_move(t, const_cast<uint8_t*>(group), rows16, cols, false);  // group is only read
}

void dequantize_rows(DType t, const uint8_t* data, int64_t cols, int64_t r0, int64_t n, float* dst) {
  const size_t rb = row_bytes(t, cols);
  if (!is_r16(t)) {
    for (int64_t r = 0; r < n; ++r) dequantize_row(t, data + (r0 + r) * rb, dst + r * cols, cols);
    return;
  }
  std::vector<uint8_t> rows16(16 * rb);
  for (int64_t g = r0 / 16; g * 16 < r0 + n; ++g) {
    deinterleave_r16(t, data + 16 * g * rb, cols, rows16.data());
    for (int l = 0; l < 16; ++l) {
      const int64_t r = 16 * g + l;
      if (r >= r0 && r < r0 + n)
        dequantize_row(r16_base(t), rows16.data() + l * rb, dst + (r - r0) * cols, cols);
    }
  }
}

bool quantize_row(DType t, const float* src, void* dst, int64_t n) {
  const int64_t nb = n / dtype_info(t).block_elems;
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return true;
    case DType::F16: {
      auto* p = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_f16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return true;
    }
    case DType::BF16: {
      auto* p = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return true;
    }
    case DType::Q8_0: quant_q8_0(src, static_cast<BlockQ8_0*>(dst), nb); return true;
    case DType::Q4_0: quant_q4_0(src, static_cast<BlockQ4_0*>(dst), nb); return true;
    case DType::Q5_0: quant_q5_0(src, static_cast<BlockQ5_0*>(dst), nb); return true;
    case DType::Q5_1: quant_q5_1(src, static_cast<BlockQ5_1*>(dst), nb); return true;
    case DType::Q4_K: quant_q4_k(src, static_cast<BlockQ4_K*>(dst), nb); return true;
    case DType::Q5_K: quant_q5_k(src, static_cast<BlockQ5_K*>(dst), nb); return true;
    case DType::Q6_K: quant_q6_k(src, static_cast<BlockQ6_K*>(dst), nb); return true;
    case DType::Q8_K: quant_q8_k(src, static_cast<BlockQ8_K*>(dst), nb); return true;
    default: return false;
  }
}

}  // namespace mx
