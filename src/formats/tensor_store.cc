#include "formats/tensor_store.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <sstream>

#include "formats/error.h"

namespace mx {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

const Tensor& TensorStore::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail(source + ": missing tensor " + name);
  return it->second;
}

void TensorStore::release_pages(const Tensor& t) const {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto b = reinterpret_cast<uintptr_t>(t.data), e = b + t.nbytes();
  for (const auto& f : files) {
    const auto fb = reinterpret_cast<uintptr_t>(f->data()), fe = fb + f->size();
    if (b < fb || e > fe) continue;
    // The mapping starts page-aligned; file-backed clean pages are safe to drop.
    const uintptr_t s = b / page * page, end = std::min(fe, (e + page - 1) / page * page);
    if (end > s) ::madvise(reinterpret_cast<void*>(s), end - s, MADV_DONTNEED);
    return;
  }
}

uint8_t* TensorStore::alloc(size_t n) {
  // Over-allocate and align by hand so that the unique_ptr owns the original pointer.
  owned.emplace_back(new uint8_t[n + 64]);
  auto p = reinterpret_cast<uintptr_t>(owned.back().get());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t{63});
}

}  // namespace mx
