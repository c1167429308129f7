// PyTorch checkpoints of Mixtral as Mistral released them, read without executing pickles
// (see pickle.h): torch.save zip archives next to a params.json.
//   layout "pth":        consolidated.00.pth, one tensor per expert matrix
//                        (layers.L.feed_forward.experts.E.w1.weight, ...).
//   layout "pt-stacked": consolidated.NN.pt split by layers, experts stacked per layer in
//                        layers.L.block_sparse_moe.w1/w2/w3 of shape [E*ffn, dim]; w2 holds each
//                        expert transposed and is transposed back (copied) on load.
// Tensors point into the mmaps where the bytes are contiguous and aligned, else are copied.
// Only experts owned per LoadOptions are mapped or copied.
#pragma once
#include <string>

#include "formats/loaded_model.h"

namespace mx {

// `dir_or_file` is the checkpoint folder (every *.pth / *.pt in it is read) or one .pth/.pt
// file (params.json and tokenizer.model are taken from its folder). Throws mx::Error naming
// the file and the problem: malformed zip or pickle, refused pickle global, missing params.json
// field, unexpected/missing tensor, shape that disagrees with params.json.
LoadedModel load_torch_checkpoint(const std::string& dir_or_file, const LoadOptions& opts);

}  // namespace mx
