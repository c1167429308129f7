// The weight cache `mixtral repack` writes (format: docs/cache-format.md) and its loader.
//
//   DIR/manifest.json      config, tokenizer, source fingerprint, file checksums, tensor table
//   DIR/shared.bin         embeddings, attention, norms, routers, LM head
//   DIR/expert-EEE.bin     every layer's w1, w3, w2 of expert EEE (a host copies only its own)
//   DIR/tokenizer.model    when the source had one; else DIR/tokenizer.json (GGUF vocabulary)
//
// Each .bin starts with a 64-byte header (magic "MXWCACHE", u32 version); every tensor starts at
// a 64-byte aligned offset and is stored row-major in its dtype, so tensors are zero-copy views
// of the mmap. The manifest is written last and the folder renamed into place, so a folder
// with a manifest is complete.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "formats/loaded_model.h"
#include "kernels/dtype.h"

namespace mx {

constexpr int kCacheFormatVersion = 1;
constexpr uint64_t kCacheAlignment = 64;
constexpr uint64_t kCacheHeaderBytes = 64;
inline constexpr char kCacheMagic[8] = {'M', 'X', 'W', 'C', 'A', 'C', 'H', 'E'};
inline constexpr const char* kCacheFormatName = "mixtral-weight-cache";
inline constexpr const char* kCacheManifest = "manifest.json";
inline constexpr const char* kCacheSharedFile = "shared.bin";

std::string cache_expert_file(int expert);  // "expert-003.bin"
// The expert index of a canonical expert tensor name ("layers.L.experts.E.wN"), else -1.
int canonical_expert(const std::string& canonical_name);
// The 64-byte header every .bin file starts with.
std::string cache_file_header();

// A source file's identity, cheap to take even for 90 GB of weights: size, mtime and the
// XXH64 of its first 1 MiB (which holds every format's header).
struct SourceFileStamp {
  std::string name;  // relative to the source folder (or the file name for a single file)
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t head_hash = 0;
  bool operator==(const SourceFileStamp&) const = default;
};
// Stamps of every regular file of a source folder (sorted by name), or of a single source
// file plus the tokenizer.model next to it when present.
std::vector<SourceFileStamp> fingerprint_source(const std::string& model_path);

struct CacheFileEntry {
  std::string name;   // plain file name inside DIR
  std::string kind;   // "shared", "expert" or "tokenizer"
  int expert = -1;    // for kind "expert"
  uint64_t size = 0;
  uint64_t hash = 0;  // XXH64 of the whole file
};

struct CacheTensorEntry {
  std::string name;  // canonical (tensor_store.h)
  std::string file;
  uint64_t offset = 0, nbytes = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int expert = -1;  // canonical_expert(name)
};

struct CacheManifest {
  int version = kCacheFormatVersion;
  std::string created_by;
  std::string dtype;  // what repack was asked for: "keep", "f32", "bf16", "q8", "q4",
                      // "q4k", "q5k", "q6k"
  ModelConfig config;
  std::string source_path, source_layout;
  std::vector<SourceFileStamp> source_files;
  // Tokenizer: file names inside DIR ("" when absent) and the ids/flags TokenizerSource has.
  std::string tokenizer_model_file, tokenizer_vocab_file;
  int bos_id = 1, eos_id = 2, unk_id = 0;
  bool add_dummy_prefix = true;
  std::string chat_template;
  std::vector<CacheFileEntry> files;
  std::vector<CacheTensorEntry> tensors;
  std::vector<std::string> notes;  // e.g. tensors kept in f32 and why
  int ranks = 0;                   // 0: written without --ranks
  std::vector<std::vector<std::string>> rank_files;  // [rank] -> files that rank needs

  const CacheFileEntry* file(const std::string& name) const;
};

std::string manifest_to_json(const CacheManifest& m);
// Parses and validates the structure: version, required fields and types, file names, every
// tensor's dtype/shape/size, its 64-byte alignment and its range inside its file's declared
// size. Throws mx::Error naming `path`, the field or tensor, and the problem.
CacheManifest parse_cache_manifest(const std::string& json_text, const std::string& path);
CacheManifest read_cache_manifest(const std::string& dir);

// tokenizer.json: a GGUF vocabulary (pieces, scores, types, bos/eos/unk ids). Pieces that are
// not valid UTF-8 are stored as {"hex": "..."}.
std::string tokenizer_vocab_to_json(const TokenizerSource& t);
void tokenizer_vocab_from_json(const std::string& json_text, const std::string& path,
                               TokenizerSource* t);

// Loads a cache folder (load_model calls this when DIR/manifest.json exists): maps shared.bin
// and the expert files of the experts `opts` owns; other experts' files may be absent.
// With MIXTRAL_VERIFY_CACHE=1 in the environment, every mapped file's checksum is verified.
LoadedModel load_weight_cache(const std::string& dir, const LoadOptions& opts);

// Re-hashes the files this rank needs and compares with the manifest; throws naming the first
// file that differs. (What MIXTRAL_VERIFY_CACHE=1 does; reads every byte.)
void verify_weight_cache(const std::string& dir, const LoadOptions& opts);

}  // namespace mx
