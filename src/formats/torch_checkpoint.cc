#include "formats/torch_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

#include "formats/config_files.h"
#include "formats/error.h"
#include "formats/file_probe.h"
#include "formats/pickle.h"
#include "formats/zip_reader.h"

namespace mx {

namespace {

namespace fs = std::filesystem;

// One tensor of a checkpoint file before its bytes are resolved.
struct Source {
  const ZipReader* zip = nullptr;
  std::string prefix;  // "<archive>/" inside the zip
  TorchTensorRef ref;
};

// A strided window onto a storage's bytes.
struct View {
  const uint8_t* base = nullptr;  // storage start
  DType dtype = DType::F32;
  int64_t offset = 0;  // elements
  std::vector<int64_t> shape, stride;
};

size_t elem_size(DType t) { return static_cast<size_t>(dtype_info(t).block_bytes); }

bool is_contiguous(const View& v) {
  int64_t want = 1;
  for (size_t d = v.shape.size(); d-- > 0;) {
    if (v.shape[d] != 1 && v.stride[d] != want) return false;  // size-1 dims: any stride
    want *= v.shape[d];
  }
  return true;
}

// Copies a 2-D strided block into a dense row-major one. Strided (column) reads are tiled so
// a transpose touches each source cache line once per tile rather than once per element.
template <typename T>
void copy_2d(uint8_t* dst, const uint8_t* src, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  constexpr int64_t kTile = 32;
  auto at = [&](int64_t r, int64_t c) { return src + (r * rs + c * cs) * int64_t{sizeof(T)}; };
  if (cs == 1) {
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(dst + r * cols * int64_t{sizeof(T)}, at(r, 0), cols * sizeof(T));
    return;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(rows, r0 + kTile);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t r = r0; r < r1; ++r) {
        uint8_t* out = dst + (r * cols + c0) * int64_t{sizeof(T)};
        for (int64_t c = c0; c < c1; ++c, out += sizeof(T)) {
          T x;  // memcpy: the source may be unaligned for T
          std::memcpy(&x, at(r, c), sizeof(T));
          std::memcpy(out, &x, sizeof(T));
        }
      }
    }
  }
}

template <typename T>
void copy_strided(uint8_t* dst, const View& v) {
  const uint8_t* src = v.base + v.offset * static_cast<int64_t>(sizeof(T));
  std::vector<int64_t> shape = v.shape, stride = v.stride;
  while (shape.size() < 2) {  // scalars and vectors as [1, n]
    shape.insert(shape.begin(), 1);
    stride.insert(stride.begin(), 0);
  }
  const size_t nd = shape.size();
  const int64_t rows = shape[nd - 2], cols = shape[nd - 1];
  const size_t block = static_cast<size_t>(rows * cols) * sizeof(T);
  std::vector<int64_t> idx(nd - 2, 0);  // odometer over the outer dims
  int64_t outer = 1;
  for (size_t d = 0; d + 2 < nd; ++d) outer *= shape[d];
  for (int64_t n = 0; n < outer; ++n) {
    int64_t off = 0;
    for (size_t d = 0; d + 2 < nd; ++d) off += idx[d] * stride[d];
    copy_2d<T>(dst, src + off * static_cast<int64_t>(sizeof(T)), rows, cols, stride[nd - 2],
               stride[nd - 1]);
    dst += block;
    for (size_t d = nd - 2; d-- > 0;) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

// A Tensor over `v`: straight into the mmap when dense and aligned for the dtype, else a
// dense copy owned by the store.
Tensor materialize(const View& v, const std::string& name, TensorStore& store) {
  Tensor t;
  t.dtype = v.dtype;
  t.shape = v.shape;
  t.name = name;
  const size_t es = elem_size(v.dtype);
  const uint8_t* start = v.base + static_cast<size_t>(v.offset) * es;
  if (is_contiguous(v) && reinterpret_cast<uintptr_t>(start) % es == 0) {
    t.data = start;
    return t;
  }
  uint8_t* dst = store.alloc(std::max<size_t>(1, static_cast<size_t>(t.numel()) * es));
  if (t.numel() > 0) {
    switch (es) {
      case 1: copy_strided<uint8_t>(dst, v); break;
      case 2: copy_strided<uint16_t>(dst, v); break;
      case 4: copy_strided<uint32_t>(dst, v); break;
      case 8: copy_strided<uint64_t>(dst, v); break;
      default: fail(store.source + ": tensor " + name + ": unsupported element size");
    }
  }
  t.data = dst;
  return t;
}

// The bytes of a source tensor's storage, checked against the size the pickle declares.
View view_of(const Source& s, const std::string& name) {
  const std::string entry = s.prefix + "data/" + s.ref.storage.key;
  const ZipEntry* e = s.zip->find(entry);
  if (e == nullptr)
    fail(s.zip->path() + ": tensor '" + name + "': storage entry '" + entry + "' is missing");
  const std::span<const uint8_t> bytes = s.zip->data(*e);
  const size_t es = elem_size(s.ref.storage.dtype);
  if (static_cast<uint64_t>(s.ref.storage.numel) > bytes.size() / es)
    fail(s.zip->path() + ": tensor '" + name + "': storage entry '" + entry + "' holds " +
         std::to_string(bytes.size()) + " bytes, fewer than its " +
         std::to_string(s.ref.storage.numel) + " " +
         std::string(dtype_info(s.ref.storage.dtype).name) + " elements");
  View v;
  v.base = bytes.data();
  v.dtype = s.ref.storage.dtype;
  v.offset = s.ref.offset;
  v.shape = s.ref.shape;
  v.stride = s.ref.stride;
  return v;
}

// What a checkpoint name means. kind: 0 plain tensor, 1 per-expert tensor, 2 stacked experts.
struct Meaning {
  int kind = 0;
  std::string canonical;  // plain, or per-expert name with the expert filled in
  int layer = -1, expert = -1;
  std::string proj;            // "w1", "w2", "w3" for expert tensors
  std::vector<int64_t> shape;  // expected source shape
};

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = s.find('.', start);
    parts.push_back(s.substr(start, dot - start));
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

// Parses a decimal index below `limit`, or returns -1.
int parse_index(const std::string& s, int limit) {
  if (s.empty() || s.size() > 9 ||
      !std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
    return -1;
  if (s.size() > 1 && s[0] == '0') return -1;
  const int v = std::stoi(s);
  return v < limit ? v : -1;
}

// Returns false for names that are not model tensors we know (the caller decides).
bool interpret(const std::string& name, const ModelConfig& c, const std::string& file, Meaning* m) {
  const int64_t dim = c.dim, vocab = c.vocab, ffn = c.ffn_dim, E = c.n_experts;
  const int64_t q_rows = int64_t{c.n_heads} * c.head_dim,
                kv_rows = int64_t{c.n_kv_heads} * c.head_dim;
  if (name == "tok_embeddings.weight" || name == "output.weight") {
    *m = {0, name.substr(0, name.find('.')), -1, -1, "", {vocab, dim}};
    return true;
  }
  if (name == "norm.weight") {
    *m = {0, "norm", -1, -1, "", {dim}};
    return true;
  }
  const std::vector<std::string> p = split_dots(name);
  if (p.size() < 3 || p[0] != "layers") return false;
  const int L = parse_index(p[1], c.n_layers);
  if (L < 0)
    fail(file + ": tensor '" + name + "': layer index out of range (n_layers " +
         std::to_string(c.n_layers) + " in params.json)");
  const std::string lp = "layers." + std::to_string(L) + ".";
  m->layer = L;
  auto is = [&](std::initializer_list<const char*> want) {
    if (p.size() != want.size() + 2) return false;
    size_t k = 2;
    for (const char* w : want)
      if (p[k++] != w) return false;
    return true;
  };
  for (const char* w : {"wq", "wk", "wv", "wo"}) {
    if (is({"attention", w, "weight"})) {
      const std::string ws = w;
      m->kind = 0;
      m->canonical = lp + "attention." + ws;
      m->shape = ws == "wq"   ? std::vector<int64_t>{q_rows, dim}
                 : ws == "wo" ? std::vector<int64_t>{dim, q_rows}
                              : std::vector<int64_t>{kv_rows, dim};
      return true;
    }
  }
  for (const char* w : {"attention_norm", "ffn_norm"}) {
    if (is({w, "weight"})) {
      m->kind = 0;
      m->canonical = lp + w;
      m->shape = {dim};
      return true;
    }
  }
  if (is({"feed_forward", "gate", "weight"}) || is({"block_sparse_moe", "gate", "weight"})) {
    m->kind = 0;
    m->canonical = lp + "gate";
    m->shape = {E, dim};
    return true;
  }
  if (p.size() == 7 && p[2] == "feed_forward" && p[3] == "experts" && p[6] == "weight" &&
      (p[5] == "w1" || p[5] == "w2" || p[5] == "w3")) {
    const int e = parse_index(p[4], c.n_experts);
    if (e < 0)
      fail(file + ": tensor '" + name + "': expert index out of range (moe.num_experts " +
           std::to_string(c.n_experts) + " in params.json)");
    m->kind = 1;
    m->expert = e;
    m->proj = p[5];
    m->canonical = lp + "experts." + std::to_string(e) + "." + p[5];
    m->shape = p[5] == "w2" ? std::vector<int64_t>{dim, ffn} : std::vector<int64_t>{ffn, dim};
    return true;
  }
  if (p.size() == 4 && p[2] == "block_sparse_moe" &&
      (p[3] == "w1" || p[3] == "w2" || p[3] == "w3")) {
    m->kind = 2;
    m->proj = p[3];
    m->shape = {E * ffn, dim};  // w2 too: each expert's [dim, ffn] stored transposed
    return true;
  }
  return false;
}

std::vector<std::string> checkpoint_files(const std::string& dir) {
  std::vector<std::string> files;
  // Non-throwing probes: a dangling symlink named x.pth is skipped, not reported as a failure
  // to list the folder, and no std::filesystem_error can escape.
  for (const fs::path& e : list_directory(dir)) {
    const std::string ext = e.extension().string();
    if ((ext == ".pth" || ext == ".pt") && is_regular_path(e)) files.push_back(e.string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) fail(dir + ": no .pth or .pt checkpoint files");
  return files;
}

// The "<archive>/" prefix torch.save puts in front of every entry, found from data.pkl.
std::string record_prefix(const ZipReader& zip) {
  std::string found;
  int n = 0;
  for (const ZipEntry& e : zip.entries()) {
    const std::string& s = e.name;
    if (s == "data.pkl" || (s.size() > 9 && s.compare(s.size() - 9, 9, "/data.pkl") == 0 &&
                            s.find('/') == s.size() - 9)) {
      found = s.substr(0, s.size() - 8);
      ++n;
    }
  }
  if (n != 1)
    fail(zip.path() + ": not a torch.save archive (" +
         (n == 0 ? std::string("no data.pkl") : std::string("several data.pkl")) + ")");
  return found;
}

}  // namespace

LoadedModel load_torch_checkpoint(const std::string& dir_or_file, const LoadOptions& opts) {
  std::string dir;
  std::vector<std::string> files;
  if (is_directory_path(dir_or_file)) {
    dir = dir_or_file;
    files = checkpoint_files(dir);
  } else {
    if (!path_exists(dir_or_file)) fail(dir_or_file + ": no such file or folder");
    dir = fs::path(dir_or_file).parent_path().string();
    if (dir.empty()) dir = ".";
    files = {dir_or_file};
  }
  if (opts.n_ranks < 1 || opts.rank < 0 || opts.rank >= opts.n_ranks)
    fail(dir_or_file + ": bad rank " + std::to_string(opts.rank) + " of " +
         std::to_string(opts.n_ranks));

  LoadedModel m;
  m.path = dir_or_file;
  TensorStore& store = m.store;
  store.source = dir_or_file;

  // Parse every archive and its pickle first (before params.json, so that a file that is not a
  // checkpoint, or a refused pickle global, is what gets reported).
  std::vector<std::unique_ptr<ZipReader>> zips;
  std::map<std::string, std::pair<Source, std::string>> sources;  // name -> (source, file)
  for (const std::string& f : files) {
    zips.push_back(std::make_unique<ZipReader>(ZipReader::open(f)));
    const ZipReader& zip = *zips.back();
    const std::string prefix = record_prefix(zip);
    if (const ZipEntry* bo = zip.find(prefix + "byteorder")) {
      const auto b = zip.data(*bo);
      if (std::string(reinterpret_cast<const char*>(b.data()), b.size()) != "little")
        fail(f + ": checkpoint is not little-endian");
    }
    const Unpickled u = unpickle(zip.data(prefix + "data.pkl"), f + ": " + prefix + "data.pkl");
    for (auto& [name, ref] : torch_state_dict(u, f)) {
      auto [it, fresh] = sources.try_emplace(name, Source{&zip, prefix, ref}, f);
      if (!fresh)
        fail(f + ": tensor '" + name + "' also appears in " + it->second.second +
             " (tensor-parallel shards are not supported)");
    }
    store.files.push_back(zip.file());
  }
  m.config = read_params_json((fs::path(dir) / "params.json").string());
  m.config.rope_interleaved = true;  // Mistral's own layout: q/k rows not permuted
  const ModelConfig& c = m.config;

  // Layout from the expert tensor names; a mix of both is an error.
  bool per_expert = false, stacked = false;
  for (const auto& [name, src] : sources) {
    per_expert |= name.find(".feed_forward.experts.") != std::string::npos;
    stacked |= name.find(".block_sparse_moe.") != std::string::npos;
  }
  if (per_expert && stacked)
    fail(dir_or_file +
         ": mixes per-expert (feed_forward.experts) and stacked "
         "(block_sparse_moe) expert tensors");
  m.layout = stacked ? "pt-stacked" : "pth";

  const int64_t ffn = c.ffn_dim;
  for (const auto& [name, entry] : sources) {
    const Source& src = entry.first;
    const std::string& file = entry.second;
    Meaning mean;
    if (!interpret(name, c, file, &mean)) {
      if (name == "rope.freqs") continue;  // precomputed RoPE table some releases carry
      fail(file + ": unexpected tensor '" + name + "' (not a Mistral checkpoint name)");
    }
    const DType dt = src.ref.storage.dtype;
    if (dt != DType::F32 && dt != DType::F16 && dt != DType::BF16)
      fail(file + ": tensor '" + name + "' has dtype " + std::string(dtype_info(dt).name) +
           ", expected f32, f16 or bf16");
    if (src.ref.shape != mean.shape)
      fail(file + ": tensor '" + name + "' has shape " + shape_str(src.ref.shape) + ", expected " +
           shape_str(mean.shape) + " from params.json");
    if (mean.kind == 0) {
      store.tensors[mean.canonical] = materialize(view_of(src, name), mean.canonical, store);
    } else if (mean.kind == 1) {
      if (!opts.owns_expert(mean.expert, c.n_experts)) continue;  // never touch its bytes
      store.tensors[mean.canonical] = materialize(view_of(src, name), mean.canonical, store);
    } else {
      const View all = view_of(src, name);
      for (int e = 0; e < c.n_experts; ++e) {
        if (!opts.owns_expert(e, c.n_experts)) continue;
        View v = all;  // rows [e*ffn, (e+1)*ffn)
        v.offset += e * ffn * v.stride[0];
        v.shape[0] = ffn;
        if (mean.proj == "w2") {  // stored [ffn, dim] per expert; ours is [dim, ffn]
          std::swap(v.shape[0], v.shape[1]);
          std::swap(v.stride[0], v.stride[1]);
        }
        const std::string cn = "layers." + std::to_string(mean.layer) + ".experts." +
                               std::to_string(e) + "." + mean.proj;
        store.tensors[cn] = materialize(v, cn, store);
      }
    }
  }

  // Everything params.json promises must be there (owned experts only).
  std::vector<std::string> want = {"tok_embeddings", "norm", "output"};
  for (int L = 0; L < c.n_layers; ++L) {
    const std::string lp = "layers." + std::to_string(L) + ".";
    for (const char* t : {"attention_norm", "ffn_norm", "attention.wq", "attention.wk",
                          "attention.wv", "attention.wo", "gate"})
      want.push_back(lp + t);
    for (int e = 0; e < c.n_experts; ++e) {
      if (!opts.owns_expert(e, c.n_experts)) continue;
      for (const char* w : {"w1", "w2", "w3"})
        want.push_back(lp + "experts." + std::to_string(e) + "." + w);
    }
  }
  for (const std::string& w : want) {
    if (!store.has(w))
      fail(dir_or_file + ": missing tensor '" + w + "' (" + m.layout + " layout, " +
           std::to_string(files.size()) + " checkpoint file(s))");
  }

  const fs::path tok = fs::path(dir) / "tokenizer.model";
  if (path_exists(tok)) {
    // SentencePiece would block reading a FIFO; refuse anything but a file, as the other loaders do.
    if (!is_regular_path(tok)) fail(tok.string() + ": not a regular file");
    m.tokenizer.model_path = tok.string();
  }
  m.tokenizer.bos_id = c.bos_id;
  m.tokenizer.eos_id = c.eos_id;
  return m;
}

}  // namespace mx
