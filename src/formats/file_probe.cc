#include "formats/file_probe.h"

#include <system_error>

#include "formats/error.h"

namespace fs = std::filesystem;

namespace mx {

namespace {

fs::file_status probe(const fs::path& p) {
  std::error_code ec;
  const fs::file_status s = fs::status(p, ec);
  // status() reports a missing path (or a missing folder on the way) as an error too.
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
    fail(p.string() + ": cannot be checked: " + ec.message());
  return s;
}

}  // namespace

bool path_exists(const fs::path& p) { return fs::exists(probe(p)); }
bool is_regular_path(const fs::path& p) { return fs::is_regular_file(probe(p)); }
bool is_directory_path(const fs::path& p) { return fs::is_directory(probe(p)); }

std::vector<fs::path> list_directory(const fs::path& dir) {
  std::error_code ec;
  std::vector<fs::path> out;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) out.push_back(it->path());
  if (ec) fail(dir.string() + ": cannot list the folder: " + ec.message());
  return out;
}

}  // namespace mx
