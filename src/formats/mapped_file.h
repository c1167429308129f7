// Read-only mmap of a whole file. Weights are never copied wholesale: tensors point into it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace mx {

// Every loader opens its input through these. O_NONBLOCK keeps open() from waiting for a
// writer when the path is a FIFO; anything but a regular file (FIFO, socket, device,
// directory) is then refused with "<path>: not a regular file".
// Returns an O_RDONLY|O_CLOEXEC descriptor the caller closes; *size_out gets the file size.
int open_regular_file(const std::string& path, uint64_t* size_out);
// The whole file, refused when larger than `max_bytes` (configs and manifests are small).
std::string read_regular_file(const std::string& path, uint64_t max_bytes);

class MappedFile {
 public:
  // Throws mx::Error naming the path when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Hint that [off, off+len) will be read soon / not needed (madvise); errors ignored.
  void advise_willneed(size_t off, size_t len) const;

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mx
