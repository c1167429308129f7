// The Mistral v1 SentencePiece tokenizer: loaded from tokenizer.model, or rebuilt from the
// vocabulary a GGUF file embeds, plus a streaming decoder for generated tokens.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/loaded_model.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mx {

class Tokenizer {
 public:
  // From src.model_path when set, else from src.pieces/scores/types (GGUF). Throws mx::Error.
  static Tokenizer load(const TokenizerSource& src);

  // Plain SentencePiece encoding (no chat markup); BOS first when add_bos.
  std::vector<int> encode(std::string_view text, bool add_bos) const;
  // Control tokens (BOS/EOS) decode to nothing; throws on ids outside the vocabulary.
  std::string decode(const std::vector<int>& ids) const;
  std::string piece(int id) const;  // raw vocabulary entry, e.g. "▁Hello", "<0x0A>"

  int vocab_size() const { return vocab_size_; }
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int unk_id() const { return unk_id_; }
  bool is_valid(int id) const { return id >= 0 && id < vocab_size_; }
  bool is_control(int id) const;
  // The byte a <0xXX> piece stands for, or -1 for any other token.
  int byte_value(int id) const { return is_valid(id) ? byte_value_[id] : -1; }

 private:
  Tokenizer() = default;
  void init_tables();

  // Shared so that copies are cheap; the processor is only used through const methods.
  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  std::vector<int> byte_value_;
  std::vector<unsigned char> kind_;  // per id: see tokenizer.cc
  int vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1, unk_id_ = -1;
  friend class StreamDecoder;
};

// Turns generated ids into text pieces for streaming. The concatenation of everything push()
// and finish() return equals tok.decode(all ids pushed): a character split over several
// byte-fallback tokens comes out whole once its last byte arrives, and the leading "▁" of
// the first token is dropped exactly as decode() drops it.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  // The text this token completes; "" while a UTF-8 character is still incomplete.
  std::string push(int id);
  // Whatever push() held back (a truncated character decodes as U+FFFD).
  std::string finish();
  const std::vector<int>& ids() const { return ids_; }

 private:
  bool pending_utf8() const;

  Tokenizer tok_;
  std::vector<int> ids_;
  size_t start_ = 0;        // window start: 0 or a plain piece, so decode() treats it alike
  size_t read_ = 0;         // ids before this are emitted
  size_t last_anchor_ = 0;  // last plain piece seen
};

// The serialized SentencePiece ModelProto that load() builds from a GGUF vocabulary
// (exposed for tests and tools).
std::string sentencepiece_proto_from_vocab(const TokenizerSource& src);

}  // namespace mx
