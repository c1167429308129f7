#include "formats/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/tensor.h"

namespace mx {

// ---- XXH64 ---------------------------------------------------------------------------------

namespace {

constexpr uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL,
                   P3 = 0x165667B19E3779F9ULL, P4 = 0x85EBCA77C2B2AE63ULL,
                   P5 = 0x27D4EB2F165667C5ULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;  // little-endian hosts only (x86-64), like every file format here
}
inline uint32_t read32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t round64(uint64_t acc, uint64_t in) {
  acc += in * P2;
  acc = rotl(acc, 31);
  return acc * P1;
}
inline uint64_t merge(uint64_t h, uint64_t v) {
  h ^= round64(0, v);
  return h * P1 + P4;
}

}  // namespace

void Hash64::update(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  total_ += n;
  if (buf_n_ + n < 32) {
    std::memcpy(buf_ + buf_n_, p, n);
    buf_n_ += n;
    return;
  }
  if (buf_n_ > 0) {
    const size_t take = 32 - buf_n_;
    std::memcpy(buf_ + buf_n_, p, take);
    for (int i = 0; i < 4; ++i) v_[i] = round64(v_[i], read64(buf_ + 8 * i));
    p += take;
    n -= take;
    buf_n_ = 0;
  }
  // Four independent lanes: the loop the whole speed depends on.
  uint64_t a = v_[0], b = v_[1], c = v_[2], d = v_[3];
  while (n >= 32) {
    a = round64(a, read64(p));
    b = round64(b, read64(p + 8));
    c = round64(c, read64(p + 16));
    d = round64(d, read64(p + 24));
    p += 32;
    n -= 32;
  }
  v_[0] = a, v_[1] = b, v_[2] = c, v_[3] = d;
  std::memcpy(buf_, p, n);
  buf_n_ = n;
}

uint64_t Hash64::digest() const {
  uint64_t h;
  if (total_ >= 32) {
    h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18);
    for (int i = 0; i < 4; ++i) h = merge(h, v_[i]);
  } else {
    h = P5;  // seed 0
  }
  h += total_;
  const uint8_t* p = buf_;
  size_t n = buf_n_;
  while (n >= 8) {
    h ^= round64(0, read64(p));
    h = rotl(h, 27) * P1 + P4;
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    h ^= static_cast<uint64_t>(read32(p)) * P1;
    h = rotl(h, 23) * P2 + P3;
    p += 4;
    n -= 4;
  }
  while (n > 0) {
    h ^= *p * P5;
    h = rotl(h, 11) * P1;
    ++p;
    --n;
  }
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

uint64_t Hash64::of(const void* data, size_t n) {
  Hash64 h;
  h.update(data, n);
  return h.digest();
}

std::string hex64(uint64_t v) {
  char s[17];
  std::snprintf(s, sizeof s, "%016llx", static_cast<unsigned long long>(v));
  return s;
}

bool parse_hex64(const std::string& s, uint64_t* out) {
  if (s.size() != 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return false;
    v = v << 4 | static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

// ---- FileWriter ----------------------------------------------------------------------------

FileWriter::FileWriter(const std::string& path, size_t buffer_bytes) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(path + ": cannot create: " + std::strerror(errno));
  const size_t b = buffer_bytes < 4096 ? 4096 : buffer_bytes;
  bufs_[0].resize(b);
  bufs_[1].resize(b);
}

FileWriter::~FileWriter() {
  if (pending_.valid()) {
    try {
      pending_.get();
    } catch (...) {
    }
  }
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::wait_pending() {
  if (pending_.valid()) pending_.get();  // rethrows the background write's error
}

void FileWriter::flush_buffer() {
  if (fill_ == 0) return;
  wait_pending();
  const uint8_t* data = bufs_[cur_].data();
  const size_t n = fill_;
  // The background task owns buffer `cur_` until the next wait_pending(); hashing runs there
  // too, so checksums cost the caller nothing.
  pending_ = std::async(std::launch::async, [this, data, n] {
    size_t done = 0;
    while (done < n) {
      const ssize_t w = ::write(fd_, data + done, n - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail(path_ + ": write failed: " + std::strerror(errno));
      }
      done += static_cast<size_t>(w);
    }
    hash_.update(data, n);
  });
  cur_ ^= 1;
  fill_ = 0;
}

void FileWriter::write(const void* data, size_t n) {
  if (fd_ < 0) fail(path_ + ": write after close");
  const auto* p = static_cast<const uint8_t*>(data);
  offset_ += n;
  while (n > 0) {
    const size_t take = std::min(n, bufs_[cur_].size() - fill_);
    std::memcpy(bufs_[cur_].data() + fill_, p, take);
    fill_ += take;
    p += take;
    n -= take;
    if (fill_ == bufs_[cur_].size()) flush_buffer();
  }
}

void FileWriter::write_zeros(size_t n) {
  static const uint8_t zeros[4096] = {};
  while (n > 0) {
    const size_t take = std::min(n, sizeof zeros);
    write(zeros, take);
    n -= take;
  }
}

uint64_t FileWriter::close(bool sync) {
  if (fd_ < 0) fail(path_ + ": closed twice");
  flush_buffer();
  wait_pending();
  if (sync && ::fsync(fd_) != 0) fail(path_ + ": fsync failed: " + std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(path_ + ": close failed: " + std::strerror(errno));
  bufs_[0] = {};
  bufs_[1] = {};
  return hash_.digest();
}

// ---- SafetensorsWriter ---------------------------------------------------------------------

std::string safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
    default: fail("safetensors cannot store " + std::string(dtype_info(t).name) + " tensors");
  }
}

size_t SafetensorsEntry::nbytes() const {
  size_t n = static_cast<size_t>(dtype_info(dtype).block_bytes);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<SafetensorsEntry> entries,
                                     const std::map<std::string, std::string>& metadata)
    : out_(path), entries_(std::move(entries)) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  for (const auto& e : entries_) {
    if (h.contains(e.name)) fail(path + ": tensor " + e.name + " given twice");
    for (int64_t d : e.shape)
      if (d < 0) fail(path + ": tensor " + e.name + " has a negative dimension");
    const uint64_t n = e.nbytes();
    h[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)},
                 {"shape", e.shape},
                 {"data_offsets", {total_, total_ + n}}};
    total_ += n;
  }
  std::string s = h.dump();
  // Pad with spaces so that the data starts 8-byte aligned, as the reference writer does.
  s.append((8 - (8 + s.size()) % 8) % 8, ' ');
  const uint64_t len = s.size();
  out_.write(&len, 8);
  out_.write(s.data(), s.size());
}

void SafetensorsWriter::write(const void* data, size_t n) {
  if (written_ + n > total_)
    fail(out_.path() + ": more tensor bytes written than the header declares");
  out_.write(data, n);
  written_ += n;
}

uint64_t SafetensorsWriter::finish(bool sync) {
  if (written_ != total_)
    fail(out_.path() + ": " + std::to_string(written_) + " tensor bytes written, header declares " +
         std::to_string(total_));
  return out_.close(sync);
}

}  // namespace mx
