// Read-only view of a zip archive in an mmap, enough for torch.save checkpoints: the central
// directory (with the ZIP64 end records and ZIP64 extra fields torch writes for large files) is
// parsed up front, and stored (uncompressed) entries are handed out as pointers into the map.
// Compressed entries are listed but refused when read: torch never compresses tensor data.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "formats/mapped_file.h"

namespace mx {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflate, ...
  uint16_t flags = 0;   // general-purpose bits (bit 0: encrypted)
  uint64_t compressed_size = 0;
  uint64_t size = 0;  // uncompressed
  uint64_t local_header_offset = 0;
  uint64_t data_offset = 0;  // first byte of the entry's data in the file
};

class ZipReader {
 public:
  // Maps `path` and parses it; throws mx::Error naming the path on anything malformed.
  static ZipReader open(const std::string& path);
  // Parses an already mapped file.
  explicit ZipReader(std::shared_ptr<MappedFile> file);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(std::string_view name) const;  // nullptr when absent
  // The bytes of a stored entry, pointing into the mmap. Throws mx::Error naming the archive
  // and the entry when it is compressed (or encrypted) or missing.
  std::span<const uint8_t> data(const ZipEntry& e) const;
  std::span<const uint8_t> data(std::string_view name) const;

  const std::shared_ptr<MappedFile>& file() const { return file_; }
  const std::string& path() const { return file_->path(); }

 private:
  void parse();

  std::shared_ptr<MappedFile> file_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

}  // namespace mx
