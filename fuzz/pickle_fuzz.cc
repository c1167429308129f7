// libFuzzer harness: raw bytes through the restricted unpickler and the state-dict walk, the
// part of a .pth/.pt load that interprets data.pkl (opcodes, memo, globals, persistent ids,
// tensor rebuilds) without the zip around it.
#include "formats/pickle.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mx::fuzz::expect_clean([&] {
    const mx::Unpickled u = mx::unpickle({data, size}, "data.pkl");
    mx::torch_state_dict(u, "data.pkl");
  });
  return 0;
}
