#include "server/choice_stream.h"

#include <cstdio>

namespace mx::server {

using nlohmann::json;

namespace {

bool valid_utf8(const std::string& s) {
  size_t need = 0;
  for (unsigned char c : s) {
    if (need) {
      if ((c & 0xC0) != 0x80) return false;
      --need;
    } else if (c >= 0x80) {
      if (c >= 0xC2 && c <= 0xDF) need = 1;
      else if (c >= 0xE0 && c <= 0xEF) need = 2;
      else if (c >= 0xF0 && c <= 0xF4) need = 3;
      else return false;
    }
  }
  return need == 0;
}

}  // namespace

ChoiceStream::ChoiceStream(const Tokenizer& tok, const std::vector<std::string>& texts, const GenerationRequest& g,
                           std::shared_ptr<const RequestHook> hook, std::shared_ptr<const RequestHook> prompt_hook)
    : tok_(tok), texts_(texts), g_(g), hook_(std::move(hook)), prompt_hook_(prompt_hook ? std::move(prompt_hook) : hook_),
      ts_(tok, g.stop) {}

std::string ChoiceStream::token_string(int id) const {
  if (tok_.is_control(id) || id == tok_.unk_id()) return tok_.piece(id);
  const std::string& t = texts_[static_cast<size_t>(id)];
  if (valid_utf8(t)) return t;
  // Part of a character: OpenAI's notation for it.
  std::string out = "bytes:";
  char b[8];
  for (unsigned char c : t) {
    std::snprintf(b, sizeof b, "\\x%02x", c);
    out += b;
  }
  return out;
}

json ChoiceStream::bytes_of(int id) const {
  json a = json::array();
  const std::string t = tok_.is_control(id) || id == tok_.unk_id() ? tok_.piece(id) : texts_[static_cast<size_t>(id)];
  for (unsigned char c : t) a.push_back(static_cast<int>(c));
  return a;
}

std::string ChoiceStream::start() {
  if (!g_.echo) return {};
  std::string text;
  for (size_t i = 0; i < g_.prompt.size(); ++i) {
    const size_t offset = ts_.decoded_chars();
    text += ts_.prime({g_.prompt[i]});
    if (g_.logprobs >= 0 && prompt_hook_)
      items_.push_back({g_.prompt[i], i > 0, i > 0 ? prompt_hook_->prompt_entry(i) : TokenLogprob{}, offset});
  }
  return text;
}

std::string ChoiceStream::push(const std::vector<int>& tokens) {
  if (g_.score_only) return {};
  std::string out;
  for (int t : tokens) {
    const size_t index = generated_++;
    const size_t offset = ts_.decoded_chars();
    const int before = ts_.tokens();
    out += ts_.push({t});
    if (ts_.tokens() == before) break;  // after a stop string: not part of the choice
    // EOS ends the text and is not listed, as OpenAI lists only tokens of the text.
    if (g_.logprobs >= 0 && hook_ && !tok_.is_control(t)) items_.push_back({t, true, hook_->generated(index), offset});
  }
  return out;
}

std::string ChoiceStream::finish() { return ts_.finish(); }

json ChoiceStream::take_logprobs() {
  if (g_.logprobs < 0) return nullptr;
  std::vector<Item> items;
  items.swap(items_);
  if (g_.chat) {
    json content = json::array();
    for (const Item& it : items) {
      json alts = json::array();
      for (const auto& [id, lp] : it.lp.top)
        alts.push_back({{"token", token_string(id)}, {"logprob", lp}, {"bytes", bytes_of(id)}});
      content.push_back({{"token", token_string(it.token)},
                         {"logprob", it.lp.logprob},
                         {"bytes", bytes_of(it.token)},
                         {"top_logprobs", alts}});
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (const Item& it : items) {
    tokens.push_back(token_string(it.token));
    offsets.push_back(it.offset);
    if (!it.scored) {
      lps.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    lps.push_back(it.lp.logprob);
    json top = json::object();
    for (const auto& [id, lp] : it.lp.top) top[token_string(id)] = lp;
    tops.push_back(top);
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

}  // namespace mx::server
