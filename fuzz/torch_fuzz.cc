// libFuzzer harness: a .pth file (zip archive + data.pkl pickle + storages) through
// load_torch_checkpoint, in a folder whose params.json describes the small seed model
// (fuzz_util.h), so that a well-formed archive reaches the tensor views and shape checks. The
// zip reader is also walked on its own: every entry's bytes, stored or refused.
#include "formats/model_loader.h"
#include "formats/torch_checkpoint.h"
#include "formats/zip_reader.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mx::fuzz::ScratchDir dir;
  static const bool ready = [] {
    dir.write("params.json", std::string(mx::fuzz::kSmallParamsJson));
    return true;
  }();
  (void)ready;
  dir.write("consolidated.00.pth", data, size);
  mx::fuzz::expect_clean([&] {
    const mx::ZipReader zip = mx::ZipReader::open(dir.file("consolidated.00.pth"));
    for (const mx::ZipEntry& e : zip.entries())
      mx::fuzz::expect_clean([&] {
        const auto bytes = zip.data(e);
        if (!bytes.empty()) {
          volatile uint8_t first = bytes.front(), last = bytes.back();
          (void)first, (void)last;
        }
      });
  });
  mx::fuzz::expect_clean([&] {
    const mx::LoadedModel m = mx::load_torch_checkpoint(dir.path(), {});
    mx::check_tensors(m, {});
  });
  return 0;
}
