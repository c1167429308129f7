// The k-quant interleaved layouts (Q4_KR16, Q5_KR16, Q6_KR16; dtype.h). Called through
// interleave_r16 / deinterleave_r16 (quant_blocks.h), which take every r16 type.
#pragma once
#include <cstdint>

#include "kernels/dtype.h"

namespace mx {

void interleave_r16k(DType t, const uint8_t* rows16, int64_t cols, uint8_t* group);
void deinterleave_r16k(DType t, const uint8_t* group, int64_t cols, uint8_t* rows16);

}  // namespace mx
