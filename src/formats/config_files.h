// Reading model hyper-parameters from the JSON files checkpoints ship with.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "formats/model_config.h"

namespace mx {

// Parses a JSON file; mx::Error names the path when it cannot be opened or parsed.
nlohmann::json read_json_file(const std::string& path);

// HuggingFace config.json (MixtralForCausalLM / model_type "mixtral"); rotate-half RoPE layout.
ModelConfig read_hf_config(const std::string& path);
// mistral-inference params.json (also the original .pth/.pt releases); interleaved RoPE layout.
// rope_theta defaults to 1e6 when absent (Mixtral's value).
ModelConfig read_params_json(const std::string& path);

}  // namespace mx
