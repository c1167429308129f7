// The Mistral tokenizer of tests/data (tiny-mixtral/hf/tokenizer.model), loaded once per fuzz
// process: the harnesses that feed text or requests through a real vocabulary share it.
#pragma once
#include "formats/loaded_model.h"
#include "fuzz_util.h"
#include "runtime/tokenizer.h"

namespace mx::fuzz {

inline const Tokenizer& mistral_tokenizer() {
  static const Tokenizer tok = [] {
    TokenizerSource src;
    src.model_path = test_data("tiny-mixtral/hf/tokenizer.model");
    return Tokenizer::load(src);
  }();
  return tok;
}

}  // namespace mx::fuzz
