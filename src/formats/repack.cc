#include "formats/repack.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "formats/error.h"
#include "formats/expert_split.h"
#include "formats/file_probe.h"
#include "formats/mapped_file.h"
#include "formats/model_loader.h"
#include "formats/safetensors_writer.h"
#include "formats/weight_cache.h"
#include "kernels/quant_blocks.h"
#include "kernels/thread_pool.h"

namespace fs = std::filesystem;

namespace mx {

namespace {

bool is_norm(const std::string& name, const Tensor& t) {
  const std::string tail = name.substr(name.rfind('.') + 1);
  return t.shape.size() == 1 || tail == "norm" || tail == "attention_norm" || tail == "ffn_norm";
}

bool is_gate(const std::string& name) {
  return name.size() >= 5 && name.compare(name.size() - 5, 5, ".gate") == 0;
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

bool keeps_8bit_under_q4(const std::string& name) {
  return name == "output" || ends_with(name, ".attention.wk") || ends_with(name, ".attention.wv");
}

bool is_kquant_mode(const std::string& mode) { return mode == "q4k" || mode == "q5k" || mode == "q6k"; }

// The layer of "layers.N.…", or -1.
int layer_of(const std::string& name) {
  if (name.rfind("layers.", 0) != 0) return -1;
  return std::atoi(name.c_str() + 7);
}

// llama-quantize's use_more_bits: the first and last eighth of the layers and every third one
// between them take the larger type.
bool more_bits_layer(int layer, int n_layers) {
  return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

// The k-quant a tensor gets under q4k / q5k / q6k: llama-quantize's Q4_K_M / Q5_K_M / Q6_K
// rules for Mixtral-like models (llama.cpp src/llama-quant.cpp, llama_tensor_get_type).
DType kquant_type(const std::string& mode, const std::string& name, const ModelConfig& c) {
  const DType base = mode == "q4k" ? DType::Q4_K : mode == "q5k" ? DType::Q5_K : DType::Q6_K;
  const bool eight = c.n_experts == 8;
  if (name == "output") return DType::Q6_K;  // the LM head moves every logit
  // K and V are small (GQA) and feed every head: 8 bits cost ~0.6% of Mixtral's size.
  if (ends_with(name, ".attention.wk")) return eight ? DType::Q8_0 : base;
  if (ends_with(name, ".attention.wv")) {
    if (eight) return DType::Q8_0;
    return mode != "q6k" && more_bits_layer(layer_of(name), c.n_layers) ? DType::Q6_K : base;
  }
  if (ends_with(name, ".attention.wo")) return mode == "q4k" && eight ? DType::Q5_K : base;
  // Down projections of the outer layers (and every third) carry the most error: Q6_K.
  if (ends_with(name, ".w2") && canonical_expert(name) >= 0 && mode != "q6k" &&
      more_bits_layer(layer_of(name), c.n_layers))
    return DType::Q6_K;
  return base;
}

// What llama-quantize falls back to for rows that are not whole 256-element super-blocks.
DType legacy_fallback(DType k) {
  return k == DType::Q4_K ? DType::Q5_0 : k == DType::Q5_K ? DType::Q5_1 : DType::Q8_0;
}

// The dtype a tensor is stored in; appends to `notes` when it cannot take the requested one.
DType target_dtype(const std::string& mode, const std::string& name, const Tensor& t,
                   const ModelConfig& c, std::vector<std::string>& notes) {
  if (is_norm(name, t)) return DType::F32;  // tiny, and the model wants them in f32 anyway
  if (mode == "keep") return t.dtype;
  if (mode == "f32") return DType::F32;
  if (mode == "bf16") return DType::BF16;
  // Quantized modes. The router decides which experts run; llama.cpp keeps it unquantized too.
  if (is_gate(name)) return DType::F32;
  if (t.cols() % QK != 0) {
    notes.push_back(name + " kept in f32: its rows have " + std::to_string(t.cols()) +
                    " columns, not a multiple of the 32-element " + mode + " block");
    return DType::F32;
  }
  if (is_kquant_mode(mode)) {
    DType k = kquant_type(mode, name, c);
    if (dtype_info(k).block_elems == QK_K && t.cols() % QK_K != 0) {
      const DType f = legacy_fallback(k);
      notes.push_back(name + " in " + std::string(dtype_info(f).name) + " instead of " +
                      std::string(dtype_info(k).name) + ": its rows have " + std::to_string(t.cols()) +
                      " columns, not a multiple of 256 (llama-quantize falls back the same way)");
      k = f;
    }
    return r16_storage(k, name, t.shape);
  }
  // Under q4 the LM head and the K/V projections stay 8-bit, as llama-quantize does for
  // 8-expert models: together 0.9% of Mixtral's parameters, they move the logits most
  // (mean |d log p| on the fixtures: 0.70 all-q4, 0.58 with these in q8_0; docs/accuracy.md).
  if (mode == "q4" && keeps_8bit_under_q4(name)) return r16_storage(DType::Q8_0, name, t.shape);
  return r16_storage(mode == "q8" ? DType::Q8_0 : DType::Q4_0, name, t.shape);
}

// Writes one tensor at the next 64-byte boundary of `w`, converting 16 rows at a time when the
// dtype changes; a few MiB of buffers whatever the tensor's size. Q8_0 <-> Q8_0R16 (and Q4_0 <->
// Q4_0R16) moves the same bytes (no re-encoding), so a Q8_0 or Q4_0 GGUF repacks losslessly.
void write_tensor(FileWriter& w, const Tensor& t, DType out, ThreadPool& pool,
                  std::vector<std::vector<float>>& scratch, std::vector<uint8_t>& outbuf) {
  if (out == t.dtype) {
    w.write(t.data, t.nbytes());
    return;
  }
  const int64_t cols = t.cols(), rows = t.rows();
  const bool to_r16 = is_r16(out), from_r16 = is_r16(t.dtype);
  const DType enc = r16_base(out);  // what rows are encoded as before interleaving
  const size_t out_row = row_bytes(out, cols), enc_row = row_bytes(enc, cols);
  int64_t batch = std::max<int64_t>(16, static_cast<int64_t>((size_t{8} << 20) / std::max<size_t>(out_row, 1)));
  batch = batch / 16 * 16;  // whole groups: both layouts convert 16 rows at a time
  outbuf.resize(static_cast<size_t>(std::min(batch, rows)) * out_row);
  for (auto& s : scratch) s.resize(static_cast<size_t>(16 * cols) + (16 * enc_row + 3) / 4);
  std::atomic<bool> unsupported{false};
  for (int64_t r0 = 0; r0 < rows; r0 += batch) {
    const int64_t n = std::min(batch, rows - r0);
    pool.parallel_for(n, [&](int64_t b, int64_t e, int ti) {
      float* tmp = scratch[static_cast<size_t>(ti)].data();
      uint8_t* rows16 = reinterpret_cast<uint8_t*>(tmp + 16 * cols);
      for (int64_t c = b; c < e; c += 16) {
        const int64_t m = std::min<int64_t>(16, e - c);
        uint8_t* dst = outbuf.data() + static_cast<size_t>(c) * out_row;
        const uint8_t* src = t.data + static_cast<size_t>(r0 + c) * t.row_stride();
        // This chunk's rows in `enc` form at `q` (dst when no interleaving follows).
        uint8_t* q = to_r16 ? rows16 : dst;
        if (to_r16 && t.dtype == enc) {
          std::memcpy(q, src, static_cast<size_t>(m) * enc_row);
        } else if (from_r16 && r16_base(t.dtype) == enc) {
          deinterleave_r16(t.dtype, src, cols, q);
        } else {
          dequantize_rows(t.dtype, t.data, cols, r0 + c, m, tmp);
          for (int64_t i = 0; i < m; ++i)
            if (!quantize_row(enc, tmp + i * cols, q + static_cast<size_t>(i) * enc_row, cols))
              unsupported = true;
        }
        if (to_r16) interleave_r16(out, rows16, cols, dst);
      }
    }, 16);
    if (unsupported)
      fail(t.name + ": cannot encode " + std::string(dtype_info(out).name) + " tensors");
    w.write(outbuf.data(), static_cast<size_t>(n) * out_row);
  }
}

// Canonical names in the order they are written: shared tensors, then each expert's.
std::vector<std::string> shared_order(const LoadedModel& m) {
  std::vector<std::string> names = {"tok_embeddings", "norm", "output"};
  for (int l = 0; l < m.config.n_layers; ++l) {
    const std::string L = "layers." + std::to_string(l) + ".";
    for (const char* s : {"attention_norm", "attention.wq", "attention.wk", "attention.wv",
                          "attention.wo", "ffn_norm", "gate"})
      names.push_back(L + s);
  }
  // Anything else a loader provided (none today) goes along, after the known ones.
  std::set<std::string> known(names.begin(), names.end());
  for (const auto& [name, t] : m.store.tensors)
    if (canonical_expert(name) < 0 && !known.count(name)) names.push_back(name);
  return names;
}

std::vector<std::string> expert_order(const LoadedModel& m, int e) {
  std::vector<std::string> names;
  for (int l = 0; l < m.config.n_layers; ++l)
    for (const char* w : {"w1", "w3", "w2"})
      names.push_back("layers." + std::to_string(l) + ".experts." + std::to_string(e) + "." + w);
  std::set<std::string> known(names.begin(), names.end());
  for (const auto& [name, t] : m.store.tensors)
    if (canonical_expert(name) == e && !known.count(name)) names.push_back(name);
  return names;
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some filesystems refuse directory fds
  ::fsync(fd);
  ::close(fd);
}

bool looks_like_cache(const fs::path& dir) {
  std::string text;
  try {
    text = read_regular_file((dir / kCacheManifest).string(), uint64_t{64} << 20);
  } catch (const Error&) {
    return false;  // absent, unreadable, or not a regular file: not a cache we may replace
  }
  return text.substr(0, 4096).find(kCacheFormatName) != std::string::npos;
}

// Why an existing cache is not up to date, or "" when it is.
std::string stale_reason(const fs::path& out, const RepackOptions& o,
                         const std::vector<SourceFileStamp>& stamps) {
  CacheManifest mf;
  try {
    mf = read_cache_manifest(out.string());
  } catch (const Error& e) {
    return std::string("its manifest is unreadable (") + e.what() + ")";
  }
  if (mf.dtype != o.dtype) return "it was written with --dtype " + mf.dtype;
  if (mf.ranks != o.ranks)
    return mf.ranks ? "it was written with --ranks " + std::to_string(mf.ranks)
                    : "it was written without --ranks";
  if (mf.source_files != stamps) return "the source changed (or is another checkpoint)";
  // A cache from before an interleaved layout existed for one of its types is rebuilt.
  if (o.dtype == "q8" || o.dtype == "q4" || is_kquant_mode(o.dtype))
    for (const auto& t : mf.tensors)
      if (r16_storage(t.dtype, t.name, t.shape) != t.dtype)
        return "it holds plain " + std::string(dtype_info(t.dtype).name) + " matrices (" + t.name +
               "), from before the interleaved (r16) layouts";
  for (const auto& f : mf.files) {
    std::error_code ec;
    const auto size = fs::file_size(out / f.name, ec);
    if (ec || size != f.size) return f.name + " is missing or has the wrong size";
  }
  return "";
}

// Moves the finished `tmp` to `out`, replacing an old cache there without a moment where a
// half-written folder is visible under `out`.
void install(const fs::path& tmp, const fs::path& out) {
  std::error_code ec;
  if (!path_exists(out)) {
    fs::rename(tmp, out, ec);
    if (ec) fail(out.string() + ": cannot rename " + tmp.string() + " to it: " + ec.message());
  } else if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, out.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(tmp, ec);  // now holds the old cache
  } else {
    // No atomic exchange on this filesystem: move the old one aside first.
    const fs::path old = out.string() + ".old-" + std::to_string(::getpid());
    fs::remove_all(old, ec);
    fs::rename(out, old, ec);
    if (ec) fail(out.string() + ": cannot move the old cache aside: " + ec.message());
    fs::rename(tmp, out, ec);
    if (ec) fail(out.string() + ": cannot rename " + tmp.string() + " to it: " + ec.message());
    fs::remove_all(old, ec);
  }
  fsync_dir(out.parent_path());
}

std::string mb(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

}  // namespace

RepackResult repack(const RepackOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  static const std::set<std::string> modes = {"keep", "f32", "bf16", "q8", "q4", "q4k", "q5k", "q6k"};
  if (!modes.count(o.dtype))
    fail("--dtype must be one of keep, f32, bf16, q8, q4, q4k, q5k, q6k; not '" + o.dtype + "'");
  if (o.ranks < 0) fail("--ranks must be >= 1");
  if (o.out.empty()) fail("--out: no folder given");
  fs::path out = fs::absolute(fs::path(o.out)).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "dir/" → "dir"
  if (!path_exists(o.model)) fail(o.model + ": no such file or folder");
  const fs::path src = fs::absolute(fs::path(o.model)).lexically_normal();
  if (src == out || (is_regular_path(src) && src.parent_path() == out))
    fail(o.out + ": is the source itself; choose another --out");

  RepackResult res;
  res.out = out.string();
  const std::vector<SourceFileStamp> stamps = fingerprint_source(o.model);
  if (path_exists(out)) {
    if (!is_directory_path(out)) fail(o.out + ": exists and is not a folder");
    if (looks_like_cache(out)) {
      const std::string why = stale_reason(out, o, stamps);
      if (why.empty()) {
        res.cache_hit = true;
        return res;
      }
      log("rebuilding " + out.string() + ": " + why);
    } else if (!list_directory(out).empty()) {
      fail(o.out + ": exists, is not empty and holds no mixtral cache; refusing to replace it "
           "(choose another --out or remove it)");
    }
  }
  {
    std::error_code ec;
    fs::create_directories(out.parent_path(), ec);
    if (ec) fail(out.parent_path().string() + ": cannot create: " + ec.message());
  }
  for (const fs::path& e : list_directory(out.parent_path()))
    if (e.filename().string().rfind(out.filename().string() + ".tmp-", 0) == 0)
      log("note: " + e.string() + " is left over from an interrupted repack; delete it");

  const LoadedModel m = load_model(o.model);
  const ModelConfig& c = m.config;
  // More ranks than experts split each expert's hidden rows (formats/expert_split.h); a rank
  // still lists its expert's whole file, of which it maps only its part.
  if (o.ranks > c.n_experts)
    expert_rows(c.ffn_dim, (o.ranks + c.n_experts - 1) / c.n_experts, 0,
                "--ranks " + std::to_string(o.ranks) + ": " + o.model + ": expert hidden size");

  const fs::path tmp = out.string() + ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);  // ours from a previous process with this pid: never a live one
  fs::create_directory(tmp, ec);
  if (ec) fail(tmp.string() + ": cannot create: " + ec.message());

  try {
    CacheManifest mf;
    mf.created_by = std::string("mixtral ") + MIXTRAL_VERSION;
    mf.dtype = o.dtype;
    mf.config = c;
    mf.source_path = src.string();
    mf.source_layout = m.layout;
    mf.source_files = stamps;
    mf.bos_id = m.tokenizer.bos_id;
    mf.eos_id = m.tokenizer.eos_id;
    mf.unk_id = m.tokenizer.unk_id;
    mf.add_dummy_prefix = m.tokenizer.add_dummy_prefix;
    mf.chat_template = m.tokenizer.chat_template;

    ThreadPool pool(o.threads);
    std::vector<std::vector<float>> scratch(static_cast<size_t>(pool.size()));
    std::vector<uint8_t> outbuf;
    const std::string header = cache_file_header();

    // Bytes of tensor data to write, for the progress callback.
    uint64_t total = 0, done = 0;
    {
      std::vector<std::string> scratch_notes;
      std::vector<std::string> all = shared_order(m);
      for (int e = 0; e < c.n_experts; ++e)
        for (auto& n : expert_order(m, e)) all.push_back(std::move(n));
      for (const auto& name : all) {
        const Tensor& t = m.store.get(name);
        total += static_cast<uint64_t>(t.rows()) * row_bytes(target_dtype(o.dtype, name, t, c, scratch_notes), t.cols());
      }
    }
    if (o.progress) o.progress(0, total);

    auto write_file = [&](const std::string& fname, const std::string& kind, int expert,
                          const std::vector<std::string>& names) {
      const auto f0 = std::chrono::steady_clock::now();
      FileWriter w((tmp / fname).string());
      w.write(header.data(), header.size());
      for (const auto& name : names) {
        const Tensor& t = m.store.get(name);
        const DType out_t = target_dtype(o.dtype, name, t, c, mf.notes);
        w.pad_to(kCacheAlignment);
        CacheTensorEntry e;
        e.name = name;
        e.file = fname;
        e.offset = w.offset();
        e.dtype = out_t;
        e.shape = t.shape;
        e.nbytes = static_cast<uint64_t>(t.rows()) * row_bytes(out_t, t.cols());
        e.expert = expert;
        write_tensor(w, t, out_t, pool, scratch, outbuf);
        m.store.release_pages(t);  // a 90 GB source must not stay resident
        done += e.nbytes;
        mf.tensors.push_back(std::move(e));
        if (o.progress) o.progress(done, total);
      }
      CacheFileEntry fe;
      fe.name = fname;
      fe.kind = kind;
      fe.expert = expert;
      fe.size = w.offset();
      fe.hash = w.close(o.sync);
      mf.files.push_back(fe);
      res.bytes += fe.size;
      ++res.files;
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
      char took[32];
      std::snprintf(took, sizeof took, " in %.2f s", s);
      log(fname + ": " + mb(fe.size) + took);
    };

    write_file(kCacheSharedFile, "shared", -1, shared_order(m));
    for (int e = 0; e < c.n_experts; ++e) write_file(cache_expert_file(e), "expert", e, expert_order(m, e));

    auto add_small = [&](const std::string& fname, const std::string& bytes) {
      FileWriter w((tmp / fname).string(), 1 << 20);
      w.write(bytes.data(), bytes.size());
      CacheFileEntry fe;
      fe.name = fname;
      fe.kind = "tokenizer";
      fe.size = w.offset();
      fe.hash = w.close(o.sync);
      mf.files.push_back(fe);
    };
    if (!m.tokenizer.model_path.empty()) {
      const std::string bytes = read_regular_file(m.tokenizer.model_path, uint64_t{256} << 20);
      add_small("tokenizer.model", bytes);
      mf.tokenizer_model_file = "tokenizer.model";
    }
    if (!m.tokenizer.pieces.empty()) {
      add_small("tokenizer.json", tokenizer_vocab_to_json(m.tokenizer));
      mf.tokenizer_vocab_file = "tokenizer.json";
    }
    if (o.dtype == "q8" || o.dtype == "q4" || is_kquant_mode(o.dtype))
      mf.notes.push_back("router weights (layers.*.gate) kept in f32: they choose the experts");
    if (o.dtype == "q4")
      mf.notes.push_back("LM head (output) and attention wk/wv kept in q8_0, as llama-quantize does");
    if (is_kquant_mode(o.dtype))
      mf.notes.push_back("types per tensor as llama-quantize's " +
                         std::string(o.dtype == "q4k" ? "Q4_K_M" : o.dtype == "q5k" ? "Q5_K_M" : "Q6_K") +
                         ": LM head q6_K" + (c.n_experts == 8 ? ", attention wk/wv q8_0" : "") +
                         (o.dtype == "q4k" && c.n_experts == 8 ? ", wo q5_K" : "") +
                         (o.dtype != "q6k" ? ", expert w2 of the outer and every third layer q6_K" : ""));
    if (mf.tokenizer_model_file.empty() && mf.tokenizer_vocab_file.empty())
      mf.notes.push_back("the source has no tokenizer; the cache has none either");

    if (o.ranks > 0) {
      mf.ranks = o.ranks;
      for (int r = 0; r < o.ranks; ++r) {
        // The default placement (LoadOptions): uneven counts give the first ranks one more.
        const LoadOptions lo{r, o.ranks};
        std::vector<std::string> files;
        for (const auto& f : mf.files)
          if (f.kind != "expert" || lo.owns_expert(f.expert, c.n_experts))
            files.push_back(f.name);
        mf.rank_files.push_back(files);
      }
    }

    // The manifest last: its presence is what makes the folder a cache.
    const std::string text = manifest_to_json(mf);
    parse_cache_manifest(text, (tmp / kCacheManifest).string());  // what we write must read back
    FileWriter w((tmp / kCacheManifest).string(), 1 << 20);
    w.write(text.data(), text.size());
    w.close(o.sync);
    if (o.sync) fsync_dir(tmp);
    install(tmp, out);
    res.notes = mf.notes;
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace mx
