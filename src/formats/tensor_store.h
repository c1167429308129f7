// The tensors of a loaded checkpoint under canonical names, plus what keeps their bytes alive.
//
// Canonical names (every format loader maps its own names onto these; shapes [out, in]):
//   tok_embeddings [vocab, dim]        norm [dim]        output [vocab, dim]
//   layers.L.attention_norm [dim]      layers.L.ffn_norm [dim]
//   layers.L.attention.wq [n_heads*head_dim, dim]   .wk/.wv [n_kv_heads*head_dim, dim]
//   layers.L.attention.wo [dim, n_heads*head_dim]
//   layers.L.gate [n_experts, dim]
//   layers.L.experts.E.w1 / .w3 [ffn, dim]          layers.L.experts.E.w2 [dim, ffn]
// q/k rows keep the layout of their source; ModelConfig::rope_interleaved says which it is.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/mapped_file.h"
#include "formats/tensor.h"

namespace mx {

struct TensorStore {
  std::map<std::string, Tensor> tensors;
  std::vector<std::shared_ptr<MappedFile>> files;      // keep mmaps alive
  std::vector<std::unique_ptr<uint8_t[]>> owned;       // bytes that had to be copied

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  // Throws mx::Error "<source>: missing tensor <name>" when absent.
  const Tensor& get(const std::string& name) const;
  // Allocates an owned, 64-byte aligned buffer of n bytes that lives as long as the store.
  uint8_t* alloc(size_t n);
  // Drops this process's resident pages of a tensor that lives in one of `files` (whole pages;
  // neighbours and the tensor itself fault back in from the file if read again). Tensors in
  // owned buffers are left alone. Keeps RSS small once a tensor has been copied elsewhere.
  void release_pages(const Tensor& t) const;
  std::string source;  // path shown in error messages
};

}  // namespace mx
