#include "formats/config_files.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/error.h"
#include "formats/json_input.h"
#include "formats/mapped_file.h"

namespace mx {

// Real configs are a few KB; the cap keeps a huge or endless file from being slurped.
constexpr uint64_t kMaxConfigBytes = uint64_t{16} << 20;

nlohmann::json read_json_file(const std::string& path) {
  return parse_untrusted_json(read_regular_file(path, kMaxConfigBytes), path);
}

namespace {

// The field at a dotted path (nested objects), or nullptr when absent or null.
const nlohmann::json* find(const nlohmann::json& j, const std::string& key) {
  const nlohmann::json* cur = &j;
  std::string part;
  std::stringstream ks(key);
  while (std::getline(ks, part, '.')) {
    if (!cur->is_object() || !cur->contains(part) || (*cur)[part].is_null()) return nullptr;
    cur = &(*cur)[part];
  }
  return cur;
}

// Integer fields are range-checked as 64-bit values before they become ints, so a 2^31
// vocab_size is reported under its own name instead of wrapping to a negative number.
int need_int(const nlohmann::json& j, const std::string& path, const std::string& key, IntRange r) {
  const nlohmann::json* v = find(j, key);
  if (v == nullptr) fail(path + ": missing required field '" + key + "'");
  if (!v->is_number()) fail(path + ": field '" + key + "' is not a number");
  return static_cast<int>(json_int_in_range(*v, r.lo, r.hi, path, key));
}

int optional_int(const nlohmann::json& j, const std::string& path, const std::string& key, IntRange r,
                 int dflt) {
  return find(j, key) == nullptr ? dflt : need_int(j, path, key, r);
}

float to_float(const nlohmann::json& v, const std::string& path, const std::string& key) {
  if (!v.is_number()) fail(path + ": field '" + key + "' is not a number");
  const double d = v.get<double>();
  if (!std::isfinite(d) || std::fabs(d) > 3.0e38)
    fail(path + ": field '" + key + "' " + json_excerpt(v) + " does not fit a float");
  return static_cast<float>(d);
}

float need_float(const nlohmann::json& j, const std::string& path, const std::string& key) {
  const nlohmann::json* v = find(j, key);
  if (v == nullptr) fail(path + ": missing required field '" + key + "'");
  return to_float(*v, path, key);
}

float optional_float(const nlohmann::json& j, const std::string& path, const std::string& key, float dflt) {
  const nlohmann::json* v = find(j, key);
  return v == nullptr ? dflt : to_float(*v, path, key);
}

}  // namespace

ModelConfig read_hf_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  if (!j.is_object()) fail(path + ": not a JSON object");
  if (j.contains("model_type") && j["model_type"] != "mixtral")
    fail(path + ": model_type is " + json_excerpt(j["model_type"]) + ", expected \"mixtral\"");
  namespace R = config_range;
  ModelConfig c;
  c.dim = need_int(j, path, "hidden_size", R::kDim);
  c.n_layers = need_int(j, path, "num_hidden_layers", R::kLayers);
  c.n_heads = need_int(j, path, "num_attention_heads", R::kHeads);
  c.n_kv_heads = optional_int(j, path, "num_key_value_heads", R::kHeads, c.n_heads);
  c.head_dim = optional_int(j, path, "head_dim", R::kHeadDim, c.dim / c.n_heads);
  c.ffn_dim = need_int(j, path, "intermediate_size", R::kFfnDim);
  c.n_experts = need_int(j, path, "num_local_experts", R::kExperts);
  c.top_k = need_int(j, path, "num_experts_per_tok", R::kExperts);
  c.vocab = need_int(j, path, "vocab_size", R::kVocab);
  c.rope_theta = optional_float(j, path, "rope_theta", 1e6f);
  c.norm_eps = need_float(j, path, "rms_norm_eps");
  c.sliding_window = optional_int(j, path, "sliding_window", R::kSlidingWindow, 0);
  c.max_seq_len = optional_int(j, path, "max_position_embeddings", R::kSeqLen, 32768);
  c.bos_id = optional_int(j, path, "bos_token_id", R::kTokenId, 1);
  c.eos_id = optional_int(j, path, "eos_token_id", R::kTokenId, 2);
  c.rope_interleaved = false;  // HF's converter permutes q/k rows for rotate-half RoPE
  c.validate(path);
  return c;
}

ModelConfig read_params_json(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  if (!j.is_object()) fail(path + ": not a JSON object");
  namespace R = config_range;
  ModelConfig c;
  c.dim = need_int(j, path, "dim", R::kDim);
  c.n_layers = need_int(j, path, "n_layers", R::kLayers);
  c.n_heads = need_int(j, path, "n_heads", R::kHeads);
  c.n_kv_heads = optional_int(j, path, "n_kv_heads", R::kHeads, c.n_heads);
  c.head_dim = optional_int(j, path, "head_dim", R::kHeadDim, c.dim / c.n_heads);
  c.ffn_dim = need_int(j, path, "hidden_dim", R::kFfnDim);
  c.vocab = need_int(j, path, "vocab_size", R::kVocab);
  c.norm_eps = need_float(j, path, "norm_eps");
  c.rope_theta = optional_float(j, path, "rope_theta", 1e6f);
  c.sliding_window = optional_int(j, path, "sliding_window", R::kSlidingWindow, 0);
  c.max_seq_len = optional_int(j, path, "max_seq_len", R::kSeqLen, 32768);
  c.n_experts = need_int(j, path, "moe.num_experts", R::kExperts);
  c.top_k = need_int(j, path, "moe.num_experts_per_tok", R::kExperts);
  c.rope_interleaved = true;
  c.validate(path);
  return c;
}

}  // namespace mx
