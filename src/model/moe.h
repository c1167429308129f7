// The sparse MoE block, grouped by expert over the whole batch:
//   route:   logits = gate · x; keep the top-k; softmax over only those k
//   group:   for each expert, gather the tokens that chose it (across all sequences)
//   run:     each expert once over its tokens: w2(silu(w1·x) ⊙ w3·x)
//   combine: out[t] = Σ_j weight[t,j] · y[t,j], with j in ascending expert order
// The combine order is fixed so that any split of experts over ranks gives the same bits.
#pragma once
#include <functional>
#include <vector>

#include "model/weights.h"

namespace mx {

class ThreadPool;

struct MoeRouting {
  int n_tokens = 0, top_k = 0;
  std::vector<int> expert;    // [n_tokens * top_k], ascending expert index within a token
  std::vector<float> weight;  // [n_tokens * top_k]
};

// Computes router choices for x [n_tokens, dim] (already normed).
MoeRouting route(const LayerWeights& lw, const float* x, int n_tokens, int top_k,
                 ThreadPool& pool);

// Runs the experts this process holds whole (lw.experts[e].present, not split) over their routed
// tokens and writes y[(t*top_k + j) * dim] for each (t, j) whose expert is held. Rows of other
// experts are left untouched.
void run_local_experts(const LayerWeights& lw, const float* x, int dim, const MoeRouting& r,
                       float* y, ThreadPool& pool);

// The two halves of one expert over n gathered rows xs [n, dim]: the hidden activations
// h = silu(w1·xs) ⊙ (w3·xs) [n, w1.rows], and y = w2·h [n, w2.rows]. run_local_experts is
// expert_output(expert_hidden(...)); a split expert runs them with an exchange in between.
void expert_hidden(const ExpertWeights& ew, const float* xs, int n, std::vector<float>& h3, float* h,
                   ThreadPool& pool);
void expert_output(const ExpertWeights& ew, const float* h, int n, float* y, ThreadPool& pool);

// How expert outputs are produced for a layer: locally, or across MPI ranks
// (runtime/expert_parallel.cc). Must fill every y row.
using ExpertRunner = std::function<void(int layer, const float* x, int dim,
                                        const MoeRouting& r, float* y)>;

// out[t] = Σ_j weight * y rows, in j order.
void combine_experts(const MoeRouting& r, const float* y, int dim, float* out);

}  // namespace mx
