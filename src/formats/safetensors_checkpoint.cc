#include "formats/safetensors_checkpoint.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string_view>

#include "formats/config_files.h"
#include "formats/error.h"
#include "formats/file_probe.h"
#include "formats/json_input.h"
#include "formats/safetensors.h"

namespace fs = std::filesystem;

namespace mx {

namespace {

// Tensor names come from the file, so they are matched by hand in one pass: a backtracking
// regex (libstdc++ recurses per character) overflowed the stack on a 26k-character name.

// The decimal index at the start of `s`, up to the next '.': its digits in *digits (empty when
// there are none or more than 9, so the value always fits an int) and the rest after the dot.
bool take_index(std::string_view s, std::string_view* digits, std::string_view* rest) {
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i == 0 || i == s.size() || s[i] != '.') return false;
  *digits = s.substr(0, i);
  *rest = s.substr(i + 1);
  return true;
}

bool eat(std::string_view* s, std::string_view prefix) {
  if (s->substr(0, prefix.size()) != prefix) return false;
  s->remove_prefix(prefix.size());
  return true;
}

// A checkpoint name "<layer_prefix>L.<rest>.weight" split into its layer digits and <rest>.
bool split_layer(std::string_view n, std::string_view layer_prefix, std::string_view* layer,
                 std::string_view* rest) {
  if (!eat(&n, layer_prefix) || !take_index(n, layer, &n)) return false;
  constexpr std::string_view kSuffix = ".weight";
  if (n.size() <= kSuffix.size() || n.substr(n.size() - kSuffix.size()) != kSuffix) return false;
  *rest = n.substr(0, n.size() - kSuffix.size());
  return true;
}

// "<experts_prefix>E.w1|w2|w3" -> canonical "experts.E.wN" with *expert = E. Throws naming the
// file and tensor when E does not fit (an index of 2^31 used to end in a bare "stoi").
std::string expert_part(std::string_view rest, std::string_view experts_prefix, int* expert,
                        const std::string& file, const std::string& name) {
  std::string_view digits, proj;
  if (!eat(&rest, experts_prefix) || !take_index(rest, &digits, &proj)) return "";
  if (proj != "w1" && proj != "w2" && proj != "w3") return "";
  if (digits.size() > 4 || (digits.size() > 1 && digits[0] == '0'))
    fail(file + ": tensor " + name + ": expert index " + std::string(digits.substr(0, 24)) +
         (digits.size() > 24 ? "..." : "") + " is not a valid expert number");
  *expert = 0;
  for (char c : digits) *expert = *expert * 10 + (c - '0');
  return "experts." + std::string(digits) + "." + std::string(proj);
}

}  // namespace

std::string hf_canonical_name(const std::string& n, int* expert, const std::string& file) {
  *expert = -1;
  if (n == "model.embed_tokens.weight") return "tok_embeddings";
  if (n == "model.norm.weight") return "norm";
  if (n == "lm_head.weight") return "output";
  std::string_view layer, rest;
  if (!split_layer(n, "model.layers.", &layer, &rest)) return "";
  const std::string L = "layers." + std::string(layer) + ".";
  if (rest == "input_layernorm") return L + "attention_norm";
  if (rest == "post_attention_layernorm") return L + "ffn_norm";
  if (rest == "self_attn.q_proj") return L + "attention.wq";
  if (rest == "self_attn.k_proj") return L + "attention.wk";
  if (rest == "self_attn.v_proj") return L + "attention.wv";
  if (rest == "self_attn.o_proj") return L + "attention.wo";
  if (rest == "block_sparse_moe.gate") return L + "gate";
  const std::string e = expert_part(rest, "block_sparse_moe.experts.", expert, file, n);
  return e.empty() ? "" : L + e;
}

std::string mistral_canonical_name(const std::string& n, int* expert, const std::string& file) {
  *expert = -1;
  if (n == "tok_embeddings.weight") return "tok_embeddings";
  if (n == "norm.weight") return "norm";
  if (n == "output.weight") return "output";
  std::string_view layer, rest;
  if (!split_layer(n, "layers.", &layer, &rest)) return "";
  const std::string L = "layers." + std::string(layer) + ".";
  if (rest == "attention_norm" || rest == "ffn_norm") return L + std::string(rest);
  if (rest == "attention.wq" || rest == "attention.wk" || rest == "attention.wv" ||
      rest == "attention.wo")
    return L + std::string(rest);
  if (rest == "feed_forward.gate" || rest == "block_sparse_moe.gate") return L + "gate";
  const std::string e = expert_part(rest, "feed_forward.experts.", expert, file, n);
  return e.empty() ? "" : L + e;
}

namespace {

// Maps a checkpoint's tensor name to its canonical name, or "" for a tensor we do not use.
using NameMap = std::string (*)(const std::string& name, int* expert, const std::string& file);

void add_file(LoadedModel& m, const std::string& path, NameMap map, const LoadOptions& opts) {
  SafetensorsFile st = open_safetensors(path);
  m.store.files.push_back(st.file);
  for (auto& [name, t] : st.tensors) {
    int expert = -1;
    std::string canon = map(name, &expert, path);
    if (canon.empty()) continue;
    if (expert >= m.config.n_experts)
      fail(path + ": tensor " + name + ": expert " + std::to_string(expert) + " is outside the " +
           std::to_string(m.config.n_experts) + " experts of the config");
    if (expert >= 0 && !opts.owns_expert(expert, m.config.n_experts)) continue;
    if (m.store.tensors.count(canon)) fail(path + ": tensor " + name + " appears twice");
    t.name = path + ":" + name;
    m.store.tensors[canon] = t;
  }
}

void set_tokenizer(LoadedModel& m, const std::string& dir) {
  const fs::path tok = fs::path(dir) / "tokenizer.model";
  if (path_exists(tok)) {
    // SentencePiece would block reading a FIFO; refuse anything but a file here.
    if (!is_regular_path(tok)) fail(tok.string() + ": not a regular file");
    m.tokenizer.model_path = tok.string();
  }
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
  if (path_exists(index)) {
    const nlohmann::json j = read_json_file(index.string());
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index.string() + ": missing required field 'weight_map'");
    std::set<std::string> files;
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string())
        fail(index.string() + ": weight_map entry " + json_excerpt(name) + " is not a string");
      // Shards live next to the index: a path elsewhere is not a checkpoint's doing.
      const std::string f = file.get<std::string>();
      if (f.empty() || f.size() > kMaxTensorNameBytes || f.find('/') != std::string::npos || f[0] == '.')
        fail(index.string() + ": weight_map entry " + json_excerpt(name) + " names " + json_excerpt(f) +
             ", which is not a plain file name in the checkpoint folder");
      files.insert(f);
    }
    for (const auto& f : files) shards.push_back((fs::path(dir) / f).string());
  } else if (path_exists(fs::path(dir) / "model.safetensors")) {
    shards.push_back((fs::path(dir) / "model.safetensors").string());
  } else {
    fail(dir + ": HF checkpoint has neither model.safetensors.index.json nor model.safetensors");
  }
  for (const auto& s : shards) {
    if (!path_exists(s)) fail(s + ": shard listed in model.safetensors.index.json is missing");
    add_file(m, s, hf_canonical_name, opts);
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
  add_file(m, (fs::path(dir) / "consolidated.safetensors").string(), mistral_canonical_name, opts);
  set_tokenizer(m, dir);
  return m;
}

}  // namespace mx
