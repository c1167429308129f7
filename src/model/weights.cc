#include "model/weights.h"

#include <sys/mman.h>

#include <algorithm>

#include "formats/expert_split.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"

namespace mx {

namespace {

// Anonymous memory for a matrix copied at bind time, kept alive by w.owned. Null when there is
// no memory for it.
uint8_t* alloc_owned(size_t bytes, ModelWeights& w) {
  // Asked for huge pages: faulting in gigabytes 4 KiB at a time took more time than the copy.
  const size_t len = (std::max<size_t>(bytes, 1) + (size_t{2} << 20) - 1) / (size_t{2} << 20) * (size_t{2} << 20);
  void* mem = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return nullptr;
  ::madvise(mem, len, MADV_HUGEPAGE);
  w.owned.emplace_back(static_cast<uint8_t*>(mem), [len](uint8_t* p) { ::munmap(p, len); });
  return w.owned.back().get();
}

// Rows [lo, hi) of a matrix (hi < 0: all of them); lo and hi are whole 16-row groups when the
// matrix is or becomes r16. Only those rows are read (mapped pages outside stay untouched).
MatView bind_matrix(const LoadedModel& m, const std::string& name, const LoadOptions& opts,
                    ThreadPool* pool, ModelWeights& w, int64_t lo = 0, int64_t hi = -1) {
  const Tensor& t = m.store.get(name);
  MatView v = mat_view(t);
  if (hi < 0) hi = v.rows;
  v.data += static_cast<size_t>(lo) * v.stride;
  v.rows = hi - lo;
  const DType r16 = r16_storage(t.dtype, name, t.shape);  // repack's rule
  if (!opts.interleave || r16 == t.dtype) return v;
  const size_t group = 16 * v.stride;
  const int64_t ng = v.rows / 16;
  uint8_t* buf = alloc_owned(static_cast<size_t>(ng) * group, w);
  if (buf == nullptr) return v;  // no memory for a copy: the row-major kernels still work
  auto convert = [&](int64_t g0, int64_t g1, int) {
    for (int64_t g = g0; g < g1; ++g)
      interleave_r16(r16, v.data + static_cast<size_t>(g) * group, v.cols, buf + static_cast<size_t>(g) * group);
  };
  if (pool) pool->parallel_for(ng, convert, 4);
  else convert(0, ng, 0);
  m.store.release_pages(t);
  v.dtype = r16;
  v.data = buf;
  return v;
}

}  // namespace

MatView mat_view(const Tensor& t) {
  MatView v;
  v.dtype = t.dtype;
  v.data = t.data;
  v.rows = t.rows();
  v.cols = t.cols();
  v.stride = t.row_stride();
  return v;
}

std::vector<float> to_f32(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  for (int64_t r = 0; r < t.rows(); ++r) dequantize_row(t.dtype, t.row(r), out.data() + r * t.cols(), t.cols());
  return out;
}

ModelWeights bind_weights(const LoadedModel& m, const LoadOptions& opts, ThreadPool* pool) {
  const ModelConfig& c = m.config;
  const TensorStore& s = m.store;
  ModelWeights w;
  w.tok_embeddings = mat_view(s.get("tok_embeddings"));
  w.norm = to_f32(s.get("norm"));
  auto mat = [&](const std::string& name) { return bind_matrix(m, name, opts, pool, w); };
  w.output = mat("output");
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    lw.attention_norm = to_f32(s.get(L + "attention_norm"));
    lw.ffn_norm = to_f32(s.get(L + "ffn_norm"));
    lw.wq = mat(L + "attention.wq");
    lw.wk = mat(L + "attention.wk");
    lw.wv = mat(L + "attention.wv");
    lw.wo = mat(L + "attention.wo");
    lw.gate = mat_view(s.get(L + "gate"));
    lw.experts.resize(static_cast<size_t>(c.n_experts));
    for (int e = 0; e < c.n_experts; ++e) {
      if (!opts.owns_expert(e, c.n_experts)) continue;
      const std::string E = L + "experts." + std::to_string(e) + ".";
      ExpertWeights& ew = lw.experts[static_cast<size_t>(e)];
      ew.present = true;
      if (opts.expert_parts(e, c.n_experts) > 1) {
        // This rank's share: hidden rows of w1/w3 and output rows of w2, each whole 16-row groups.
        const int parts = opts.expert_parts(e, c.n_experts), part = opts.part(c.n_experts);
        const std::string what = m.path + ": expert " + std::to_string(e);
        ew.split = true;
        ew.hid = expert_rows(c.ffn_dim, parts, part, what + " hidden size");
        ew.out = expert_rows(c.dim, parts, part, what + " w2 rows (model dim)");
        ew.w1 = bind_matrix(m, E + "w1", opts, pool, w, ew.hid.lo, ew.hid.hi);
        ew.w3 = bind_matrix(m, E + "w3", opts, pool, w, ew.hid.lo, ew.hid.hi);
        ew.w2 = bind_matrix(m, E + "w2", opts, pool, w, ew.out.lo, ew.out.hi);
        continue;
      }
      ew.w1 = mat(E + "w1");
      ew.w3 = mat(E + "w3");
      ew.w2 = mat(E + "w2");
    }
  }
  return w;
}

}  // namespace mx
