// The hyper-parameters of the tiny test model (`mixtral make-tiny`, tests/data/tiny-mixtral),
// checked the same way by every loader's test; the format-specific fields (RoPE layout,
// tokenizer, token ids) stay in each test.
#pragma once
#include <gtest/gtest.h>

#include "formats/model_config.h"

namespace mx::test {

inline void expect_tiny_dims(const ModelConfig& c) {
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.ffn_dim, 128);
  EXPECT_EQ(c.n_experts, 8);
  EXPECT_EQ(c.top_k, 2);
  EXPECT_EQ(c.vocab, 32000);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
}

}  // namespace mx::test
