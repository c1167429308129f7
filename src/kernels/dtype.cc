#include "kernels/dtype.h"

#include <cctype>
#include <string>

namespace mx {

namespace {
// Block sizes follow ggml's block_* structs (scales are fp16 unless noted).
constexpr DTypeInfo kInfo[] = {
    {"f32", 1, 4, false},    {"f16", 1, 2, false},    {"bf16", 1, 2, false},
    {"q8_0", 32, 34, true},  {"q4_0", 32, 18, true},  {"q4_1", 32, 20, true},
    {"q5_0", 32, 22, true},  {"q5_1", 32, 24, true},  {"q4_k", 256, 144, true},
    {"q5_k", 256, 176, true}, {"q6_k", 256, 210, true}, {"q8_0r16", 32, 34, true},
    {"q4_0r16", 32, 18, true}, {"q4_kr16", 256, 144, true}, {"q5_kr16", 256, 176, true},
    {"q6_kr16", 256, 210, true}, {"q8_k", 256, 292, true},
    {"i32", 1, 4, false},    {"i64", 1, 8, false},    {"u8", 1, 1, false},
};
static_assert(sizeof(kInfo) / sizeof(kInfo[0]) == static_cast<size_t>(DType::Count));
}  // namespace

namespace {
constexpr DType kR16Pairs[][2] = {{DType::Q8_0, DType::Q8_0R16}, {DType::Q4_0, DType::Q4_0R16},
                                  {DType::Q4_K, DType::Q4_KR16}, {DType::Q5_K, DType::Q5_KR16},
                                  {DType::Q6_K, DType::Q6_KR16}};
}  // namespace

DType r16_base(DType t) {
  for (const auto& p : kR16Pairs)
    if (p[1] == t) return p[0];
  return t;
}

DType r16_of(DType t) {
  for (const auto& p : kR16Pairs)
    if (p[0] == t) return p[1];
  return t;
}

const DTypeInfo& dtype_info(DType t) { return kInfo[static_cast<int>(t)]; }

bool parse_dtype(std::string_view s, DType* out) {
  std::string lower(s);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (int i = 0; i < static_cast<int>(DType::Count); ++i) {
    if (kInfo[i].name == lower) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

}  // namespace mx
