// libFuzzer harness: a weight-cache manifest.json through load_weight_cache (whole model, and
// rank 1 of 3) + check_tensors and verify_weight_cache, in a folder whose data files are those
// of a real cache repacked once at start-up from the tiny HF fixture (symlinked). The config
// harness only parses manifests; here an accepted one goes on to open the files it names, check
// their sizes, headers and checksums, and map its tensor views.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "formats/model_loader.h"
#include "formats/repack.h"
#include "formats/weight_cache.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mx::fuzz::ScratchDir dir;
  static const bool ready = [] {
    try {
      mx::RepackOptions o;
      o.model = mx::fuzz::test_data("tiny-mixtral/hf");
      o.out = dir.file("src");
      o.threads = 1;
      o.sync = false;
      mx::repack(o);
      std::filesystem::create_directory(dir.file("c"));
      for (const auto& e : std::filesystem::directory_iterator(dir.file("src")))
        if (e.path().filename() != "manifest.json") dir.link("c/" + e.path().filename().string(), e.path().string());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cache_fuzz: cannot set up the cache: %s\n", e.what());
      std::abort();
    }
    return true;
  }();
  (void)ready;
  const std::string cache = dir.file("c");
  dir.write("c/manifest.json", data, size);
  for (int rank : {0, 1}) {
    mx::LoadOptions opts;
    opts.rank = rank;
    opts.n_ranks = rank == 0 ? 1 : 3;
    mx::fuzz::expect_clean([&] {
      const mx::LoadedModel m = mx::load_weight_cache(cache, opts);
      mx::check_tensors(m, opts);
      for (const auto& [name, t] : m.store.tensors) mx::fuzz::touch(t);
    });
  }
  mx::fuzz::expect_clean([&] { mx::verify_weight_cache(cache, {}); });
  return 0;
}
