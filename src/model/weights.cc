#include "model/weights.h"

#include "kernels/quant_blocks.h"

namespace mx {

MatView mat_view(const Tensor& t) {
  MatView v;
  v.dtype = t.dtype;
  v.data = t.data;
  v.rows = t.rows();
  v.cols = t.cols();
  v.stride = t.row_stride();
  return v;
}

std::vector<float> to_f32(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  for (int64_t r = 0; r < t.rows(); ++r) dequantize_row(t.dtype, t.row(r), out.data() + r * t.cols(), t.cols());
  return out;
}

ModelWeights bind_weights(const LoadedModel& m, const LoadOptions& opts) {
  const ModelConfig& c = m.config;
  const TensorStore& s = m.store;
  ModelWeights w;
  w.tok_embeddings = mat_view(s.get("tok_embeddings"));
  w.norm = to_f32(s.get("norm"));
  w.output = mat_view(s.get("output"));
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    lw.attention_norm = to_f32(s.get(L + "attention_norm"));
    lw.ffn_norm = to_f32(s.get(L + "ffn_norm"));
    lw.wq = mat_view(s.get(L + "attention.wq"));
    lw.wk = mat_view(s.get(L + "attention.wk"));
    lw.wv = mat_view(s.get(L + "attention.wv"));
    lw.wo = mat_view(s.get(L + "attention.wo"));
    lw.gate = mat_view(s.get(L + "gate"));
    lw.experts.resize(static_cast<size_t>(c.n_experts));
    for (int e = 0; e < c.n_experts; ++e) {
      if (!opts.owns_expert(e, c.n_experts)) continue;
      const std::string E = L + "experts." + std::to_string(e) + ".";
      ExpertWeights& ew = lw.experts[static_cast<size_t>(e)];
      ew.present = true;
      ew.w1 = mat_view(s.get(E + "w1"));
      ew.w3 = mat_view(s.get(E + "w3"));
      ew.w2 = mat_view(s.get(E + "w2"));
    }
  }
  return w;
}

}  // namespace mx
