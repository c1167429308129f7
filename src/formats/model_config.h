// Hyper-parameters of a Mixtral model, read from the checkpoint (config.json, params.json,
// GGUF metadata or our cache manifest). Nothing here is assumed; defaults only where the
// format itself defines one (rope_theta 1e6 for Mixtral when absent).
#pragma once
#include <cstdint>
#include <string>

namespace mx {

struct ModelConfig {
  int dim = 0;          // hidden size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int ffn_dim = 0;      // expert hidden size
  int n_experts = 0;
  int top_k = 0;        // experts per token
  int vocab = 0;
  float rope_theta = 1e6f;
  float norm_eps = 1e-5f;
  int sliding_window = 0;   // 0 = none
  int max_seq_len = 32768;
  bool rope_interleaved = true;  // true: (x0,x1) pairs (Mistral/GGUF); false: rotate-half (HF)
  int bos_id = 1;
  int eos_id = 2;

  // Throws mx::Error naming `source` and the field when a value is missing or inconsistent.
  void validate(const std::string& source) const;
};

std::string to_json_string(const ModelConfig& c);
ModelConfig config_from_json_string(const std::string& s, const std::string& source);

}  // namespace mx
