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

// d is chosen so that the largest-magnitude value maps to -8 exactly (full use of 0..15).
void quant_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
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
    float max = 0, amax = 0;
    for (int j = 0; j < QK_K; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    if (amax == 0.0f) {  // ggml leaves bsums untouched here; we zero them to be deterministic
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
    case DType::Q8_K: quant_q8_k(src, static_cast<BlockQ8_K*>(dst), nb); return true;
    default: return false;
  }
}

}  // namespace mx
