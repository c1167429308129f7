// Writing weight files: a 64-bit streaming hash (XXH64), a buffered file writer that hashes
// what it writes and overlaps disk writes with the caller's work, and a streaming
// safetensors writer (header first, then tensor bytes in order, never the whole model).
#pragma once
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

// XXH64 (seed 0), bit-for-bit the published algorithm, so `xxhsum -H64 FILE` gives the same
// value. Fast enough (~10 GB/s) to checksum every byte a repack writes.
class Hash64 {
 public:
  void update(const void* data, size_t n);
  uint64_t digest() const;  // of everything so far; update() may continue afterwards
  static uint64_t of(const void* data, size_t n);

 private:
  uint64_t v_[4] = {0x60ea27eeadc0b5d6ULL, 0xc2b2ae3d27d4eb4fULL, 0, 0x61c8864e7a143579ULL};
  uint64_t total_ = 0;
  uint8_t buf_[32];
  size_t buf_n_ = 0;
};

std::string hex64(uint64_t v);                  // 16 lower-case hex digits
bool parse_hex64(const std::string& s, uint64_t* out);

// Creates/truncates `path`; write() fills a buffer that a background task writes out while
// the caller fills the next one. Errors (ENOSPC, EIO, ...) surface as mx::Error naming the
// path from the next write() or from close().
class FileWriter {
 public:
  explicit FileWriter(const std::string& path, size_t buffer_bytes = size_t{16} << 20);
  ~FileWriter();  // abandons an unclosed file (error paths); never throws
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, size_t n);
  void write_zeros(size_t n);
  void pad_to(size_t alignment) { write_zeros((alignment - offset_ % alignment) % alignment); }
  uint64_t offset() const { return offset_; }  // bytes written so far (including buffered)
  // Flushes, optionally fsyncs, closes. Returns the hash of the whole file.
  uint64_t close(bool sync);
  const std::string& path() const { return path_; }

 private:
  void flush_buffer();
  void wait_pending();

  std::string path_;
  int fd_ = -1;
  std::vector<uint8_t> bufs_[2];
  int cur_ = 0;
  size_t fill_ = 0;
  uint64_t offset_ = 0;
  Hash64 hash_;
  std::future<void> pending_;
};

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::BF16;  // F32, F16, BF16, I32, I64 or U8 (safetensors has no block types)
  std::vector<int64_t> shape;
  size_t nbytes() const;
};

// Writes the header for `entries` at once; the caller then passes exactly each tensor's bytes,
// in the order of `entries`, through write(), and calls finish().
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, std::vector<SafetensorsEntry> entries,
                    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  void write(const void* data, size_t n);
  // Checks that every tensor got all its bytes; returns the file's hash.
  uint64_t finish(bool sync = false);
  uint64_t data_bytes() const { return total_; }

 private:
  FileWriter out_;
  std::vector<SafetensorsEntry> entries_;
  uint64_t total_ = 0, written_ = 0;
};

// "F32", "BF16", ... as safetensors spells them; throws for block types.
std::string safetensors_dtype_name(DType t);

}  // namespace mx
