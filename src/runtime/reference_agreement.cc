#include "runtime/reference_agreement.h"

#include <algorithm>
#include <cmath>

#include "formats/error.h"
#include "model/forward.h"
#include "runtime/scoring.h"

namespace mx {

std::vector<int> stored_positions(const nlohmann::json& c, size_t n_tokens, const std::string& where) {
  std::vector<int> idx;
  if (c.contains("positions_index")) {
    try {
      idx = c["positions_index"].get<std::vector<int>>();
    } catch (const std::exception&) {
      fail(where + ": field 'positions_index' must be a list of integers");
    }
  } else {
    for (size_t j = 0; j < n_tokens; ++j) idx.push_back(static_cast<int>(j));
  }
  for (int j : idx)
    if (j < 0 || static_cast<size_t>(j) >= n_tokens)
      fail(where + ": positions_index " + std::to_string(j) + " is outside the " +
           std::to_string(n_tokens) + " tokens");
  if (!c.contains("positions") || !c["positions"].is_array() || c["positions"].size() != idx.size())
    fail(where + ": field 'positions' must be a list with one entry per stored position (" +
         std::to_string(idx.size()) + ")");
  return idx;
}

ReferenceAgreement compare_with_reference(Model& m, const nlohmann::json& reference, DType kv_dtype,
                                          ThreadPool& pool, const std::string& where) {
  if (!reference.is_object() || !reference.contains("cases") || !reference["cases"].is_array())
    fail(where + ": missing list field 'cases'");
  const int vocab = m.config.vocab;
  ReferenceAgreement a;
  double sum_dlp = 0;
  for (size_t ci = 0; ci < reference["cases"].size(); ++ci) {
    const auto& c = reference["cases"][ci];
    const std::string wc = where + ": cases[" + std::to_string(ci) + "]";
    std::vector<int> tokens;
    try {
      tokens = c.at("tokens").get<std::vector<int>>();
    } catch (const std::exception&) {
      fail(wc + ": field 'tokens' must be a list of integers");
    }
    if (tokens.empty()) fail(wc + ": field 'tokens' is empty");
    const std::vector<int> idx = stored_positions(c, tokens.size(), wc);
    const std::vector<float> logits = sequence_logits(m, tokens, kv_dtype, pool);
    for (size_t n = 0; n < idx.size(); ++n) {
      const auto& want = c["positions"][n];
      const std::string wp = wc + ".positions[" + std::to_string(n) + "]";
      double ref_lse = 0;
      std::vector<std::pair<int, double>> ref_top;
      try {
        ref_lse = want.at("lse").get<double>();
        for (const auto& pr : want.at("top")) ref_top.push_back({pr.at(0).get<int>(), pr.at(1).get<double>()});
      } catch (const std::exception&) {
        fail(wp + ": needs 'lse' (a number) and 'top' (a list of [id, logit])");
      }
      if (ref_top.empty()) fail(wp + ": field 'top' is empty");
      for (const auto& [id, lg] : ref_top)
        if (id < 0 || id >= vocab) fail(wp + ": unknown token id " + std::to_string(id));
      const float* lg = logits.data() + static_cast<size_t>(idx[n]) * vocab;
      const PositionScore p = score_logits(lg, vocab, 1);
      const int ref1 = ref_top[0].first;
      ++a.positions;
      a.top1_agree += p.top[0].first == ref1;
      if (ref_top.size() < 2 || ref_top[0].second - ref_top[1].second > 1e-4) {
        ++a.clear_positions;
        a.clear_agree += p.top[0].first == ref1;
      }
      const double dlp = std::abs((lg[ref1] - p.lse) - (ref_top[0].second - ref_lse));
      sum_dlp += dlp;
      a.max_abs_dlogprob = std::max(a.max_abs_dlogprob, dlp);
      a.max_abs_dlse = std::max(a.max_abs_dlse, std::abs(p.lse - ref_lse));
      for (const auto& [id, rl] : ref_top) a.max_abs_dlogit = std::max(a.max_abs_dlogit, std::abs(lg[id] - rl));
    }
    ++a.cases;
  }
  a.mean_abs_dlogprob = a.positions ? sum_dlp / a.positions : 0;
  return a;
}

nlohmann::json agreement_to_json(const ReferenceAgreement& a) {
  return {{"cases", a.cases},
          {"positions", a.positions},
          {"top1_agreement", a.top1()},
          {"clear_argmax_agreement", a.clear_positions ? static_cast<double>(a.clear_agree) / a.clear_positions : 0.0},
          {"mean_abs_dlogprob", a.mean_abs_dlogprob},
          {"max_abs_dlogprob", a.max_abs_dlogprob},
          {"max_abs_dlse", a.max_abs_dlse},
          {"max_abs_dlogit", a.max_abs_dlogit}};
}

}  // namespace mx
