#include "formats/model_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/json_input.h"

namespace mx {

void ModelConfig::validate(const std::string& source) const {
  auto need = [&](bool ok, const char* field, const std::string& why) {
    if (!ok) fail(source + ": bad config field '" + field + "': " + why);
  };
  auto in = [&](int v, IntRange r, const char* field) {
    need(v >= r.lo && v <= r.hi, field,
         std::to_string(v) + " out of range [" + std::to_string(r.lo) + ", " + std::to_string(r.hi) + "]");
  };
  namespace R = config_range;
  in(dim, R::kDim, "dim");
  in(n_layers, R::kLayers, "n_layers");
  in(n_heads, R::kHeads, "n_heads");
  in(n_kv_heads, R::kHeads, "n_kv_heads");
  need(n_heads % n_kv_heads == 0, "n_kv_heads", "must divide n_heads (" + std::to_string(n_heads) + ")");
  need(head_dim > 0 && head_dim % 2 == 0, "head_dim", "must be even and > 0");
  in(head_dim, R::kHeadDim, "head_dim");
  in(ffn_dim, R::kFfnDim, "ffn_dim");
  in(n_experts, R::kExperts, "n_experts");
  need(top_k > 0 && top_k <= n_experts, "top_k", "must be in [1, n_experts]");
  in(vocab, R::kVocab, "vocab");
  need(std::isfinite(rope_theta) && rope_theta > 0, "rope_theta", "must be finite and > 0");
  need(std::isfinite(norm_eps) && norm_eps > 0, "norm_eps", "must be finite and > 0");
  in(sliding_window, R::kSlidingWindow, "sliding_window");
  in(max_seq_len, R::kSeqLen, "max_seq_len");
  in(bos_id, R::kTokenId, "bos_id");
  in(eos_id, R::kTokenId, "eos_id");
}

std::string to_json_string(const ModelConfig& c) {
  nlohmann::json j = {{"dim", c.dim},           {"n_layers", c.n_layers},
                      {"n_heads", c.n_heads},   {"n_kv_heads", c.n_kv_heads},
                      {"head_dim", c.head_dim}, {"ffn_dim", c.ffn_dim},
                      {"n_experts", c.n_experts}, {"top_k", c.top_k},
                      {"vocab", c.vocab},       {"rope_theta", c.rope_theta},
                      {"norm_eps", c.norm_eps}, {"sliding_window", c.sliding_window},
                      {"max_seq_len", c.max_seq_len}, {"rope_interleaved", c.rope_interleaved},
                      {"bos_id", c.bos_id},     {"eos_id", c.eos_id}};
  return j.dump();
}

ModelConfig config_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) fail(source + ": config is not a JSON object");
  ModelConfig c;
  auto has = [&](const char* k) {
    if (!j.contains(k)) fail(source + ": config missing required field '" + k + "'");
    return j.at(k);
  };
  auto get_int = [&](const char* k, int& v, IntRange r) {
    v = static_cast<int>(json_int_in_range(has(k), r.lo, r.hi, source, std::string("config field '") + k + "'"));
  };
  auto get_float = [&](const char* k, float& v) {
    const nlohmann::json& x = has(k);
    if (!x.is_number() || !std::isfinite(x.get<double>()) || std::fabs(x.get<double>()) > 3.0e38)
      fail(source + ": config field '" + k + "' must be a finite float, not " + json_excerpt(x));
    v = x.get<float>();
  };
  namespace R = config_range;
  get_int("dim", c.dim, R::kDim); get_int("n_layers", c.n_layers, R::kLayers);
  get_int("n_heads", c.n_heads, R::kHeads); get_int("n_kv_heads", c.n_kv_heads, R::kHeads);
  get_int("head_dim", c.head_dim, R::kHeadDim); get_int("ffn_dim", c.ffn_dim, R::kFfnDim);
  get_int("n_experts", c.n_experts, R::kExperts); get_int("top_k", c.top_k, R::kExperts);
  get_int("vocab", c.vocab, R::kVocab);
  get_float("rope_theta", c.rope_theta); get_float("norm_eps", c.norm_eps);
  get_int("sliding_window", c.sliding_window, R::kSlidingWindow);
  get_int("max_seq_len", c.max_seq_len, R::kSeqLen);
  const nlohmann::json& ri = has("rope_interleaved");
  if (!ri.is_boolean()) fail(source + ": config field 'rope_interleaved' has the wrong type");
  c.rope_interleaved = ri.get<bool>();
  get_int("bos_id", c.bos_id, R::kTokenId); get_int("eos_id", c.eos_id, R::kTokenId);
  c.validate(source);
  return c;
}

}  // namespace mx
