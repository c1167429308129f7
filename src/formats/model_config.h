// Hyper-parameters of a Mixtral model, read from the checkpoint (config.json, params.json,
// GGUF metadata or our cache manifest). Nothing here is assumed; defaults only where the
// format itself defines one (rope_theta 1e6 for Mixtral when absent).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace mx {

// Accepted values of the integer fields. Readers check a value against its range as a 64-bit
// number before narrowing it to int, and validate() checks them again whatever the source;
// the bounds are far above any released model but keep every product of them in int64.
struct IntRange {
  int64_t lo, hi;
};
namespace config_range {
inline constexpr IntRange kDim{1, int64_t{1} << 17};
inline constexpr IntRange kLayers{1, 4096};
inline constexpr IntRange kHeads{1, 4096};
inline constexpr IntRange kHeadDim{1, 4096};
inline constexpr IntRange kFfnDim{1, int64_t{1} << 20};
inline constexpr IntRange kExperts{1, 1024};
inline constexpr IntRange kVocab{1, int64_t{1} << 24};
inline constexpr IntRange kSlidingWindow{0, INT32_MAX};
inline constexpr IntRange kSeqLen{1, INT32_MAX};
inline constexpr IntRange kTokenId{-1, int64_t{1} << 24};
}  // namespace config_range

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
// The object to_json_string writes (the cache manifest's "config"); throws naming `source`.
ModelConfig config_from_json(const nlohmann::json& j, const std::string& source);

}  // namespace mx
