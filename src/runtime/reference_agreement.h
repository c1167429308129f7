// How closely the model agrees with reference scores in the shape of expected.json
// ({"cases":[{"tokens":[...], "positions":[{"top":[[id,logit],...], "lse":x}], "positions_index"?}]}).
// The accuracy figures of docs/accuracy.md and its tests come from here.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

class ThreadPool;
struct Model;

struct ReferenceAgreement {
  int cases = 0;
  int positions = 0;           // reference positions compared
  int top1_agree = 0;          // our argmax == the reference's top-1 id
  int clear_positions = 0;     // positions whose reference top-2 gap exceeds 1e-4
  int clear_agree = 0;         // ... where our argmax agrees
  double mean_abs_dlogprob = 0;  // mean |Δ log p| of the reference's top-1 token
  double max_abs_dlogprob = 0;
  double max_abs_dlse = 0;       // log-sum-exp over the whole vocabulary
  double max_abs_dlogit = 0;     // over every stored [id, logit] of the reference
  double top1() const { return positions ? static_cast<double>(top1_agree) / positions : 0; }
};

// The token positions one reference case stores: all of its tokens, or those listed in its
// positions_index; checked against `positions` (errors name `where`).
std::vector<int> stored_positions(const nlohmann::json& c, size_t n_tokens, const std::string& where);

// Scores each case as one prefill in a fresh `kv_dtype` cache and compares every stored
// position. `where` names the reference (a file) in errors about its shape.
ReferenceAgreement compare_with_reference(Model& m, const nlohmann::json& reference, DType kv_dtype,
                                          ThreadPool& pool, const std::string& where);
nlohmann::json agreement_to_json(const ReferenceAgreement& a);

}  // namespace mx
