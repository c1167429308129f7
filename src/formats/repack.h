// `mixtral repack`: converts any checkpoint load_model reads into the weight cache of
// weight_cache.h, tensor by tensor (memory stays at a few buffers), into DIR.tmp-<pid>/ which
// is fsynced and then renamed to DIR, so an interrupted run never leaves a loadable cache.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mx {

struct RepackOptions {
  std::string model;           // source: anything load_model reads (also another cache)
  std::string out;             // the cache folder to create or replace
  std::string dtype = "keep";  // keep | f32 | bf16 | q8 | q4
  int ranks = 0;               // >0: write a `ranks` section for that many ranks
  int threads = 0;             // conversion threads (0: all cores)
  bool sync = true;            // fsync files before the rename (tests may skip it)
  std::function<void(const std::string&)> log;  // per-file lines and notes; may be empty
  // Called after each tensor with the bytes written so far and the total to write; may be empty.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct RepackResult {
  bool cache_hit = false;  // DIR was already up to date; nothing was written
  std::string out;         // the cache folder
  uint64_t bytes = 0;      // bytes written
  int files = 0;           // weight files written
  double seconds = 0;
  std::vector<std::string> notes;  // e.g. tensors kept in f32 and why
};

// Throws mx::Error naming the source, DIR or tensor and the problem. A failed run removes
// its temporary folder and leaves an existing DIR untouched.
RepackResult repack(const RepackOptions& o);

}  // namespace mx
