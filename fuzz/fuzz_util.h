// What the libFuzzer harnesses share: the input as a file the real loaders can open, a scratch
// folder for loaders that read sibling files, and the rule that only mx::Error is an expected
// outcome. Any other exception escaping a loader is a bug (an unclear message at best), so it
// aborts and the fuzzer records the input.
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "formats/error.h"
#include "formats/tensor.h"

namespace mx::fuzz {

// An anonymous in-memory file (memfd), rewritten for each input. Its path /proc/self/fd/N is a
// regular file to open_regular_file and mmap, and nothing is left on disk if the run dies.
class MemFile {
 public:
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  MemFile() : fd_(memfd_create("mixtral-fuzz", MFD_CLOEXEC)) {
    if (fd_ < 0) std::abort();
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { close(fd_); }
  const std::string& set(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0 || ftruncate(fd_, static_cast<off_t>(size)) != 0) std::abort();
    for (size_t done = 0; done < size;) {
      const ssize_t n = pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

// A private folder under $TMPDIR (else /tmp), removed when the process exits normally (libFuzzer
// returns from main after -max_total_time / -runs). Harnesses overwrite the same few names per
// input, so it never grows; a crashed run leaves one small folder named mixtral-fuzz-*.
class ScratchDir {
 public:
  ScratchDir() {
    const char* t = std::getenv("TMPDIR");
    std::string templ = std::string(t && *t ? t : "/tmp") + "/mixtral-fuzz-XXXXXX";
    if (!mkdtemp(templ.data())) std::abort();
    path_ = templ;
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  void write(const std::string& name, const void* data, size_t size) const {
    const std::string p = file(name);
    FILE* f = std::fopen(p.c_str(), "wb");
    if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) std::abort();
  }
  void write(const std::string& name, const std::string& s) const { write(name, s.data(), s.size()); }
  void link(const std::string& name, const std::string& target) const {
    std::error_code ec;
    std::filesystem::create_symlink(target, file(name), ec);
    if (ec) std::abort();
  }

 private:
  std::string path_;
};

// Runs f; mx::Error is a clean refusal, anything else aborts with its message.
// MIXTRAL_FUZZ_VERBOSE=1 prints the refusals (to see how far a seed gets).
template <typename F>
void expect_clean(F&& f) {
  static const bool verbose = std::getenv("MIXTRAL_FUZZ_VERBOSE") != nullptr;
  try {
    f();
  } catch (const Error& e) {
    if (verbose) std::fprintf(stderr, "refused: %.300s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "non-mx::Error exception escaped: %s\n", e.what());
    std::abort();
  }
}

// The tiny model the hand-built seeds describe (fuzz/make_seeds.py): dim 8, one layer, 2 heads
// of 4, 1 KV head, ffn 16, 2 experts, 267 tokens.
inline const char* kSmallParamsJson =
    R"({"dim": 8, "n_layers": 1, "head_dim": 4, "hidden_dim": 16, "n_heads": 2, "n_kv_heads": 1,)"
    R"( "norm_eps": 1e-05, "vocab_size": 267, "moe": {"num_experts": 2, "num_experts_per_tok": 2}})";

inline std::string test_data(const std::string& rel) { return std::string(MIXTRAL_TEST_DATA) + "/" + rel; }

// A tensor view must lie inside its mapping: reading both ends lets ASan check it.
inline void touch(const Tensor& t) {
  if (t.nbytes() == 0) return;
  volatile uint8_t first = t.data[0], last = t.data[t.nbytes() - 1];
  (void)first, (void)last;
}

}  // namespace mx::fuzz
