// The model's weights bound to the kernels' view type, per layer and per expert.
// Small vectors (norm weights) are converted to f32 once; matrices stay where they were mapped.
#pragma once
#include <vector>

#include "formats/loaded_model.h"
#include "kernels/mat_view.h"

namespace mx {

struct ExpertWeights {
  bool present = false;  // false for experts owned by another rank
  MatView w1, w3;        // [ffn, dim]
  MatView w2;            // [dim, ffn]
};

struct LayerWeights {
  std::vector<float> attention_norm, ffn_norm;  // [dim]
  MatView wq, wk, wv;                           // [heads*hd, dim], [kv*hd, dim] x2
  MatView wo;                                   // [dim, heads*hd]
  MatView gate;                                 // [n_experts, dim]
  std::vector<ExpertWeights> experts;           // [n_experts]
};

struct ModelWeights {
  MatView tok_embeddings;   // [vocab, dim]
  std::vector<float> norm;  // [dim]
  MatView output;           // [vocab, dim]
  std::vector<LayerWeights> layers;
};

MatView mat_view(const Tensor& t);
std::vector<float> to_f32(const Tensor& t);
ModelWeights bind_weights(const LoadedModel& m, const LoadOptions& opts);

}  // namespace mx
