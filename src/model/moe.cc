#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/thread_pool.h"

namespace mx {

MoeRouting route(const LayerWeights& lw, const float* x, int n_tokens, int top_k,
                 ThreadPool& pool) {
  const int n_exp = static_cast<int>(lw.gate.rows);
  std::vector<float> logits(static_cast<size_t>(n_tokens) * n_exp);
  matmul(lw.gate, x, n_tokens, logits.data(), pool);
  MoeRouting r;
  r.n_tokens = n_tokens;
  r.top_k = top_k;
  r.expert.resize(static_cast<size_t>(n_tokens) * top_k);
  r.weight.resize(r.expert.size());
  std::vector<int> idx(static_cast<size_t>(n_exp));
  for (int t = 0; t < n_tokens; ++t) {
    const float* lg = logits.data() + static_cast<size_t>(t) * n_exp;
    std::iota(idx.begin(), idx.end(), 0);
    // Highest logits first; ties go to the lower expert index (as torch.topk does in practice).
    std::partial_sort(idx.begin(), idx.begin() + top_k, idx.end(), [&](int a, int b) {
      return lg[a] > lg[b] || (lg[a] == lg[b] && a < b);
    });
    float mx = lg[idx[0]];
    double sum = 0;
    std::vector<std::pair<int, float>> chosen;
    for (int j = 0; j < top_k; ++j) {
      const float p = std::exp(lg[idx[static_cast<size_t>(j)]] - mx);
      chosen.push_back({idx[static_cast<size_t>(j)], p});
      sum += p;
    }
    std::sort(chosen.begin(), chosen.end());
    for (int j = 0; j < top_k; ++j) {
      r.expert[static_cast<size_t>(t) * top_k + j] = chosen[static_cast<size_t>(j)].first;
      r.weight[static_cast<size_t>(t) * top_k + j] =
          static_cast<float>(chosen[static_cast<size_t>(j)].second / sum);
    }
  }
  return r;
}

void expert_hidden(const ExpertWeights& ew, const float* xs, int n, std::vector<float>& h3, float* h,
                   ThreadPool& pool) {
  h3.resize(static_cast<size_t>(n) * static_cast<size_t>(ew.w1.rows));
  const MatView w13[2] = {ew.w1, ew.w3};
  float* const y13[2] = {h, h3.data()};
  matmul_multi(w13, y13, 2, xs, n, pool);
  ops::silu_mul(h, h3.data(), static_cast<int64_t>(h3.size()), h);
}

void expert_output(const ExpertWeights& ew, const float* h, int n, float* y, ThreadPool& pool) {
  matmul(ew.w2, h, n, y, pool);
}

void run_local_experts(const LayerWeights& lw, const float* x, int dim, const MoeRouting& r,
                       float* y, ThreadPool& pool) {
  const int n_exp = static_cast<int>(lw.experts.size());
  // Group (token, j) pairs by expert.
  std::vector<std::vector<int>> pairs(static_cast<size_t>(n_exp));
  for (int i = 0; i < r.n_tokens * r.top_k; ++i) pairs[static_cast<size_t>(r.expert[static_cast<size_t>(i)])].push_back(i);
  std::vector<float> xs, h1, h3, out;
  for (int e = 0; e < n_exp; ++e) {
    const ExpertWeights& ew = lw.experts[static_cast<size_t>(e)];
    const auto& ps = pairs[static_cast<size_t>(e)];
    if (!ew.present || ew.split || ps.empty()) continue;  // unused experts cost nothing
    const int n = static_cast<int>(ps.size());
    xs.resize(static_cast<size_t>(n) * dim);
    for (int i = 0; i < n; ++i)
      std::copy_n(x + static_cast<size_t>(ps[static_cast<size_t>(i)] / r.top_k) * dim, dim,
                  xs.data() + static_cast<size_t>(i) * dim);
    h1.resize(static_cast<size_t>(n) * static_cast<size_t>(ew.w1.rows));
    expert_hidden(ew, xs.data(), n, h3, h1.data(), pool);
    out.resize(static_cast<size_t>(n) * dim);
    expert_output(ew, h1.data(), n, out.data(), pool);
    for (int i = 0; i < n; ++i)
      std::copy_n(out.data() + static_cast<size_t>(i) * dim, dim,
                  y + static_cast<size_t>(ps[static_cast<size_t>(i)]) * dim);
  }
}

void combine_experts(const MoeRouting& r, const float* y, int dim, float* out) {
  for (int t = 0; t < r.n_tokens; ++t) {
    float* o = out + static_cast<size_t>(t) * dim;
    std::fill(o, o + dim, 0.f);
    for (int j = 0; j < r.top_k; ++j) {
      const size_t i = static_cast<size_t>(t) * r.top_k + j;
      ops::axpy(r.weight[i], y + i * dim, dim, o);
    }
  }
}

}  // namespace mx
