#include "formats/config_files.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/error.h"

namespace mx {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail(path + ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const std::exception& e) {
    fail(path + ": not valid JSON: " + e.what());
  }
}

namespace {

// Reads a required numeric field (dotted path for nested objects), naming it when absent.
template <typename T>
T need(const nlohmann::json& j, const std::string& path, const std::string& key) {
  const nlohmann::json* cur = &j;
  std::string part;
  std::stringstream ks(key);
  while (std::getline(ks, part, '.')) {
    if (!cur->is_object() || !cur->contains(part) || (*cur)[part].is_null())
      fail(path + ": missing required field '" + key + "'");
    cur = &(*cur)[part];
  }
  if (!cur->is_number()) fail(path + ": field '" + key + "' is not a number");
  return cur->get<T>();
}

template <typename T>
T optional(const nlohmann::json& j, const std::string& path, const std::string& key, T dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_number()) fail(path + ": field '" + key + "' is not a number");
  return j[key].get<T>();
}

}  // namespace

ModelConfig read_hf_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  if (j.contains("model_type") && j["model_type"] != "mixtral")
    fail(path + ": model_type is " + j["model_type"].dump() + ", expected \"mixtral\"");
  ModelConfig c;
  c.dim = need<int>(j, path, "hidden_size");
  c.n_layers = need<int>(j, path, "num_hidden_layers");
  c.n_heads = need<int>(j, path, "num_attention_heads");
  c.n_kv_heads = optional<int>(j, path, "num_key_value_heads", c.n_heads);
  c.head_dim = optional<int>(j, path, "head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0);
  c.ffn_dim = need<int>(j, path, "intermediate_size");
  c.n_experts = need<int>(j, path, "num_local_experts");
  c.top_k = need<int>(j, path, "num_experts_per_tok");
  c.vocab = need<int>(j, path, "vocab_size");
  c.rope_theta = optional<float>(j, path, "rope_theta", 1e6f);
  c.norm_eps = need<float>(j, path, "rms_norm_eps");
  c.sliding_window = optional<int>(j, path, "sliding_window", 0);
  c.max_seq_len = optional<int>(j, path, "max_position_embeddings", 32768);
  c.bos_id = optional<int>(j, path, "bos_token_id", 1);
  c.eos_id = optional<int>(j, path, "eos_token_id", 2);
  c.rope_interleaved = false;  // HF's converter permutes q/k rows for rotate-half RoPE
  c.validate(path);
  return c;
}

ModelConfig read_params_json(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  ModelConfig c;
  c.dim = need<int>(j, path, "dim");
  c.n_layers = need<int>(j, path, "n_layers");
  c.n_heads = need<int>(j, path, "n_heads");
  c.n_kv_heads = optional<int>(j, path, "n_kv_heads", c.n_heads);
  c.head_dim = optional<int>(j, path, "head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0);
  c.ffn_dim = need<int>(j, path, "hidden_dim");
  c.vocab = need<int>(j, path, "vocab_size");
  c.norm_eps = need<float>(j, path, "norm_eps");
  c.rope_theta = optional<float>(j, path, "rope_theta", 1e6f);
  c.sliding_window = optional<int>(j, path, "sliding_window", 0);
  c.max_seq_len = optional<int>(j, path, "max_seq_len", 32768);
  c.n_experts = need<int>(j, path, "moe.num_experts");
  c.top_k = need<int>(j, path, "moe.num_experts_per_tok");
  c.rope_interleaved = true;
  c.validate(path);
  return c;
}

}  // namespace mx
