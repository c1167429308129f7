#include "formats/safetensors_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "formats/config_files.h"
#include "formats/error.h"
#include "formats/safetensors.h"

namespace fs = std::filesystem;

namespace mx {

namespace {

// Maps a checkpoint's tensor name to its canonical name, or "" for a tensor we do not use.
// Sets *expert to the expert index for expert tensors, else -1.
using NameMap = std::string (*)(const std::string&, int* expert);

std::string hf_name(const std::string& n, int* expert) {
  static const std::regex layer_re(R"(model\.layers\.(\d+)\.(.*)\.weight)");
  static const std::regex expert_re(R"(block_sparse_moe\.experts\.(\d+)\.(w[123]))");
  *expert = -1;
  if (n == "model.embed_tokens.weight") return "tok_embeddings";
  if (n == "model.norm.weight") return "norm";
  if (n == "lm_head.weight") return "output";
  std::smatch m;
  if (!std::regex_match(n, m, layer_re)) return "";
  const std::string L = "layers." + m[1].str() + ".";
  const std::string rest = m[2].str();
  if (rest == "input_layernorm") return L + "attention_norm";
  if (rest == "post_attention_layernorm") return L + "ffn_norm";
  if (rest == "self_attn.q_proj") return L + "attention.wq";
  if (rest == "self_attn.k_proj") return L + "attention.wk";
  if (rest == "self_attn.v_proj") return L + "attention.wv";
  if (rest == "self_attn.o_proj") return L + "attention.wo";
  if (rest == "block_sparse_moe.gate") return L + "gate";
  std::smatch e;
  if (std::regex_match(rest, e, expert_re)) {
    *expert = std::stoi(e[1].str());
    return L + "experts." + e[1].str() + "." + e[2].str();
  }
  return "";
}

}  // namespace

// Also used by the .pth loader: mistral-inference names are the canonical ones plus suffixes.
std::string mistral_canonical_name(const std::string& n, int* expert) {
  static const std::regex layer_re(R"(layers\.(\d+)\.(.*)\.weight)");
  static const std::regex expert_re(R"(feed_forward\.experts\.(\d+)\.(w[123]))");
  *expert = -1;
  if (n == "tok_embeddings.weight") return "tok_embeddings";
  if (n == "norm.weight") return "norm";
  if (n == "output.weight") return "output";
  std::smatch m;
  if (!std::regex_match(n, m, layer_re)) return "";
  const std::string L = "layers." + m[1].str() + ".";
  const std::string rest = m[2].str();
  if (rest == "attention_norm" || rest == "ffn_norm") return L + rest;
  if (rest == "attention.wq" || rest == "attention.wk" || rest == "attention.wv" ||
      rest == "attention.wo")
    return L + rest;
  if (rest == "feed_forward.gate" || rest == "block_sparse_moe.gate") return L + "gate";
  std::smatch e;
  if (std::regex_match(rest, e, expert_re)) {
    *expert = std::stoi(e[1].str());
    return L + "experts." + e[1].str() + "." + e[2].str();
  }
  return "";
}

namespace {

std::string mistral_name(const std::string& n, int* expert) { return mistral_canonical_name(n, expert); }

void add_file(LoadedModel& m, const std::string& path, NameMap map, const LoadOptions& opts) {
  SafetensorsFile st = open_safetensors(path);
  m.store.files.push_back(st.file);
  for (auto& [name, t] : st.tensors) {
    int expert = -1;
    std::string canon = map(name, &expert);
    if (canon.empty()) continue;
    if (expert >= 0 && !opts.owns_expert(expert, m.config.n_experts)) continue;
    if (m.store.tensors.count(canon)) fail(path + ": tensor " + name + " appears twice");
    t.name = path + ":" + name;
    m.store.tensors[canon] = t;
  }
}

void set_tokenizer(LoadedModel& m, const std::string& dir) {
  const fs::path tok = fs::path(dir) / "tokenizer.model";
  if (fs::exists(tok)) m.tokenizer.model_path = tok.string();
  m.tokenizer.bos_id = m.config.bos_id;
  m.tokenizer.eos_id = m.config.eos_id;
}

}  // namespace

LoadedModel load_hf_checkpoint(const std::string& dir, const LoadOptions& opts) {
  LoadedModel m;
  m.path = dir;
  m.layout = "hf";
  m.store.source = dir;
  m.config = read_hf_config((fs::path(dir) / "config.json").string());
  std::vector<std::string> shards;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::ifstream f(index);
    std::stringstream ss;
    ss << f.rdbuf();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(ss.str());
    } catch (const std::exception& e) {
      fail(index.string() + ": not valid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index.string() + ": missing required field 'weight_map'");
    std::set<std::string> files;
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) fail(index.string() + ": weight_map entry " + name + " is not a string");
      files.insert(file.get<std::string>());
    }
    for (const auto& f : files) shards.push_back((fs::path(dir) / f).string());
  } else if (fs::exists(fs::path(dir) / "model.safetensors")) {
    shards.push_back((fs::path(dir) / "model.safetensors").string());
  } else {
    fail(dir + ": HF checkpoint has neither model.safetensors.index.json nor model.safetensors");
  }
  for (const auto& s : shards) {
    if (!fs::exists(s)) fail(s + ": shard listed in model.safetensors.index.json is missing");
    add_file(m, s, hf_name, opts);
  }
  set_tokenizer(m, dir);
  return m;
}

LoadedModel load_mistral_checkpoint(const std::string& dir, const LoadOptions& opts) {
  LoadedModel m;
  m.path = dir;
  m.layout = "mistral";
  m.store.source = dir;
  m.config = read_params_json((fs::path(dir) / "params.json").string());
  add_file(m, (fs::path(dir) / "consolidated.safetensors").string(), mistral_name, opts);
  set_tokenizer(m, dir);
  return m;
}

}  // namespace mx
