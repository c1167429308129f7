#include "runtime/scoring.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

#include "formats/error.h"
#include "model/forward.h"

namespace mx {

PositionScore score_logits(const float* logits, int vocab, int top_n) {
  PositionScore p;
  top_n = std::min(top_n, vocab);
  std::vector<int> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + top_n, idx.end(), [&](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int i = 0; i < top_n; ++i) p.top.push_back({idx[static_cast<size_t>(i)], logits[idx[static_cast<size_t>(i)]]});
  const float mx = *std::max_element(logits, logits + vocab);
  double s = 0;
  for (int i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(logits[i]) - mx);
  p.lse = mx + std::log(s);
  return p;
}

std::vector<float> sequence_logits(Model& m, const std::vector<int>& tokens, DType kv_dtype,
                                   ThreadPool& pool) {
  if (tokens.empty()) fail("nothing to score: the token list is empty");
  KvCache kv(m.config.n_layers, m.config.n_kv_heads * m.config.head_dim, m.config.max_seq_len,
             kv_dtype);
  kv.reset(0);
  SeqChunk chunk;
  chunk.slot = 0;
  chunk.tokens = tokens;
  chunk.all_logits = true;
  return forward(m, kv, {chunk}, pool);
}

ScoreResult score_tokens(Model& m, const std::vector<int>& tokens, int top_n, DType kv_dtype,
                         ThreadPool& pool) {
  const int vocab = m.config.vocab;
  const std::vector<float> logits = sequence_logits(m, tokens, kv_dtype, pool);
  ScoreResult r;
  r.tokens = tokens;
  for (size_t j = 0; j < tokens.size(); ++j) {
    const float* lg = logits.data() + j * vocab;
    PositionScore p = score_logits(lg, vocab, top_n);
    if (j + 1 < tokens.size()) p.next_logprob = lg[tokens[j + 1]] - p.lse;
    r.positions.push_back(std::move(p));
  }
  return r;
}

std::string score_to_json(const ScoreResult& r) {
  nlohmann::json j;
  j["tokens"] = r.tokens;
  j["positions"] = nlohmann::json::array();
  for (const auto& p : r.positions) {
    nlohmann::json pj;
    pj["top"] = nlohmann::json::array();
    for (const auto& [id, lg] : p.top) pj["top"].push_back({id, lg});
    pj["lse"] = p.lse;
    pj["next_logprob"] = p.next_logprob ? nlohmann::json(*p.next_logprob) : nlohmann::json(nullptr);
    j["positions"].push_back(pj);
  }
  return j.dump();
}

}  // namespace mx
