#include "formats/model_config.h"

#include <nlohmann/json.hpp>

#include "formats/error.h"

namespace mx {

void ModelConfig::validate(const std::string& source) const {
  auto need = [&](bool ok, const char* field, const std::string& why) {
    if (!ok) fail(source + ": bad config field '" + field + "': " + why);
  };
  need(dim > 0, "dim", "must be > 0");
  need(n_layers > 0, "n_layers", "must be > 0");
  need(n_heads > 0, "n_heads", "must be > 0");
  need(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "n_kv_heads",
       "must divide n_heads (" + std::to_string(n_heads) + ")");
  need(head_dim > 0 && head_dim % 2 == 0, "head_dim", "must be even and > 0");
  need(ffn_dim > 0, "ffn_dim", "must be > 0");
  need(n_experts > 0, "n_experts", "must be > 0");
  need(top_k > 0 && top_k <= n_experts, "top_k", "must be in [1, n_experts]");
  need(vocab > 0, "vocab", "must be > 0");
  need(rope_theta > 0, "rope_theta", "must be > 0");
  need(norm_eps > 0, "norm_eps", "must be > 0");
  need(sliding_window >= 0, "sliding_window", "must be >= 0");
  need(max_seq_len > 0, "max_seq_len", "must be > 0");
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

ModelConfig config_from_json_string(const std::string& s, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(s);
  } catch (const std::exception& e) {
    fail(source + ": config is not valid JSON: " + e.what());
  }
  ModelConfig c;
  auto get = [&](const char* k, auto& v) {
    if (!j.contains(k)) fail(source + ": config missing required field '" + k + "'");
    try {
      v = j.at(k).get<std::remove_reference_t<decltype(v)>>();
    } catch (const std::exception&) {
      fail(source + ": config field '" + std::string(k) + "' has the wrong type");
    }
  };
  get("dim", c.dim); get("n_layers", c.n_layers); get("n_heads", c.n_heads);
  get("n_kv_heads", c.n_kv_heads); get("head_dim", c.head_dim); get("ffn_dim", c.ffn_dim);
  get("n_experts", c.n_experts); get("top_k", c.top_k); get("vocab", c.vocab);
  get("rope_theta", c.rope_theta); get("norm_eps", c.norm_eps);
  get("sliding_window", c.sliding_window); get("max_seq_len", c.max_seq_len);
  get("rope_interleaved", c.rope_interleaved); get("bos_id", c.bos_id); get("eos_id", c.eos_id);
  c.validate(source);
  return c;
}

}  // namespace mx
