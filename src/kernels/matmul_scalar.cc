// Scalar matmul path (the reference the SIMD paths are tested against) and the activation
// quantizer every path shares.
//
// Quantized weights are multiplied the way the SIMD kernels do it: activations are Q8 blocks
// (32 values for legacy types, 256 for k-quants), each block's integer dot product is exact,
// and only the float scaling / summation differs between paths.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/half.h"
#include "kernels/matmul_internal.h"
#include "kernels/quant_blocks.h"

namespace mx::mmk {

void Arena::Free::operator()(void* p) const { std::free(p); }

void* Arena::get(size_t bytes) {
  if (bytes > cap_ || !p_) {
    const size_t cap = std::max<size_t>((bytes + 4095) & ~size_t{4095}, 4096);
    p_.reset(std::aligned_alloc(64, cap));
    cap_ = cap;
  }
  return p_.get();
}

namespace {
int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
size_t align64(size_t v) { return (v + 63) & ~size_t{63}; }
}  // namespace

QuantBuffers quant_alloc(const QuantLayout& L, int64_t n_tokens, int64_t cols, Arena& arena,
                         Prepared* out) {
  QuantBuffers b{};
  b.q_stride = round_up(cols, L.pad_bytes);
  // Tokens side by side read the same offset of rows q_stride apart. At a stride of 4096 (or
  // 14336: 2048 mod 4096) those reads fall in one or two L1 sets, and a kernel reading 6 tokens
  // ran at half speed. Pad the stride until the rows spread over at least 16 sets.
  // The step keeps the stride a whole number of permutation spans (quantize_acts copies spans).
  const int64_t step = std::max<int64_t>(L.pad_bytes, L.perm ? L.perm_span : 0);
  while (std::gcd(b.q_stride / 64, int64_t{64}) > 4) b.q_stride += step;
  const int64_t nb = b.q_stride / L.block;  // padded block count
  b.d_stride = round_up(nb, 16);
  b.bsum16_stride = L.want_bsums ? round_up(b.q_stride / 16, 32) : 0;
  b.bsum32_stride = L.want_bsums ? round_up(b.q_stride / 32, 32) : 0;
  const size_t q_bytes = align64(static_cast<size_t>(n_tokens * b.q_stride));
  const size_t d_bytes = align64(static_cast<size_t>(n_tokens * b.d_stride) * sizeof(float));
  const size_t sd_bytes = L.want_sd ? d_bytes : 0;
  const size_t bias_bytes = L.bias_mul ? d_bytes : 0;
  const size_t b16_bytes = align64(static_cast<size_t>(n_tokens * b.bsum16_stride) * 2);
  const size_t b32_bytes = align64(static_cast<size_t>(n_tokens * b.bsum32_stride) * 2);
  uint8_t* base = static_cast<uint8_t*>(
      arena.get(q_bytes + d_bytes + sd_bytes + bias_bytes + b16_bytes + b32_bytes));
  b.q = reinterpret_cast<int8_t*>(base);
  base += q_bytes;
  b.d = reinterpret_cast<float*>(base);
  base += d_bytes;
  b.sd = L.want_sd ? reinterpret_cast<float*>(base) : nullptr;
  base += sd_bytes;
  b.bias = L.bias_mul ? reinterpret_cast<int32_t*>(base) : nullptr;
  base += bias_bytes;
  b.bsum16 = L.want_bsums ? reinterpret_cast<int16_t*>(base) : nullptr;
  base += b16_bytes;
  b.bsum32 = L.want_bsums ? reinterpret_cast<int16_t*>(base) : nullptr;

  *out = Prepared{};
  out->n_tokens = n_tokens;
  out->cols = cols;
  out->q = b.q;
  out->q_stride = b.q_stride;
  out->d = b.d;
  out->d_stride = b.d_stride;
  out->sd = b.sd;
  out->bias = b.bias;
  out->bsum16 = b.bsum16;
  out->bsum32 = b.bsum32;
  out->bsum16_stride = b.bsum16_stride;
  out->bsum32_stride = b.bsum32_stride;
  out->act_bytes = b.q_stride + b.d_stride * 4 * (1 + (L.want_sd ? 1 : 0) + (L.bias_mul ? 1 : 0)) +
                   (b.bsum16_stride + b.bsum32_stride) * 2;
  return b;
}

float* plain_alloc(int64_t n_tokens, int64_t cols, int pad_floats, Arena& arena, Prepared* out) {
  int64_t stride = round_up(std::max<int64_t>(cols, 1), pad_floats);
  // Spread side-by-side tokens over L1 sets, as quant_alloc does.
  while (std::gcd(stride * 4 / 64, int64_t{64}) > 4) stride += pad_floats;
  float* p = static_cast<float*>(arena.get(static_cast<size_t>(n_tokens * stride) * sizeof(float)));
  *out = Prepared{};
  out->n_tokens = n_tokens;
  out->cols = cols;
  out->xf = p;
  out->xf_stride = stride;
  out->act_bytes = stride * 4;
  return p;
}

void fill_plain_copy(const float* x, int64_t cols, float* dst, int64_t stride) {
  std::memcpy(dst, x, static_cast<size_t>(cols) * sizeof(float));
  std::fill(dst + cols, dst + stride, 0.f);
}

void quant_block_scalar(const float* x, int n, int8_t* q, float* d, int32_t* sum16) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float dd = amax / 127.f;
  const float id = dd != 0.f ? 1.f / dd : 0.f;
  for (int c = 0; c < n; c += 16) {
    int s = 0;
    for (int i = c; i < c + 16; ++i) {
      // Round-to-nearest-even, as the SIMD converts do under the default MXCSR.
      float v = std::nearbyint(x[i] * id);
      v = std::min(127.f, std::max(-127.f, v));
      q[i] = static_cast<int8_t>(v);
      s += q[i];
    }
    if (sum16) sum16[c / 16] = s;
  }
  *d = dd;
}

void quantize_acts(const QuantLayout& L, const float* x, int64_t cols, int64_t t0, int64_t t1,
                   const QuantBuffers& b, QuantBlockFn fn) {
  const int64_t nb = cols / L.block;
  const bool sums = L.want_sd || L.want_bsums || L.bias_mul != 0;
  const uint8_t off = L.offset128 ? 128 : 0;
  const bool direct = !L.perm && !off;  // quantize straight into the output row
  std::vector<int8_t> tmp(direct ? 0 : static_cast<size_t>(b.q_stride));
  int32_t s16[QK_K / 16];
  for (int64_t t = t0; t < t1; ++t) {
    const float* xr = x + t * cols;
    int8_t* q = b.q + t * b.q_stride;
    int8_t* nat = direct ? q : tmp.data();
    float* d = b.d + t * b.d_stride;
    for (int64_t blk = 0; blk < nb; ++blk) {
      fn(xr + blk * L.block, L.block, nat + blk * L.block, &d[blk], sums ? s16 : nullptr);
      if (!sums) continue;
      int sum = 0;
      for (int g = 0; g < L.block / 16; ++g) sum += s16[g];
      if (b.sd) b.sd[t * b.d_stride + blk] = d[blk] * static_cast<float>(sum);
      if (b.bias) b.bias[t * b.d_stride + blk] = L.bias_mul * sum;
      if (L.want_bsums) {
        int16_t* b16 = b.bsum16 + t * b.bsum16_stride + blk * (L.block / 16);
        int16_t* b32 = b.bsum32 + t * b.bsum32_stride + blk * (L.block / 32);
        for (int g = 0; g < L.block / 16; ++g) b16[g] = static_cast<int16_t>(s16[g]);
        for (int g = 0; g < L.block / 32; ++g) b32[g] = static_cast<int16_t>(s16[2 * g] + s16[2 * g + 1]);
      }
    }
    // Padding: zero values and scales, so padded lanes add exact zeros.
    std::memset(nat + nb * L.block, 0, static_cast<size_t>(b.q_stride - nb * L.block));
    std::fill(d + nb, d + b.d_stride, 0.f);
    if (b.sd) std::fill(b.sd + t * b.d_stride + nb, b.sd + (t + 1) * b.d_stride, 0.f);
    if (b.bias) std::fill(b.bias + t * b.d_stride + nb, b.bias + (t + 1) * b.d_stride, 0);
    if (L.want_bsums) {
      std::fill(b.bsum16 + t * b.bsum16_stride + nb * (L.block / 16),
                b.bsum16 + (t + 1) * b.bsum16_stride, int16_t{0});
      std::fill(b.bsum32 + t * b.bsum32_stride + nb * (L.block / 32),
                b.bsum32 + (t + 1) * b.bsum32_stride, int16_t{0});
    }
    if (direct) continue;
    if (L.perm) {
      const int nchunk = L.perm_span / 16;
      for (int64_t s0 = 0; s0 < b.q_stride; s0 += L.perm_span)
        for (int c = 0; c < nchunk; ++c)
          std::memcpy(q + s0 + 16 * c, nat + s0 + 16 * L.perm[c], 16);
    } else {
      std::memcpy(q, nat, static_cast<size_t>(b.q_stride));
    }
    if (off)
      for (int64_t i = 0; i < b.q_stride; ++i) q[i] = static_cast<int8_t>(static_cast<uint8_t>(q[i]) ^ 0x80);
  }
}

void run_prepare(const PrepareJob& job, const float* x, int64_t cols, int64_t t0, int64_t t1) {
  if (job.quant) {
    quantize_acts(job.layout, x, cols, t0, t1, job.bufs, job.qfn);
  } else {
    for (int64_t t = t0; t < t1; ++t)
      job.fill_plain(x + t * cols, cols, job.plain + t * job.plain_stride, job.plain_stride);
  }
}

// ---- Scalar weight decoders (integer values, as the SIMD kernels see them) ----

namespace {

inline float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Legacy 32-blocks: w = integer weights (offset removed for *_0 types), d scale, m min (*_1).
void decode_legacy(DType t, const uint8_t* blk, int8_t* w, float* d, float* m) {
  *m = 0.f;
  switch (t) {
    case DType::Q8_0: {
      *d = h2f(blk);
      std::memcpy(w, blk + 2, QK);
      break;
    }
    case DType::Q4_0: {
      *d = h2f(blk);
      const uint8_t* qs = blk + 2;
      for (int j = 0; j < 16; ++j) {
        w[j] = static_cast<int8_t>((qs[j] & 0xF) - 8);
        w[j + 16] = static_cast<int8_t>((qs[j] >> 4) - 8);
      }
      break;
    }
    case DType::Q4_1: {
      *d = h2f(blk);
      *m = h2f(blk + 2);
      const uint8_t* qs = blk + 4;
      for (int j = 0; j < 16; ++j) {
        w[j] = static_cast<int8_t>(qs[j] & 0xF);
        w[j + 16] = static_cast<int8_t>(qs[j] >> 4);
      }
      break;
    }
    case DType::Q5_0:
    case DType::Q5_1: {
      const bool one = t == DType::Q5_1;
      *d = h2f(blk);
      if (one) *m = h2f(blk + 2);
      uint32_t qh;
      std::memcpy(&qh, blk + (one ? 4 : 2), 4);
      const uint8_t* qs = blk + (one ? 8 : 6);
      const int off = one ? 0 : 16;
      for (int j = 0; j < 16; ++j) {
        const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
        w[j] = static_cast<int8_t>(((qs[j] & 0xF) | (h0 << 4)) - off);
        w[j + 16] = static_cast<int8_t>(((qs[j] >> 4) | (h1 << 4)) - off);
      }
      break;
    }
    default:
      std::abort();
  }
}

// 6-bit scale and min of sub-block j (ggml get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K / Q5_K: w = unsigned values, sc/m per 32-sub-block.
void decode_q45k(DType t, const uint8_t* blk, int8_t* w, int* sc, int* mn, float* d,
                 float* dmin) {
  *d = h2f(blk);
  *dmin = h2f(blk + 2);
  const uint8_t* scales = blk + 4;
  for (int j = 0; j < 8; ++j) scale_min_k4(j, scales, &sc[j], &mn[j]);
  const bool five = t == DType::Q5_K;
  const uint8_t* qh = blk + 16;
  const uint8_t* qs = blk + (five ? 48 : 16);
  for (int c = 0; c < 4; ++c) {  // 64 values per 32 bytes: low nibbles, then high nibbles
    for (int l = 0; l < 32; ++l) {
      int lo = qs[32 * c + l] & 0xF, hi = qs[32 * c + l] >> 4;
      if (five) {
        lo |= ((qh[l] >> (2 * c)) & 1) << 4;
        hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
      }
      w[64 * c + l] = static_cast<int8_t>(lo);
      w[64 * c + 32 + l] = static_cast<int8_t>(hi);
    }
  }
}

// Q6_K: w = signed values (q - 32), sc per 16.
void decode_q6k(const uint8_t* blk, int8_t* w, int* sc, float* d) {
  const uint8_t* ql = blk;
  const uint8_t* qh = blk + 128;
  const int8_t* s = reinterpret_cast<const int8_t*>(blk + 192);
  *d = h2f(blk + 208);
  for (int i = 0; i < 16; ++i) sc[i] = s[i];
  for (int n = 0; n < 2; ++n) {
    const uint8_t* L = ql + 64 * n;
    const uint8_t* H = qh + 32 * n;
    int8_t* o = w + 128 * n;
    for (int l = 0; l < 32; ++l) {
      o[l] = static_cast<int8_t>(((L[l] & 0xF) | (((H[l] >> 0) & 3) << 4)) - 32);
      o[l + 32] = static_cast<int8_t>(((L[l + 32] & 0xF) | (((H[l] >> 2) & 3) << 4)) - 32);
      o[l + 64] = static_cast<int8_t>(((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32);
      o[l + 96] = static_cast<int8_t>(((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32);
    }
  }
}

inline int dot_i8(const int8_t* a, const int8_t* b, int n) {
  int s = 0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void rows_plain(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                int64_t ldy) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* src = w.row(r);
    for (int64_t i = 0; i < w.cols; ++i) {
      uint16_t h;
      switch (w.dtype) {
        case DType::F32: std::memcpy(&row[i], src + 4 * i, 4); break;
        case DType::F16: std::memcpy(&h, src + 2 * i, 2); row[i] = f16_to_f32(h); break;
        default: std::memcpy(&h, src + 2 * i, 2); row[i] = bf16_to_f32(h); break;
      }
    }
    for (int64_t t = 0; t < p.n_tokens; ++t) {
      const float* x = p.xf + t * p.xf_stride;
      float acc = 0.f;
      for (int64_t i = 0; i < w.cols; ++i) acc += row[i] * x[i];
      y[t * ldy + r] = acc;
    }
  }
}

void rows_legacy(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                 int64_t ldy) {
  const int64_t nb = w.cols / QK;
  const int bb = dtype_info(w.dtype).block_bytes;
  std::vector<int8_t> q(static_cast<size_t>(w.cols));
  std::vector<float> d(static_cast<size_t>(nb)), m(static_cast<size_t>(nb));
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t b = 0; b < nb; ++b)
      decode_legacy(w.dtype, w.row(r) + b * bb, &q[b * QK], &d[b], &m[b]);
    for (int64_t t = 0; t < p.n_tokens; ++t) {
      const int8_t* xq = p.q + t * p.q_stride;
      const float* xd = p.d + t * p.d_stride;
      const float* xs = p.sd ? p.sd + t * p.d_stride : nullptr;
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const int isum = dot_i8(&q[b * QK], xq + b * QK, QK);
        acc += d[b] * xd[b] * static_cast<float>(isum);
        if (xs) acc += m[b] * xs[b];
      }
      y[t * ldy + r] = acc;
    }
  }
}

// One k-quant row decoded: values (Q4_K / Q5_K unsigned, Q6_K minus 32), the sub-block scales
// (16 per super-block for Q6_K, 8 for the others) and mins, and the super-block scales.
struct KRow {
  std::vector<int8_t> q;
  std::vector<int> sc, mn;
  std::vector<float> d, dmin;
  void decode(DType t, const uint8_t* row, int64_t cols) {
    const int64_t nb = cols / QK_K;
    const int bb = dtype_info(t).block_bytes;
    q.resize(static_cast<size_t>(cols));
    sc.resize(static_cast<size_t>(nb * 16));
    mn.resize(static_cast<size_t>(nb * 8));
    d.resize(static_cast<size_t>(nb));
    dmin.resize(static_cast<size_t>(nb));
    for (int64_t b = 0; b < nb; ++b) {
      if (t == DType::Q6_K) decode_q6k(row + b * bb, &q[b * QK_K], &sc[b * 16], &d[b]);
      else decode_q45k(t, row + b * bb, &q[b * QK_K], &sc[b * 16], &mn[b * 8], &d[b], &dmin[b]);
    }
  }
  // The exact integer sums of super-block b with one token's Q8_K activations: sum of scale *
  // sub-block dot, and (Q4_K / Q5_K) sum of min * sub-block activation sum.
  void sums(bool six, int64_t b, const int8_t* xq, const int16_t* bs32, int* isum, int* imin) const {
    const int8_t* wb = &q[b * QK_K];
    const int8_t* xb = xq + b * QK_K;
    *isum = *imin = 0;
    if (six) {
      for (int s = 0; s < 16; ++s) *isum += sc[b * 16 + s] * dot_i8(wb + 16 * s, xb + 16 * s, 16);
      return;
    }
    for (int s = 0; s < 8; ++s) {
      *isum += sc[b * 16 + s] * dot_i8(wb + 32 * s, xb + 32 * s, 32);
      *imin += mn[b * 8 + s] * bs32[b * 8 + s];
    }
  }
};

void rows_kquant(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                 int64_t ldy) {
  const int64_t nb = w.cols / QK_K;
  const bool six = w.dtype == DType::Q6_K;
  KRow k;
  for (int64_t r = r0; r < r1; ++r) {
    k.decode(w.dtype, w.row(r), w.cols);
    for (int64_t t = 0; t < p.n_tokens; ++t) {
      const int8_t* xq = p.q + t * p.q_stride;
      const float* xd = p.d + t * p.d_stride;
      const int16_t* bs32 = p.bsum32 + t * p.bsum32_stride;
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        int isum, imin;
        k.sums(six, b, xq, bs32, &isum, &imin);
        acc += k.d[b] * xd[b] * static_cast<float>(isum);
        if (!six) acc -= k.dmin[b] * xd[b] * static_cast<float>(imin);
      }
      y[t * ldy + r] = acc;
    }
  }
}

// Q4_KR16 / Q5_KR16 / Q6_KR16 (dtype.h): the reference for the SIMD kernels, which compute
// the same exact integer sums per (row, super-block) and the same float steps in the same
// order, so every path gives the same bits: acc = fma(float(isum), d * dx, acc), then for
// Q4_K / Q5_K acc = fma(-float(imin), dmin * dx, acc). Each group is deinterleaved first.
void rows_kr16(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
               int64_t ldy) {
  const DType base = r16_base(w.dtype);
  const int64_t nb = w.cols / QK_K;
  const size_t rb = row_bytes(base, w.cols);
  const bool six = base == DType::Q6_K;
  std::vector<uint8_t> rows16(16 * rb);
  KRow k;
  for (int64_t g = r0; g < r1; g += 16) {
    deinterleave_r16(w.dtype, w.row(g), w.cols, rows16.data());
    for (int l = 0; l < 16; ++l) {
      k.decode(base, rows16.data() + l * rb, w.cols);
      for (int64_t t = 0; t < p.n_tokens; ++t) {
        const int8_t* xq = p.q + t * p.q_stride;
        const float* xd = p.d + t * p.d_stride;
        const int16_t* bs32 = p.bsum32 + t * p.bsum32_stride;
        float acc = 0.f;
        for (int64_t b = 0; b < nb; ++b) {
          int isum, imin;
          k.sums(six, b, xq, bs32, &isum, &imin);
          acc = std::fma(static_cast<float>(isum), k.d[b] * xd[b], acc);
          if (!six) acc = std::fma(-static_cast<float>(imin), k.dmin[b] * xd[b], acc);
        }
        y[t * ldy + g + l] = acc;
      }
    }
  }
}

}  // namespace

void prepare_scalar(DType dt, int64_t n_tokens, int64_t cols, Arena& arena, Prepared* out,
                    PrepareJob* job) {
  *job = PrepareJob{};
  switch (dt) {
    case DType::F32: case DType::F16: case DType::BF16:
      job->plain = plain_alloc(n_tokens, cols, 16, arena, out);
      job->plain_stride = out->xf_stride;
      job->fill_plain = fill_plain_copy;
      return;
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
    case DType::Q4_KR16: case DType::Q5_KR16: case DType::Q6_KR16:
      job->layout.block = QK_K;
      job->layout.want_bsums = true;
      break;
    default:
      job->layout.block = QK;
      job->layout.want_sd = dt == DType::Q4_1 || dt == DType::Q5_1;
      break;
  }
  job->quant = true;
  job->bufs = quant_alloc(job->layout, n_tokens, cols, arena, out);
}

void rows_scalar(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                 int64_t ldy) {
  switch (w.dtype) {
    case DType::F32: case DType::F16: case DType::BF16:
      return rows_plain(w, p, r0, r1, y, ldy);
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
      return rows_kquant(w, p, r0, r1, y, ldy);
    case DType::Q4_KR16: case DType::Q5_KR16: case DType::Q6_KR16:
      return rows_kr16(w, p, r0, r1, y, ldy);
    default:
      return rows_legacy(w, p, r0, r1, y, ldy);
  }
}

}  // namespace mx::mmk
