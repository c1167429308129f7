// RoPE and causal grouped-query attention over the per-slot KV cache.
#pragma once
#include <vector>

#include "formats/model_config.h"
#include "model/kv_cache.h"

namespace mx {

class ThreadPool;

struct TokenPos {
  int slot, pos;
};

// cos/sin per token row and frequency: [T][head_dim/2] each.
struct RopeTable {
  int half = 0;
  std::vector<float> cos, sin;
};

RopeTable make_rope_table(const std::vector<TokenPos>& tp, const ModelConfig& c);
// Rotates x [T, n_heads*head_dim] in place, in the layout the weights use
// (interleaved pairs, or rotate-half for HF-permuted q/k rows).
void apply_rope(const RopeTable& rt, const ModelConfig& c, float* x, int n_heads, int T);
// out[t] = softmax(q_t·K^T / sqrt(hd)) V over positions ≤ pos_t of the token's slot (and inside
// the sliding window when set); K/V heads are shared by n_heads/n_kv_heads query heads.
void attention(const KvCache& kv, int layer, const std::vector<TokenPos>& tp,
               const ModelConfig& c, const float* q, float* out, ThreadPool& pool);

}  // namespace mx
