#include "runtime/memory_info.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "formats/error.h"

namespace mx {

namespace {
constexpr uint64_t kMiB = 1024ull * 1024;
}  // namespace

uint64_t available_memory_bytes(std::string* source) {
  if (const char* env = std::getenv("MIXTRAL_DEMO_MEM_LIMIT_MB"); env && *env) {
    char* end = nullptr;
    const unsigned long long mb = std::strtoull(env, &end, 10);
    if (end == env || *end != '\0')
      fail("MIXTRAL_DEMO_MEM_LIMIT_MB must be a whole number of MiB, not '" + std::string(env) + "'");
    if (source) *source = "MIXTRAL_DEMO_MEM_LIMIT_MB";
    return static_cast<uint64_t>(mb) * kMiB;
  }
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line)) {
    unsigned long long kb = 0;
    if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &kb) == 1) {
      if (source) *source = "MemAvailable in /proc/meminfo";
      return static_cast<uint64_t>(kb) * 1024;
    }
  }
  // Without /proc/meminfo there is nothing to check against; do not block the run.
  if (source) *source = "unknown (no MemAvailable in /proc/meminfo)";
  return UINT64_MAX;
}

std::string format_bytes(uint64_t n) {
  char buf[64];
  if (n >= 1024ull * kMiB) {
    std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(n) / (1024.0 * kMiB));
  } else if (n >= kMiB) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(n) / kMiB);
  } else if (n >= 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(n) / 1024.0);
  } else {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  }
  return buf;
}

}  // namespace mx
