#include "formats/zip_reader.h"

#include <cstring>
#include <limits>

#include "formats/error.h"

namespace mx {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kZip64EocdSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kEocdSize = 22;
constexpr size_t kZip64LocatorSize = 20;
constexpr size_t kZip64EocdSize = 56;  // fixed part
constexpr size_t kCentralSize = 46;
constexpr size_t kLocalSize = 30;

// Zip is little-endian throughout; byte-wise reads also avoid unaligned loads.
uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t rd64(const uint8_t* p) {
  return static_cast<uint64_t>(rd32(p)) | (static_cast<uint64_t>(rd32(p + 4)) << 32);
}

const char* method_name(uint16_t m) {
  switch (m) {
    case 8: return "deflate";
    case 9: return "deflate64";
    case 12: return "bzip2";
    case 14: return "lzma";
    case 93: return "zstd";
    default: return "unknown";
  }
}

}  // namespace

ZipReader ZipReader::open(const std::string& path) { return ZipReader(MappedFile::open(path)); }

ZipReader::ZipReader(std::shared_ptr<MappedFile> file) : file_(std::move(file)) { parse(); }

void ZipReader::parse() {
  const uint8_t* d = file_->data();
  const size_t n = file_->size();
  const std::string& path = file_->path();
  if (n < kEocdSize) fail(path + ": not a zip archive (too short)");

  // The end-of-central-directory record is the last thing in the file, followed only by its
  // comment (<= 64 KiB); take the last signature whose comment reaches exactly the end.
  size_t eocd = std::numeric_limits<size_t>::max();
  const size_t lowest = n > kEocdSize + 0xffff ? n - kEocdSize - 0xffff : 0;
  for (size_t p = n - kEocdSize;; --p) {
    if (rd32(d + p) == kEocdSig && p + kEocdSize + rd16(d + p + 20) == n) {
      eocd = p;
      break;
    }
    if (p == lowest) break;
  }
  if (eocd == std::numeric_limits<size_t>::max())
    fail(path + ": not a zip archive, or truncated (no end-of-central-directory record)");

  const uint8_t* e = d + eocd;
  uint64_t disk = rd16(e + 4), cd_disk = rd16(e + 6);
  uint64_t count_here = rd16(e + 8), count = rd16(e + 10);
  uint64_t cd_size = rd32(e + 12), cd_off = rd32(e + 16);
  size_t cd_limit = eocd;  // the central directory must end before the records that follow it

  // torch writes the ZIP64 records whenever the archive might exceed 4 GiB; they sit right
  // before the classic record and override its (then saturated) fields.
  if (eocd >= kZip64LocatorSize && rd32(e - kZip64LocatorSize) == kZip64LocatorSig) {
    const uint8_t* loc = e - kZip64LocatorSize;
    const uint64_t z_off = rd64(loc + 8);
    if (rd32(loc + 16) > 1) fail(path + ": multi-disk zip archives are not supported");
    const size_t loc_pos = eocd - kZip64LocatorSize;
    if (z_off > loc_pos || loc_pos - z_off < kZip64EocdSize)
      fail(path + ": ZIP64 end-of-central-directory locator points outside the file");
    const uint8_t* z = d + z_off;
    if (rd32(z) != kZip64EocdSig)
      fail(path + ": corrupt ZIP64 end-of-central-directory record (bad signature)");
    disk = rd32(z + 16);
    cd_disk = rd32(z + 20);
    count_here = rd64(z + 24);
    count = rd64(z + 32);
    cd_size = rd64(z + 40);
    cd_off = rd64(z + 48);
    cd_limit = static_cast<size_t>(z_off);
  } else if (count == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
    fail(path + ": end-of-central-directory record needs ZIP64 records, which are missing");
  }
  if (disk != 0 || cd_disk != 0 || count_here != count)
    fail(path + ": multi-disk zip archives are not supported");
  if (cd_off > cd_limit || cd_size > cd_limit - cd_off)
    fail(path + ": central directory lies outside the file (truncated or corrupt)");
  if (count > cd_size / kCentralSize)
    fail(path + ": corrupt central directory (" + std::to_string(count) +
         " entries cannot fit in " + std::to_string(cd_size) + " bytes)");

  entries_.reserve(static_cast<size_t>(count));
  size_t p = static_cast<size_t>(cd_off);
  const size_t cd_end = static_cast<size_t>(cd_off + cd_size);
  for (uint64_t i = 0; i < count; ++i) {
    const std::string where = path + ": corrupt central directory (entry " + std::to_string(i);
    if (cd_end - p < kCentralSize || rd32(d + p) != kCentralSig) fail(where + ": bad signature)");
    const uint8_t* c = d + p;
    const uint16_t flags = rd16(c + 8);
    const uint16_t method = rd16(c + 10);
    uint64_t csize = rd32(c + 20), usize = rd32(c + 24);
    const size_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
    uint64_t disk_start = rd16(c + 34);
    uint64_t lho = rd32(c + 42);
    if (cd_end - p - kCentralSize < nlen + xlen + clen) fail(where + ": runs past its end)");
    ZipEntry ent;
    ent.name.assign(reinterpret_cast<const char*>(c + kCentralSize), nlen);

    // ZIP64 extended information (id 1) carries, in this order, only the fields that are
    // saturated in the fixed part.
    const uint8_t* x = c + kCentralSize + nlen;
    size_t xl = xlen;
    while (xl >= 4) {
      const uint16_t id = rd16(x);
      const size_t sz = rd16(x + 2);
      if (sz > xl - 4) fail(path + ": corrupt extra field in entry '" + ent.name + "'");
      if (id == 1) {
        const uint8_t* z = x + 4;
        size_t zl = sz;
        auto take = [&](uint64_t& v, size_t bytes, const char* what) {
          if (zl < bytes)
            fail(path + ": ZIP64 extra field of entry '" + ent.name + "' lacks the " + what);
          v = bytes == 8 ? rd64(z) : rd32(z);
          z += bytes;
          zl -= bytes;
        };
        if (usize == 0xffffffffu) take(usize, 8, "size");
        if (csize == 0xffffffffu) take(csize, 8, "compressed size");
        if (lho == 0xffffffffu) take(lho, 8, "local header offset");
        if (disk_start == 0xffff) take(disk_start, 4, "disk number");
      }
      x += 4 + sz;
      xl -= 4 + sz;
    }
    if (disk_start != 0) fail(path + ": multi-disk zip archives are not supported");

    // Local header: only its name/extra lengths matter (sizes may be deferred to a data
    // descriptor or saturated), the central directory is authoritative.
    const std::string ewhere = path + ": zip entry '" + ent.name + "'";
    if (lho > cd_off || cd_off - lho < kLocalSize)
      fail(ewhere + ": local header offset outside the file (truncated or corrupt)");
    const uint8_t* l = d + lho;
    if (rd32(l) != kLocalSig) fail(ewhere + ": bad local header signature");
    const size_t lnlen = rd16(l + 26), lxlen = rd16(l + 28);
    const uint64_t data_off = lho + kLocalSize + lnlen + lxlen;
    if (data_off > cd_off || csize > cd_off - data_off)
      fail(ewhere + ": data runs past the start of the central directory (truncated or corrupt)");
    if (lnlen != nlen || std::memcmp(l + kLocalSize, ent.name.data(), nlen) != 0)
      fail(ewhere + ": local header names a different entry");
    if (method == 0 && csize != usize)
      fail(ewhere + ": stored entry whose compressed size differs from its size");

    ent.method = method;
    ent.flags = flags;
    ent.compressed_size = csize;
    ent.size = usize;
    ent.local_header_offset = lho;
    ent.data_offset = data_off;
    if (!by_name_.emplace(ent.name, entries_.size()).second)
      fail(ewhere + ": appears twice in the central directory");
    entries_.push_back(std::move(ent));
    p += kCentralSize + nlen + xlen + clen;
  }
}

const ZipEntry* ZipReader::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

std::span<const uint8_t> ZipReader::data(const ZipEntry& e) const {
  if (e.flags & 1u) fail(path() + ": zip entry '" + e.name + "' is encrypted");
  if (e.method != 0)
    fail(path() + ": zip entry '" + e.name + "' is compressed (method " + std::to_string(e.method) +
         ", " + method_name(e.method) + "); only stored entries are supported");
  if (e.data_offset > file_->size() || e.size > file_->size() - e.data_offset)
    fail(path() + ": zip entry '" + e.name + "' lies outside the file");
  return {file_->data() + e.data_offset, static_cast<size_t>(e.size)};
}

std::span<const uint8_t> ZipReader::data(std::string_view name) const {
  const ZipEntry* e = find(name);
  if (e == nullptr) fail(path() + ": missing zip entry '" + std::string(name) + "'");
  return data(*e);
}

}  // namespace mx
