// Q4_KR16 / Q5_KR16 / Q6_KR16 (dtype.h): one 16-row group of Q4_K / Q5_K / Q6_K rows to its
// interleaved form and back. Pure byte (and, for Q5_K's high bits, bit) moves: the round trip
// is exact, so a K-quant GGUF runs the interleaved kernels on the very values it stores.
#include <cstring>

#include "kernels/quant_blocks.h"
#include "kernels/quant_r16k.h"

namespace mx {

namespace {

// Moves n bytes between an interleaved chunk and a row's block in direction `to_group`.
inline void mv(bool to_group, uint8_t* g, uint8_t* r, size_t n) {
  if (to_group) std::memcpy(g, r, n);
  else std::memcpy(r, g, n);
}

// The planes shared by Q4_K and Q5_K: quants, d, dmin, the packed scales. qs: the row's qs.
void move_q45(bool to_group, uint8_t* ch, int l, uint8_t* blk, uint8_t* qs) {
  for (int p = 0; p < 4; ++p)
    for (int v = 0; v < 8; ++v) mv(to_group, ch + 512 * p + 64 * v + 4 * l, qs + 32 * p + 4 * v, 4);
  mv(to_group, ch + 2048 + 2 * l, blk, 2);      // d
  mv(to_group, ch + 2080 + 2 * l, blk + 2, 2);  // dmin
  for (int w = 0; w < 3; ++w) mv(to_group, ch + 2112 + 64 * w + 4 * l, blk + 4 + 4 * w, 4);
}

// Q5_K's qh (32 bytes per row, bit s of byte i = high bit of value 32 s + i) <-> per (s, v) a
// 64-bit byte mask over the 16 rows' 4 values.
void move_q5_high(bool to_group, uint8_t* ch, uint8_t* const* qh16) {
  uint8_t* hb = ch + 2304;
  if (to_group) std::memset(hb, 0, 512);
  else
    for (int l = 0; l < 16; ++l) std::memset(qh16[l], 0, 32);
  for (int s = 0; s < 8; ++s)
    for (int v = 0; v < 8; ++v) {
      uint8_t* word = hb + 64 * s + 8 * v;
      for (int l = 0; l < 16; ++l)
        for (int b = 0; b < 4; ++b) {
          const int bit = 4 * l + b;
          uint8_t& q = qh16[l][4 * v + b];
          if (to_group) word[bit / 8] |= static_cast<uint8_t>(((q >> s) & 1) << (bit % 8));
          else q |= static_cast<uint8_t>(((word[bit / 8] >> (bit % 8)) & 1) << s);
        }
    }
}

void move_q6(bool to_group, uint8_t* ch, int l, uint8_t* blk) {
  uint8_t* ql = blk;
  uint8_t* qh = blk + 128;
  for (int n = 0; n < 2; ++n) {
    uint8_t* half = ch + 1536 * n;
    for (int p = 0; p < 2; ++p)
      for (int v = 0; v < 8; ++v)
        mv(to_group, half + 512 * p + 64 * v + 4 * l, ql + 64 * n + 32 * p + 4 * v, 4);
    for (int v = 0; v < 8; ++v) mv(to_group, half + 1024 + 64 * v + 4 * l, qh + 32 * n + 4 * v, 4);
  }
  for (int i = 0; i < 8; ++i) mv(to_group, ch + 3072 + 32 * i + 2 * l, blk + 192 + 2 * i, 2);
  mv(to_group, ch + 3328 + 2 * l, blk + 208, 2);
}

void r16k_move(DType t, uint8_t* group, uint8_t* rows16, int64_t cols, bool to_group) {
  const DType base = r16_base(t);
  const int64_t nsb = cols / QK_K;
  const size_t bb = static_cast<size_t>(dtype_info(base).block_bytes), rb = row_bytes(base, cols);
  for (int64_t b = 0; b < nsb; ++b) {
    uint8_t* ch = group + 16 * bb * static_cast<size_t>(b);
    uint8_t* qh16[16];
    for (int l = 0; l < 16; ++l) {
      uint8_t* blk = rows16 + l * rb + bb * static_cast<size_t>(b);
      switch (t) {
        case DType::Q4_KR16: move_q45(to_group, ch, l, blk, blk + 16); break;
        case DType::Q5_KR16: move_q45(to_group, ch, l, blk, blk + 48); qh16[l] = blk + 16; break;
        default: move_q6(to_group, ch, l, blk); break;
      }
    }
    if (t == DType::Q5_KR16) move_q5_high(to_group, ch, qh16);
  }
}

}  // namespace

void interleave_r16k(DType t, const uint8_t* rows16, int64_t cols, uint8_t* group) {
  r16k_move(t, group, const_cast<uint8_t*>(rows16), cols, true);  // rows16 is only read
}

void deinterleave_r16k(DType t, const uint8_t* group, int64_t cols, uint8_t* rows16) {
  r16k_move(t, const_cast<uint8_t*>(group), rows16, cols, false);  // group is only read
}

}  // namespace mx
