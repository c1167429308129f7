// Block decoders against llama.cpp's own output (tests/data/quant-vectors.gguf), hand-packed
// blocks for the types the vectors do not cover, and round trips of the encoders.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "kernels/half.h"
#include "kernels/quant_blocks.h"
#include "test_util.h"

namespace mx {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

std::vector<float> dequant(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  for (int64_t r = 0; r < t.rows(); ++r) dequantize_row(t.dtype, t.row(r), out.data() + r * t.cols(), t.cols());
  return out;
}

std::vector<float> random_row(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = nd(rng);
  return x;
}

// Every TYPE.NAME tensor in the vectors file decodes bit-exactly to TYPE.NAME.dequant.
TEST(QuantBlocks, MatchesLlamaCppReferenceVectors) {
  const GgufFile g = GgufFile::open(test::data_path("quant-vectors.gguf"));
  std::set<DType> covered;
  int pairs = 0;
  for (const GgufTensorInfo& info : g.tensor_infos) {
    const std::string& name = info.name;
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ".dequant") == 0) continue;
    SCOPED_TRACE(name);
    const Tensor q = g.tensor(name);
    const Tensor ref = g.tensor(name + ".dequant");
    ASSERT_EQ(ref.dtype, DType::F32);
    ASSERT_EQ(ref.shape, q.shape);
    // The TYPE prefix of the name must be the tensor's real type.
    DType named;
    ASSERT_TRUE(parse_dtype(name.substr(0, name.find('.')), &named));
    EXPECT_EQ(named, q.dtype);
    const std::vector<float> got = dequant(q);
    const std::vector<float> want = dequant(ref);
    size_t mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (bits(got[i]) != bits(want[i])) {
        if (mismatches++ < 5) ADD_FAILURE() << "element " << i << ": got " << got[i] << ", want " << want[i];
      }
    }
    EXPECT_EQ(mismatches, 0u);
    covered.insert(q.dtype);
    ++pairs;
  }
  EXPECT_GE(pairs, 7);
  for (DType t : {DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q5_K, DType::Q6_K})
    EXPECT_TRUE(covered.count(t)) << dtype_info(t).name << " not covered by the vectors";
}

// The legacy types missing from the vectors, packed by hand from the documented layout:
// element j < 16 in the low nibble of qs[j], element j + 16 in its high nibble, bit j of qh
// the 5th bit of element j. Scales are powers of two, so the expected values are exact.
int code4(int j) { return (j * 7 + 3) % 16; }
int code5(int j) { return (j * 13 + 5) % 32; }

TEST(QuantBlocks, Q4_1HandPacked) {
  BlockQ4_1 b[2];
  const float d[2] = {0.5f, 0.25f}, m[2] = {-2.0f, 3.0f};
  for (int i = 0; i < 2; ++i) {
    b[i].d = f32_to_f16(d[i]);
    b[i].m = f32_to_f16(m[i]);
    for (int j = 0; j < 16; ++j) b[i].qs[j] = static_cast<uint8_t>(code4(j) | (code4(j + 16) << 4));
  }
  float y[64];
  dequantize_row(DType::Q4_1, b, y, 64);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[i * 32 + j], code4(j) * d[i] + m[i]) << i << "," << j;
}

void pack_q5(int j0, uint8_t* qs, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) {
    const int lo = code5(j + j0), hi = code5(j + j0 + 16);
    qs[j] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
    h |= static_cast<uint32_t>(lo >> 4) << j;
    h |= static_cast<uint32_t>(hi >> 4) << (j + 16);
  }
  std::memcpy(qh, &h, 4);
}

TEST(QuantBlocks, Q5_0HandPacked) {
  BlockQ5_0 b[2];
  const float d[2] = {0.125f, -4.0f};
  for (int i = 0; i < 2; ++i) {
    b[i].d = f32_to_f16(d[i]);
    pack_q5(i * 3, b[i].qs, b[i].qh);
  }
  float y[64];
  dequantize_row(DType::Q5_0, b, y, 64);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[i * 32 + j], (code5(j + i * 3) - 16) * d[i]) << i << "," << j;
}

TEST(QuantBlocks, Q5_1HandPacked) {
  BlockQ5_1 b[2];
  const float d[2] = {0.0625f, 2.0f}, m[2] = {-1.0f, 0.5f};
  for (int i = 0; i < 2; ++i) {
    b[i].d = f32_to_f16(d[i]);
    b[i].m = f32_to_f16(m[i]);
    pack_q5(i * 5, b[i].qs, b[i].qh);
  }
  float y[64];
  dequantize_row(DType::Q5_1, b, y, 64);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[i * 32 + j], code5(j + i * 5) * d[i] + m[i]) << i << "," << j;
}

// Q5_0 and Q5_1 as llama.cpp wrote them (its q4_k_m fallback for 64-wide rows) must decode to
// within one quantization step of the same weights in the f16 file.
void expect_close_to_f16(const std::string& name, DType want_type, int levels) {
  const GgufFile q = GgufFile::open(test::data_path("tiny-mixtral/gguf/tiny-mixtral-q4_k_m.gguf"));
  const GgufFile f = GgufFile::open(test::data_path("tiny-mixtral/gguf/tiny-mixtral-f16.gguf"));
  const Tensor tq = q.tensor(name), tf = f.tensor(name);
  ASSERT_EQ(tq.dtype, want_type);
  ASSERT_EQ(tf.dtype, DType::F16);
  const std::vector<float> a = dequant(tq), b = dequant(tf);
  ASSERT_EQ(a.size(), b.size());
  double sum_err = 0, sum_step = 0;
  for (size_t blk = 0; blk < a.size() / 32; ++blk) {
    float lo = b[blk * 32], hi = lo;
    for (int j = 0; j < 32; ++j) lo = std::min(lo, b[blk * 32 + j]), hi = std::max(hi, b[blk * 32 + j]);
    const float step = (hi - lo) / levels;
    for (int j = 0; j < 32; ++j) {
      const float err = std::fabs(a[blk * 32 + j] - b[blk * 32 + j]);
      ASSERT_LE(err, step * 1.01f + 1e-6f) << name << " block " << blk << " element " << j;
      sum_err += err;
      sum_step += step;
    }
  }
  EXPECT_LT(sum_err, 0.35 * sum_step);  // rounding, not just clamping: about a quarter step
}

TEST(QuantBlocks, Q5_0AgreesWithF16Weights) { expect_close_to_f16("token_embd.weight", DType::Q5_0, 31); }
TEST(QuantBlocks, Q5_1AgreesWithF16Weights) { expect_close_to_f16("blk.0.attn_output.weight", DType::Q5_1, 31); }

TEST(QuantBlocks, Q8_KDecode) {
  BlockQ8_K b{};
  b.d = -0.75f;
  for (int j = 0; j < QK_K; ++j) b.qs[j] = static_cast<int8_t>(j - 128);
  std::vector<float> y(QK_K);
  dequantize_row(DType::Q8_K, &b, y.data(), QK_K);
  for (int j = 0; j < QK_K; ++j) EXPECT_EQ(y[j], -0.75f * (j - 128));
}

TEST(QuantBlocks, PlainTypesRoundTrip) {
  const std::vector<float> x = random_row(96, 7);
  std::vector<uint8_t> buf(96 * 4);
  std::vector<float> y(96);
  ASSERT_TRUE(quantize_row(DType::F32, x.data(), buf.data(), 96));
  dequantize_row(DType::F32, buf.data(), y.data(), 96);
  EXPECT_EQ(x, y);
  ASSERT_TRUE(quantize_row(DType::F16, x.data(), buf.data(), 96));
  dequantize_row(DType::F16, buf.data(), y.data(), 96);
  for (int i = 0; i < 96; ++i) EXPECT_EQ(y[i], f16_to_f32(f32_to_f16(x[i])));
  ASSERT_TRUE(quantize_row(DType::BF16, x.data(), buf.data(), 96));
  dequantize_row(DType::BF16, buf.data(), y.data(), 96);
  for (int i = 0; i < 96; ++i) EXPECT_EQ(y[i], bf16_to_f32(f32_to_bf16(x[i])));
}

TEST(QuantBlocks, UnsupportedEncodersReturnFalse) {
  float x[QK_K] = {};
  uint8_t buf[512];
  // Interleaved types are made from their base type's rows (interleave_r16), not encoded.
  for (DType t : {DType::Q4_1, DType::Q8_0R16, DType::Q4_0R16})
    EXPECT_FALSE(quantize_row(t, x, buf, QK_K)) << dtype_info(t).name;
}

// llama.cpp's q4_k_m file falls back to Q5_0 / Q5_1 for its 64-wide rows; encoding the f16
// file's values (the same weights) must give its bytes exactly.
void expect_encodes_like_llama_cpp(const std::string& name, DType t) {
  const GgufFile q = GgufFile::open(test::data_path("tiny-mixtral/gguf/tiny-mixtral-q4_k_m.gguf"));
  const GgufFile f = GgufFile::open(test::data_path("tiny-mixtral/gguf/tiny-mixtral-f16.gguf"));
  const Tensor tq = q.tensor(name), tf = f.tensor(name);
  ASSERT_EQ(tq.dtype, t);
  const std::vector<float> x = dequant(tf);
  std::vector<uint8_t> got(tq.nbytes());
  for (int64_t r = 0; r < tf.rows(); ++r)
    ASSERT_TRUE(quantize_row(t, x.data() + r * tf.cols(), got.data() + r * tq.row_stride(), tf.cols()));
  EXPECT_EQ(0, std::memcmp(got.data(), tq.data, got.size())) << name;
}

TEST(QuantBlocks, Q5_0EncodesLikeLlamaCpp) { expect_encodes_like_llama_cpp("token_embd.weight", DType::Q5_0); }
TEST(QuantBlocks, Q5_1EncodesLikeLlamaCpp) {
  expect_encodes_like_llama_cpp("blk.0.attn_output.weight", DType::Q5_1);
  expect_encodes_like_llama_cpp("blk.1.attn_output.weight", DType::Q5_1);
}

// ggml's Q8_0: d = amax/127 and q = roundf(x / d), halves rounded away from zero.
TEST(QuantBlocks, Q8_0EncodesLikeGgml) {
  float x[32];
  x[0] = -127.0f;  // amax 127: d = 1 exactly
  for (int j = 1; j < 32; ++j) x[j] = static_cast<float>(j - 16) + 0.5f;
  BlockQ8_0 b;
  ASSERT_TRUE(quantize_row(DType::Q8_0, x, &b, 32));
  EXPECT_EQ(b.d, f32_to_f16(1.0f));
  EXPECT_EQ(b.qs[0], -127);
  for (int j = 1; j < 32; ++j) EXPECT_EQ(b.qs[j], static_cast<int>(std::round(x[j]))) << j;
  EXPECT_EQ(b.qs[16], 1);    //  0.5 ->  1, not to even
  EXPECT_EQ(b.qs[15], -1);   // -0.5 -> -1
  EXPECT_EQ(b.qs[18], 3);    //  2.5 ->  3
}

TEST(QuantBlocks, Q8_0RoundTripErrorBound) {
  const int64_t n = 32 * 64;
  const std::vector<float> x = random_row(n, 11, 0.05f);
  std::vector<BlockQ8_0> b(n / 32);
  std::vector<float> y(n);
  ASSERT_TRUE(quantize_row(DType::Q8_0, x.data(), b.data(), n));
  dequantize_row(DType::Q8_0, b.data(), y.data(), n);
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[blk * 32 + j]));
    const float d = amax / 127;
    // Half a step, plus the fp16 rounding of d times |q| <= 127.
    for (int j = 0; j < 32; ++j) ASSERT_LE(std::fabs(x[blk * 32 + j] - y[blk * 32 + j]), d * 0.57f);
  }
  // An all-zero block encodes d = 0 and decodes to zeros.
  std::vector<float> z(32, 0.0f);
  ASSERT_TRUE(quantize_row(DType::Q8_0, z.data(), b.data(), 32));
  EXPECT_EQ(b[0].d, 0);
  dequantize_row(DType::Q8_0, b.data(), y.data(), 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], 0.0f);
}

// ggml's Q4_0: d = max / -8 for the signed value of largest magnitude, q = min(15, (int)(x/d +
// 8.5)): that maximum hits code 0 exactly, halves round up, the far side clamps to 15.
TEST(QuantBlocks, Q4_0EncodesLikeGgml) {
  float x[32] = {};
  x[0] = -8.0f;  // d = 1
  x[1] = 7.9f;   // 16.4 -> clamped to 15
  x[2] = 0.5f;   // 9.0 -> 9
  x[3] = -0.5f;  // 8.0 -> 8
  x[4] = -2.5f;  // 6.0 -> 6
  x[5] = 3.4f;   // 11.9 -> 11
  x[16] = 1.0f;  // high nibble of byte 0
  BlockQ4_0 b;
  ASSERT_TRUE(quantize_row(DType::Q4_0, x, &b, 32));
  EXPECT_EQ(b.d, f32_to_f16(1.0f));
  auto code = [&](int j) { return j < 16 ? b.qs[j] & 15 : b.qs[j - 16] >> 4; };
  EXPECT_EQ(code(0), 0);
  EXPECT_EQ(code(1), 15);
  EXPECT_EQ(code(2), 9);
  EXPECT_EQ(code(3), 8);
  EXPECT_EQ(code(4), 6);
  EXPECT_EQ(code(5), 11);
  EXPECT_EQ(code(6), 8);
  EXPECT_EQ(code(16), 9);
}

TEST(QuantBlocks, Q4_0RoundTripErrorBound) {
  const int64_t n = 32 * 64;
  const std::vector<float> x = random_row(n, 12, 0.05f);
  std::vector<BlockQ4_0> b(n / 32);
  std::vector<float> y(n);
  ASSERT_TRUE(quantize_row(DType::Q4_0, x.data(), b.data(), n));
  dequantize_row(DType::Q4_0, b.data(), y.data(), n);
  double sum_err = 0, sum_d = 0;
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[blk * 32 + j]));
    const float d = amax / 8;
    // At most one step (the side opposite the maximum clamps from +8 to +7), usually half.
    for (int j = 0; j < 32; ++j) {
      const float err = std::fabs(x[blk * 32 + j] - y[blk * 32 + j]);
      ASSERT_LE(err, d * 1.01f);
      sum_err += err;
      sum_d += d;
    }
  }
  EXPECT_LT(sum_err / sum_d, 0.3);
}

TEST(QuantBlocks, Q8_KEncodesWithBsums) {
  const int64_t n = QK_K * 4;
  std::vector<float> x = random_row(n, 13, 2.0f);
  std::fill(x.begin() + 2 * QK_K, x.begin() + 3 * QK_K, 0.0f);  // an all-zero super-block
  std::vector<BlockQ8_K> b(4);
  std::memset(b.data(), 0x55, b.size() * sizeof(BlockQ8_K));  // garbage must be overwritten
  ASSERT_TRUE(quantize_row(DType::Q8_K, x.data(), b.data(), n));
  std::vector<float> y(n);
  dequantize_row(DType::Q8_K, b.data(), y.data(), n);
  for (int blk = 0; blk < 4; ++blk) {
    SCOPED_TRACE(blk);
    const float* xb = x.data() + blk * QK_K;
    int arg = 0;
    for (int j = 1; j < QK_K; ++j)
      if (std::fabs(xb[j]) > std::fabs(xb[arg])) arg = j;
    for (int g = 0; g < QK_K / 16; ++g) {
      int sum = 0;
      for (int k = 0; k < 16; ++k) sum += b[blk].qs[g * 16 + k];
      EXPECT_EQ(b[blk].bsums[g], sum) << "group " << g;
    }
    if (blk == 2) {
      EXPECT_EQ(b[blk].d, 0.0f);
      for (int j = 0; j < QK_K; ++j) EXPECT_EQ(b[blk].qs[j], 0);
      continue;
    }
    // The largest magnitude maps to -127 (d has the opposite sign of that element).
    EXPECT_EQ(b[blk].qs[arg], -127);
    EXPECT_FLOAT_EQ(b[blk].d, -xb[arg] / 127.0f);
    const float step = std::fabs(b[blk].d);
    for (int j = 0; j < QK_K; ++j) ASSERT_LE(std::fabs(xb[j] - y[blk * QK_K + j]), step * 0.5001f);
  }
}

TEST(QuantBlocks, GetScaleMinK4Unpacks6BitFields) {
  // Pack 8 scales and 8 mins (6 bits each) the way ggml's Q4_K encoder does, then unpack.
  uint8_t sc[8], mn[8], q[12] = {};
  for (int j = 0; j < 8; ++j) sc[j] = static_cast<uint8_t>((j * 11 + 7) & 63), mn[j] = static_cast<uint8_t>((j * 23 + 60) & 63);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      q[j] = sc[j];
      q[j + 4] = mn[j];
    } else {
      q[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
      q[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      q[j] |= static_cast<uint8_t>((mn[j] >> 4) << 6);
    }
  }
  for (int j = 0; j < 8; ++j) {
    uint8_t d, m;
    get_scale_min_k4(j, q, &d, &m);
    EXPECT_EQ(d, sc[j]) << j;
    EXPECT_EQ(m, mn[j]) << j;
  }
}

// Q8_0R16 / Q4_0R16 hold Q8_0's / Q4_0's bytes reordered: the round trip is exact, row 21
// (group 1, lane 5) has quant byte `qbyte` of block 2 where the layout says and its scale
// after the group's quants, and dequantize_rows decodes any row range through its group exactly
// as the base type decodes the row (dequantize_row refuses a lone interleaved row).
void check_r16(DType t, int qbyte, uint32_t seed) {
  const DType base = r16_base(t);
  const int64_t cols = 96, rows = 32, nb = cols / 32;
  const int qb = t == DType::Q8_0R16 ? 32 : 16, bb = dtype_info(base).block_bytes;
  const size_t rb = row_bytes(base, cols);
  std::vector<uint8_t> q(rows * rb), g(q.size()), back(q.size());
  for (int64_t r = 0; r < rows; ++r) {
    const auto x = random_row(cols, seed + static_cast<uint32_t>(r));
    ASSERT_TRUE(quantize_row(base, x.data(), q.data() + r * rb, cols));
  }
  for (int64_t gi = 0; gi < rows / 16; ++gi) {
    interleave_r16(t, q.data() + gi * 16 * rb, cols, g.data() + gi * 16 * rb);
    deinterleave_r16(t, g.data() + gi * 16 * rb, cols, back.data() + gi * 16 * rb);
  }
  EXPECT_EQ(0, std::memcmp(q.data(), back.data(), q.size()));
  const uint8_t* grp = g.data() + 16 * rb;
  EXPECT_EQ(grp[16 * qb * 2 + 64 * (qbyte / 4) + 4 * 5 + qbyte % 4], q[21 * rb + 2 * bb + 2 + qbyte]);
  EXPECT_EQ(0, std::memcmp(grp + 16 * qb * nb + 32 * 2 + 2 * 5, q.data() + 21 * rb + 2 * bb, 2));
  std::vector<float> a(static_cast<size_t>(11 * cols)), b(a.size());
  dequantize_rows(base, q.data(), cols, 13, 11, a.data());
  dequantize_rows(t, g.data(), cols, 13, 11, b.data());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  std::vector<float> one(cols);
  EXPECT_THROW(dequantize_row(t, g.data(), one.data(), cols), std::invalid_argument);
}

// ---- k-quant encoders ---------------------------------------------------------------------

// Encodes n values of k-quant type t and decodes them back.
std::vector<float> kquant_round_trip(DType t, const std::vector<float>& x, std::vector<uint8_t>* bytes = nullptr) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> b(row_bytes(t, n));
  EXPECT_TRUE(quantize_row(t, x.data(), b.data(), n)) << dtype_info(t).name;
  std::vector<float> y(x.size());
  dequantize_row(t, b.data(), y.data(), n);
  if (bytes) *bytes = b;
  return y;
}

double rel_rms(const std::vector<float>& x, const std::vector<float>& y) {
  double e = 0, s = 0;
  for (size_t i = 0; i < x.size(); ++i) e += (double(x[i]) - y[i]) * (double(x[i]) - y[i]), s += double(x[i]) * x[i];
  return std::sqrt(e / s);
}

// Each quant must be the nearest code for its sub-block's decoded scale (and min): a value
// lands within half a step, or at the end code when it lies beyond the range. A misplaced
// nibble or high bit, or a scale packed into the wrong field, breaks this.
void expect_nearest_codes(DType t, const std::vector<float>& x, const std::vector<uint8_t>& b) {
  const int64_t nb = static_cast<int64_t>(x.size()) / QK_K;
  const int nmax = t == DType::Q4_K ? 15 : 31;  // Q4_K / Q5_K only
  for (int64_t i = 0; i < nb; ++i) {
    std::vector<float> y(QK_K);
    const uint8_t* blk = b.data() + i * dtype_info(t).block_bytes;
    dequantize_row(t, blk, y.data(), QK_K);
    for (int e = 0; e < QK_K; ++e) {
      float step, lo, hi;  // the sub-block's step and its representable range
      if (t == DType::Q6_K) {
        BlockQ6_K q;
        std::memcpy(&q, blk, sizeof q);
        step = f16_to_f32(q.d) * q.scales[e / 16];
        lo = std::min(-32 * step, 31 * step), hi = std::max(-32 * step, 31 * step);
        step = std::fabs(step);
      } else {
        BlockQ4_K q;  // Q5_K starts with the same d, dmin and scales
        std::memcpy(&q, blk, sizeof q);
        uint8_t sc, m;
        get_scale_min_k4(e / 32, q.scales, &sc, &m);
        step = f16_to_f32(q.d) * sc;
        lo = -f16_to_f32(q.dmin) * m, hi = lo + nmax * step;
      }
      const float xv = x[i * QK_K + e], yv = y[e];
      const float tol = 1e-5f * (std::fabs(xv) + std::fabs(lo) + std::fabs(hi));
      const float want = std::fabs(xv - std::clamp(xv, lo, hi)) + step / 2;
      ASSERT_LE(std::fabs(xv - yv), want + tol) << dtype_info(t).name << " block " << i << " element " << e;
    }
  }
}

const DType kKQuants[] = {DType::Q4_K, DType::Q5_K, DType::Q6_K};

TEST(QuantBlocks, KQuantsRoundTripRandomRows) {
  // 64 super-blocks whose sub-blocks differ in scale, as in trained weights.
  std::vector<float> x = random_row(QK_K * 64, 21, 1.0f);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-3, 1);
  for (size_t s = 0; s < x.size() / 32; ++s) {
    const float k = 0.05f * std::pow(10.0f, u(rng));
    for (int j = 0; j < 32; ++j) x[32 * s + j] *= k;
  }
  // ggml's reference encoder gives 0.0756, 0.0426 and 0.0182 on these rows (ours 0.0721,
  // 0.0353, 0.0175): ours must not be worse.
  const double bound[] = {0.0750, 0.0420, 0.0180};
  for (int k = 0; k < 3; ++k) {
    SCOPED_TRACE(dtype_info(kKQuants[k]).name);
    std::vector<uint8_t> b;
    const std::vector<float> y = kquant_round_trip(kKQuants[k], x, &b);
    EXPECT_LT(rel_rms(x, y), bound[k]);
    expect_nearest_codes(kKQuants[k], x, b);
  }
}

TEST(QuantBlocks, KQuantsRoundTripStructuredRows) {
  for (DType t : kKQuants) {
    SCOPED_TRACE(dtype_info(t).name);
    // All zero: exact zeros.
    std::vector<float> z(QK_K, 0.0f);
    for (float v : kquant_round_trip(t, z)) ASSERT_EQ(v, 0.0f);
    // Constant rows, either sign: within the fp16 precision of the scales.
    for (float c : {0.37f, -2.5f}) {
      std::vector<float> x(QK_K, c);
      for (float v : kquant_round_trip(t, x)) ASSERT_NEAR(v, c, std::fabs(c) * 2e-3f) << c;
    }
    // A ramp over [-1, 1] across the super-block, all-positive values (no use for the min),
    // and a row where one sub-block is 100x larger than the rest: every code still nearest.
    std::vector<float> ramp(QK_K), pos(QK_K), spike = random_row(QK_K * 2, 31, 0.01f);
    for (int i = 0; i < QK_K; ++i) ramp[i] = -1.0f + 2.0f * i / (QK_K - 1), pos[i] = 0.5f + 0.25f * std::sin(0.3f * i);
    for (int j = 64; j < 96; ++j) spike[j] *= 100.0f;
    for (const auto* x : {&ramp, &pos, &spike}) {
      std::vector<uint8_t> b;
      const std::vector<float> y = kquant_round_trip(t, *x, &b);
      expect_nearest_codes(t, *x, b);
    }
    // At most ggml's error on them (ramp 0.0172, 0.0123, 0.0100; positive 0.0238, 0.0120,
    // 0.0103 for Q4_K, Q5_K, Q6_K).
    const int k = t == DType::Q4_K ? 0 : t == DType::Q5_K ? 1 : 2;
    const double ramp_bound[] = {0.0172, 0.0123, 0.0100}, pos_bound[] = {0.0238, 0.0120, 0.0104};
    EXPECT_LT(rel_rms(ramp, kquant_round_trip(t, ramp)), ramp_bound[k]);
    EXPECT_LT(rel_rms(pos, kquant_round_trip(t, pos)), pos_bound[k]);
  }
}

// Values the decoder produces from blocks whose sub-blocks use their whole code range (and
// whose largest scale and min codes are the maxima, as an encoder makes them) are encoded back
// to exactly those values: the encoder inverts the reference decoder.
TEST(QuantBlocks, KQuantsInvertTheDecoder) {
  std::mt19937 rng(77);
  auto code = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (DType t : kKQuants) {
    SCOPED_TRACE(dtype_info(t).name);
    const int nb = 16, bb = dtype_info(t).block_bytes;
    std::vector<uint8_t> blocks(static_cast<size_t>(nb * bb));
    for (int i = 0; i < nb; ++i) {
      uint8_t* blk = blocks.data() + i * bb;
      if (t == DType::Q6_K) {
        BlockQ6_K q{};
        q.d = f32_to_f16(0.001f * code(1, 100));
        int8_t L[QK_K];
        for (int s = 0; s < 16; ++s) {
          q.scales[s] = static_cast<int8_t>(s == i % 16 ? -128 : code(-127, 127));
          for (int l = 0; l < 16; ++l) L[16 * s + l] = static_cast<int8_t>(l == 3 ? -32 : code(-32, 31));
        }
        for (int h = 0; h < 2; ++h)
          for (int l = 0; l < 32; ++l) {
            const int8_t* Lh = L + 128 * h;
            const int a = Lh[l] + 32, b = Lh[l + 32] + 32, c = Lh[l + 64] + 32, d = Lh[l + 96] + 32;
            q.ql[64 * h + l] = static_cast<uint8_t>((a & 15) | ((c & 15) << 4));
            q.ql[64 * h + l + 32] = static_cast<uint8_t>((b & 15) | ((d & 15) << 4));
            q.qh[32 * h + l] = static_cast<uint8_t>((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6));
          }
        std::memcpy(blk, &q, sizeof q);
      } else {
        const int nmax = t == DType::Q4_K ? 15 : 31;
        uint8_t ls[8], lm[8], L[QK_K];
        for (int j = 0; j < 8; ++j) {
          ls[j] = static_cast<uint8_t>(j == i % 8 ? 63 : code(1, 63));
          lm[j] = static_cast<uint8_t>(j == (i + 3) % 8 ? 63 : code(0, 63));
          for (int l = 0; l < 32; ++l) L[32 * j + l] = static_cast<uint8_t>(l == 5 ? 0 : l == 9 ? nmax : code(0, nmax));
        }
        uint8_t sc[12];
        for (int j = 0; j < 4; ++j) {
          sc[j] = static_cast<uint8_t>(ls[j] | ((ls[j + 4] >> 4) << 6));
          sc[j + 4] = static_cast<uint8_t>(lm[j] | ((lm[j + 4] >> 4) << 6));
          sc[j + 8] = static_cast<uint8_t>((ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4));
        }
        const uint16_t d = f32_to_f16(0.0007f * code(1, 100)), dmin = f32_to_f16(0.0003f * code(1, 100));
        if (t == DType::Q4_K) {
          BlockQ4_K q{};
          q.d = d, q.dmin = dmin;
          std::memcpy(q.scales, sc, 12);
          for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) q.qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
          std::memcpy(blk, &q, sizeof q);
        } else {
          BlockQ5_K q{};
          q.d = d, q.dmin = dmin;
          std::memcpy(q.scales, sc, 12);
          for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) {
              const int a = L[64 * c + l], b = L[64 * c + 32 + l];
              q.qs[32 * c + l] = static_cast<uint8_t>((a & 15) | ((b & 15) << 4));
              q.qh[l] = static_cast<uint8_t>(q.qh[l] | ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1)));
            }
          std::memcpy(blk, &q, sizeof q);
        }
      }
    }
    std::vector<float> y(static_cast<size_t>(nb) * QK_K);
    dequantize_row(t, blocks.data(), y.data(), nb * QK_K);
    const std::vector<float> z = kquant_round_trip(t, y);
    size_t mismatches = 0;
    for (size_t i = 0; i < y.size(); ++i)
      if (y[i] != z[i] && mismatches++ < 5) ADD_FAILURE() << "element " << i << ": " << y[i] << " -> " << z[i];
    EXPECT_EQ(mismatches, 0u);
  }
}

// The same for llama.cpp's own blocks (tests/data/quant-vectors.gguf), whose sub-blocks need
// not span their code range: re-encoding their decoded values reproduces every value.
TEST(QuantBlocks, KQuantsReencodeLlamaCppBlocksExactly) {
  const GgufFile g = GgufFile::open(test::data_path("quant-vectors.gguf"));
  int checked = 0;
  for (const GgufTensorInfo& info : g.tensor_infos) {
    const Tensor q = g.tensor(info.name);
    if (q.dtype != DType::Q4_K && q.dtype != DType::Q5_K && q.dtype != DType::Q6_K) continue;
    SCOPED_TRACE(info.name);
    const std::vector<float> y = dequant(q);
    const std::vector<float> z = kquant_round_trip(q.dtype, y);
    size_t mismatches = 0;
    for (size_t i = 0; i < y.size(); ++i)
      if (y[i] != z[i] && mismatches++ < 5) ADD_FAILURE() << "element " << i << ": " << y[i] << " -> " << z[i];
    EXPECT_EQ(mismatches, 0u);
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

// tests/data/kquant-ref.gguf (scripts/make_kquant_ref.cc): heavy-tailed rows and llama.cpp's
// reference encodings of them. Ours must be at least as close to the source.
TEST(QuantBlocks, KQuantsNoWorseThanLlamaCpp) {
  const GgufFile g = GgufFile::open(test::data_path("kquant-ref.gguf"));
  const Tensor src = g.tensor("source");
  ASSERT_EQ(src.dtype, DType::F32);
  const std::vector<float> x = dequant(src);
  for (DType t : kKQuants) {
    const std::string name = std::string(t == DType::Q4_K ? "Q4_K" : t == DType::Q5_K ? "Q5_K" : "Q6_K") + ".source";
    SCOPED_TRACE(name);
    const Tensor ref = g.tensor(name);
    ASSERT_EQ(ref.dtype, t);
    const std::vector<float> theirs = dequant(ref);
    const std::vector<float> ours = kquant_round_trip(t, x);
    const double r_ours = rel_rms(x, ours), r_theirs = rel_rms(x, theirs);
    EXPECT_LE(r_ours, r_theirs);
    std::printf("%s: relative RMS error ours %.5f, llama.cpp %.5f\n", name.c_str(), r_ours, r_theirs);
    // And in the weighted error both searches minimize: Q4_K/Q5_K weigh each value by its
    // sub-block's RMS plus its magnitude, Q6_K by its square. (Not block by block: ggml's
    // result depends on its build's use of fused multiply-add, which can flip close picks.)
    double eo = 0, et = 0;
    for (size_t s = 0; s < x.size(); s += 32) {
      double s2 = 0;
      for (int l = 0; l < 32; ++l) s2 += double(x[s + l]) * x[s + l];
      for (int l = 0; l < 32; ++l) {
        const size_t i = s + l;
        const double w = t == DType::Q6_K ? double(x[i]) * x[i] : std::sqrt(s2 / 32) + std::fabs(x[i]);
        eo += w * (ours[i] - double(x[i])) * (ours[i] - double(x[i]));
        et += w * (theirs[i] - double(x[i])) * (theirs[i] - double(x[i]));
      }
    }
    EXPECT_LE(eo, et);
  }
}

TEST(QuantBlocks, R16LayoutsInterleaveExactly) {
  check_r16(DType::Q8_0R16, 13, 100);
  check_r16(DType::Q4_0R16, 9, 300);
}

// The k-quant r16 layouts (dtype.h) hold the base rows' bytes reordered: random blocks (every
// bit pattern is valid) survive the round trip exactly, dequantize_rows through the groups
// equals the base type's, and for row 21 (group 1, lane 5) of super-block 1 the bytes sit where
// dtype.h says.
void check_r16k(DType t, uint32_t seed) {
  const DType base = r16_base(t);
  const int64_t cols = 512, rows = 32;
  const size_t rb = row_bytes(base, cols), bb = dtype_info(base).block_bytes;
  std::mt19937 rng(seed);
  std::vector<uint8_t> q(rows * rb), g(q.size()), back(q.size());
  for (auto& b : q) b = static_cast<uint8_t>(rng());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < cols / 256; ++b) {  // finite f16 scales
      uint8_t* blk = q.data() + r * rb + b * bb;
      for (int off : base == DType::Q6_K ? std::vector<int>{208} : std::vector<int>{0, 2}) {
        const uint16_t h = f32_to_f16(0.01f + 0.001f * static_cast<float>(rng() % 100));
        std::memcpy(blk + off, &h, 2);
      }
    }
  for (int64_t gi = 0; gi < rows / 16; ++gi) {
    interleave_r16(t, q.data() + gi * 16 * rb, cols, g.data() + gi * 16 * rb);
    deinterleave_r16(t, g.data() + gi * 16 * rb, cols, back.data() + gi * 16 * rb);
  }
  EXPECT_EQ(0, std::memcmp(q.data(), back.data(), q.size()));
  const uint8_t* row = q.data() + 21 * rb + bb;      // row 21, super-block 1
  const uint8_t* ch = g.data() + 16 * rb + 16 * bb;  // group 1, chunk 1
  if (base == DType::Q6_K) {
    EXPECT_EQ(ch[1536 + 512 + 64 * 3 + 4 * 5 + 2], row[64 + 32 + 14]);  // ql[110]
    EXPECT_EQ(ch[1536 + 1024 + 64 * 7 + 4 * 5 + 1], row[128 + 32 + 29]);  // qh[61]
    EXPECT_EQ(ch[3072 + 32 * 6 + 2 * 5 + 1], row[192 + 13]);              // scales[13]
    EXPECT_EQ(0, std::memcmp(ch + 3328 + 2 * 5, row + 208, 2));           // d
  } else {
    const int qs = base == DType::Q5_K ? 48 : 16;
    EXPECT_EQ(ch[512 * 2 + 64 * 6 + 4 * 5 + 3], row[qs + 64 + 27]);       // qs[91]
    EXPECT_EQ(0, std::memcmp(ch + 2080 + 2 * 5, row + 2, 2));             // dmin
    EXPECT_EQ(ch[2112 + 64 * 2 + 4 * 5 + 1], row[4 + 9]);                 // scales[9]
    if (base == DType::Q5_K) {  // high bit of value 32 * 6 + 13: qh[13] bit 6
      const uint64_t word = [&] { uint64_t v; std::memcpy(&v, ch + 2304 + 64 * 6 + 8 * 3, 8); return v; }();
      EXPECT_EQ((word >> (4 * 5 + 1)) & 1, (row[16 + 13] >> 6) & 1u);
    }
  }
  std::vector<float> a(static_cast<size_t>(11 * cols)), b(a.size());
  dequantize_rows(base, q.data(), cols, 13, 11, a.data());
  dequantize_rows(t, g.data(), cols, 13, 11, b.data());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

TEST(QuantBlocks, KR16LayoutsInterleaveExactly) {
  check_r16k(DType::Q4_KR16, 400);
  check_r16k(DType::Q5_KR16, 500);
  check_r16k(DType::Q6_KR16, 600);
}

}  // namespace
}  // namespace mx
