// Block decoders against llama.cpp's own output (tests/data/quant-vectors.gguf), hand-packed
// blocks for the types the vectors do not cover, and round trips of the encoders.
#include <gtest/gtest.h>

#include <cmath>
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
  for (DType t : {DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K})
    EXPECT_FALSE(quantize_row(t, x, buf, QK_K)) << dtype_info(t).name;
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
