#include "model/forward.h"

#include <cmath>
#include <cstring>
#include <string>

#include "formats/error.h"
#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"
#include "model/attention.h"

namespace mx {

std::unique_ptr<Model> make_model(std::shared_ptr<LoadedModel> loaded, const LoadOptions& opts,
                                  ThreadPool& pool) {
  auto m = std::make_unique<Model>();
  m->config = loaded->config;
  m->weights = bind_weights(*loaded, opts, &pool);
  m->source = std::move(loaded);
  Model* raw = m.get();
  m->experts = [raw, &pool](int layer, const float* x, int dim, const MoeRouting& r, float* y) {
    run_local_experts(raw->weights.layers[static_cast<size_t>(layer)], x, dim, r, y, pool);
  };
  return m;
}

namespace {

void rmsnorm(const float* x, const float* w, int n, float eps, float* out) { ops::rmsnorm(x, w, n, eps, out); }

}  // namespace

void apply_chunk_starts(KvCache& kv, const std::vector<SeqChunk>& batch) {
  // Copies first: a source slot may itself be cut back or reset later in this batch.
  for (const SeqChunk& s : batch) {
    if (s.copy_from < 0) continue;
    if (s.start < 0) fail("a chunk that copies a prefix needs its start");
    kv.ensure_slot(s.copy_from);
    kv.copy_prefix(s.copy_from, s.slot, s.start, s.start + static_cast<int>(s.tokens.size()));
  }
  for (const SeqChunk& s : batch) {
    kv.ensure_slot(s.slot);
    if (s.fresh || s.start == 0) {
      kv.reset(s.slot);
    } else if (s.start > 0) {
      if (s.start > kv.length(s.slot))
        fail("chunk for slot " + std::to_string(s.slot) + " starts at " + std::to_string(s.start) +
             " but the slot holds " + std::to_string(kv.length(s.slot)) + " positions");
      // Positions past `start` hold another sequence's tail; they are overwritten as the new
      // tokens are written, and attention never reads past a token's own position.
      kv.set_length(s.slot, s.start);
    }
  }
}

std::vector<float> forward(Model& m, KvCache& kv, const std::vector<SeqChunk>& batch,
                           ThreadPool& pool) {
  const ModelConfig& c = m.config;
  const int dim = c.dim, qdim = c.n_heads * c.head_dim, kvdim = c.n_kv_heads * c.head_dim;

  // Lay the batch out as T token rows, remembering each row's slot and position.
  std::vector<TokenPos> tp;
  std::vector<int> tokens;
  apply_chunk_starts(kv, batch);
  for (const SeqChunk& s : batch) {
    const int start = kv.length(s.slot);
    kv.reserve(s.slot, start + static_cast<int>(s.tokens.size()));
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      const int id = s.tokens[i];
      if (id < 0 || id >= c.vocab)
        fail("unknown token id " + std::to_string(id) + " (vocabulary has " +
             std::to_string(c.vocab) + " tokens)");
      tp.push_back({s.slot, start + static_cast<int>(i)});
      tokens.push_back(id);
    }
  }
  const int T = static_cast<int>(tokens.size());
  if (T == 0) return {};
  if (m.before_step) m.before_step(kv, batch);

  std::vector<float> x(static_cast<size_t>(T) * dim), h(x.size()), tmp(x.size());
  std::vector<float> q(static_cast<size_t>(T) * qdim), k(static_cast<size_t>(T) * kvdim),
      v(k.size()), att(q.size());
  const MatView& emb = m.weights.tok_embeddings;
  for (int t = 0; t < T; ++t)
    dequantize_rows(emb.dtype, emb.data, dim, tokens[static_cast<size_t>(t)], 1,
                    x.data() + static_cast<size_t>(t) * dim);

  // Rows whose logits are wanted: every row of an all_logits chunk, else each chunk's last.
  std::vector<int> want;
  {
    int row = 0;
    for (const SeqChunk& s : batch) {
      const int n = static_cast<int>(s.tokens.size());
      if (s.all_logits)
        for (int i = 0; i < n; ++i) want.push_back(row + i);
      else if (n > 0)
        want.push_back(row + n - 1);
      row += n;
    }
  }
  // The last layer needs K and V of every token (they go to the cache) but its queries,
  // attention, output projection and experts only for the wanted rows, as llama.cpp does: a
  // prefill chunk then runs the last layer's experts for one token instead of all. Every
  // kernel gives a token the same bits whatever else is in the batch, so the wanted rows are
  // unchanged. (MPI followers get each chunk's all_logits in the step and trim alike.)
  const int W = static_cast<int>(want.size());
  const bool trim = c.n_layers > 0 && W < T;

  RopeTable rope = make_rope_table(tp, c);
  // K and V of rows [0, n) to the cache at layer l (k and v already roped).
  const auto write_kv = [&](int l, int n) {
    for (int t = 0; t < n; ++t)
      kv.write(tp[static_cast<size_t>(t)].slot, l, tp[static_cast<size_t>(t)].pos,
               &k[static_cast<size_t>(t) * kvdim], &v[static_cast<size_t>(t) * kvdim]);
  };
  // Keeps rows want[i] of a [T, width] buffer as its rows i.
  const auto keep_wanted = [&](std::vector<float>& buf, int width) {
    for (int i = 0; i < W; ++i)
      std::memmove(&buf[static_cast<size_t>(i) * width],
                   &buf[static_cast<size_t>(want[static_cast<size_t>(i)]) * width], sizeof(float) * width);
  };
  int n = T;  // rows x, h and tp hold: T, then the wanted rows from a trimmed last layer on
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = m.weights.layers[static_cast<size_t>(l)];
    for (int t = 0; t < n; ++t)
      rmsnorm(&x[static_cast<size_t>(t) * dim], lw.attention_norm.data(), dim, c.norm_eps,
              &h[static_cast<size_t>(t) * dim]);
    if (trim && l == c.n_layers - 1) {
      {
        const MatView kv2[2] = {lw.wk, lw.wv};
        float* const out[2] = {k.data(), v.data()};
        matmul_multi(kv2, out, 2, h.data(), n, pool);
      }
      apply_rope(rope, c, k.data(), c.n_kv_heads, n);
      write_kv(l, n);
      // want is ascending, so rows move only towards the front.
      keep_wanted(x, dim);
      keep_wanted(h, dim);
      for (int i = 0; i < W; ++i) tp[static_cast<size_t>(i)] = tp[static_cast<size_t>(want[static_cast<size_t>(i)])];
      tp.resize(static_cast<size_t>(W));
      n = W;
      rope = make_rope_table(tp, c);
      matmul(lw.wq, h.data(), n, q.data(), pool);
      apply_rope(rope, c, q.data(), c.n_heads, n);
    } else {
      // One activation quantization and one parallel region for the three projections.
      const MatView qkv[3] = {lw.wq, lw.wk, lw.wv};
      float* const out[3] = {q.data(), k.data(), v.data()};
      matmul_multi(qkv, out, 3, h.data(), n, pool);
      apply_rope(rope, c, q.data(), c.n_heads, n);
      apply_rope(rope, c, k.data(), c.n_kv_heads, n);
      write_kv(l, n);
    }
    const int64_t xn = static_cast<int64_t>(n) * dim;
    attention(kv, l, tp, c, q.data(), att.data(), pool);
    matmul(lw.wo, att.data(), n, tmp.data(), pool);
    ops::add(x.data(), tmp.data(), xn, x.data());

    for (int t = 0; t < n; ++t)
      rmsnorm(&x[static_cast<size_t>(t) * dim], lw.ffn_norm.data(), dim, c.norm_eps,
              &h[static_cast<size_t>(t) * dim]);
    const MoeRouting r = route(lw, h.data(), n, c.top_k, pool);
    std::vector<float> y(static_cast<size_t>(n) * c.top_k * dim);
    m.experts(l, h.data(), dim, r, y.data());
    combine_experts(r, y.data(), dim, tmp.data());
    ops::add(x.data(), tmp.data(), xn, x.data());
  }
  if (n == T) keep_wanted(x, dim);  // x now holds the wanted rows (want[i] -> row i)
  // Positions are committed only after the whole step succeeded.
  for (const SeqChunk& s : batch) kv.set_length(s.slot, kv.length(s.slot) + static_cast<int>(s.tokens.size()));
  if (m.skip_logits) return {};

  // Final norm and LM head, for the wanted rows.
  std::vector<float> hn(want.size() * static_cast<size_t>(dim));
  for (size_t i = 0; i < want.size(); ++i)
    rmsnorm(&x[i * dim], m.weights.norm.data(), dim, c.norm_eps, &hn[i * dim]);
  std::vector<float> logits(want.size() * static_cast<size_t>(c.vocab));
  matmul(m.weights.output, hn.data(), static_cast<int64_t>(want.size()), logits.data(), pool);
  return logits;
}

}  // namespace mx
