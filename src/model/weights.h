// The model's weights bound to the kernels' view type, per layer and per expert.
// Small vectors (norm weights) are converted to f32 once; matrices stay where they were mapped,
// except row-major Q8_0 / Q4_0 / Q4_K / Q5_K / Q6_K ones, which are interleaved into a copy
// (bind_weights).
#pragma once
#include <memory>
#include <vector>

#include "formats/expert_split.h"
#include "formats/loaded_model.h"
#include "kernels/mat_view.h"

namespace mx {

class ThreadPool;

struct ExpertWeights {
  bool present = false;  // false for experts owned by another rank
  MatView w1, w3;        // [ffn, dim]
  MatView w2;            // [dim, ffn]
  // Split over ranks (more ranks than experts, formats/expert_split.h): this rank holds hidden
  // rows [hid.lo, hid.hi) of w1/w3 and output rows [out.lo, out.hi) of w2 (all its columns).
  bool split = false;
  RowSlice hid, out;
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
  std::vector<std::shared_ptr<uint8_t>> owned;  // matrices interleaved at bind time
};

MatView mat_view(const Tensor& t);
std::vector<float> to_f32(const Tensor& t);
// With opts.interleave, row-major Q8_0 / Q4_0 / Q4_K / Q5_K / Q6_K matrices (2-D, whole 16-row
// groups, not the embedding table) are converted to their r16 copies (the same bytes reordered; split
// over `pool` when given), and their mapped source pages are dropped, so resident memory stays
// one copy of the weights. Only experts this rank owns are touched.
ModelWeights bind_weights(const LoadedModel& m, const LoadOptions& opts, ThreadPool* pool = nullptr);

}  // namespace mx
