#include "runtime/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstring>

#include "formats/error.h"

namespace mx {

namespace {

// Per-id token kinds (kind_ table).
enum Kind : unsigned char { kPlain = 0, kControl = 1, kUnknown = 2, kByte = 3, kUnused = 4 };

// Field numbers of sentencepiece_model.proto, checked against the Mistral tokenizer.model.
namespace pb {
constexpr int kModelPieces = 1, kModelTrainerSpec = 2, kModelNormalizerSpec = 3;
constexpr int kPiecePiece = 1, kPieceScore = 2, kPieceType = 3;
constexpr int kTrainerModelType = 3, kTrainerVocabSize = 4, kTrainerSplitDigits = 25,
              kTrainerAllowWhitespaceOnlyPieces = 26, kTrainerByteFallback = 35,
              kTrainerUnkId = 40, kTrainerBosId = 41, kTrainerEosId = 42, kTrainerPadId = 43,
              kTrainerUnkPiece = 45, kTrainerBosPiece = 46, kTrainerEosPiece = 47;
constexpr int kNormName = 1, kNormAddDummyPrefix = 3, kNormRemoveExtraWhitespaces = 4,
              kNormEscapeWhitespaces = 5;
constexpr int kModelTypeBpe = 2;
constexpr int kTypeNormal = 1, kTypeByte = 6;
}  // namespace pb

// Minimal protobuf wire-format writer: just what a ModelProto needs.
class ProtoWriter {
 public:
  void varint(int field, uint64_t v) {
    key(field, 0);
    raw_varint(v);
  }
  // int32 fields are sign-extended to 64 bits on the wire (so -1 takes ten bytes).
  void int32(int field, int32_t v) { varint(field, static_cast<uint64_t>(static_cast<int64_t>(v))); }
  void boolean(int field, bool v) { varint(field, v ? 1 : 0); }
  void fixed32_float(int field, float v) {
    key(field, 5);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
  }
  void bytes(int field, std::string_view s) {
    key(field, 2);
    raw_varint(s.size());
    out_.append(s);
  }
  const std::string& str() const { return out_; }

 private:
  void key(int field, int wire_type) { raw_varint((static_cast<uint64_t>(field) << 3) | wire_type); }
  void raw_varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  std::string out_;
};

// "<0xAB>" -> 0xAB, else -1.
int parse_byte_piece(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = p[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return -1;
    v = v * 16 + d;
  }
  return v;
}

// Length of the UTF-8 sequence a lead byte starts, 0 if it cannot start one.
int utf8_len(unsigned b) {
  if (b >= 0xc2 && b <= 0xdf) return 2;
  if (b >= 0xe0 && b <= 0xef) return 3;
  if (b >= 0xf0 && b <= 0xf4) return 4;
  return 0;
}

}  // namespace

std::string sentencepiece_proto_from_vocab(const TokenizerSource& src) {
  const size_t n = src.pieces.size();
  if (n == 0) fail("tokenizer: GGUF vocabulary (tokenizer.ggml.tokens) is empty");
  if (src.scores.size() != n)
    fail("tokenizer: tokenizer.ggml.scores has " + std::to_string(src.scores.size()) +
         " entries, tokenizer.ggml.tokens has " + std::to_string(n));
  if (src.types.size() != n)
    fail("tokenizer: tokenizer.ggml.token_type has " + std::to_string(src.types.size()) +
         " entries, tokenizer.ggml.tokens has " + std::to_string(n));
  const auto check_id = [&](int id, const char* what) {
    if (id < 0 || static_cast<size_t>(id) >= n)
      fail(std::string("tokenizer: ") + what + " " + std::to_string(id) +
           " is outside the vocabulary of " + std::to_string(n));
  };
  check_id(src.unk_id, "tokenizer.ggml.unknown_token_id");
  check_id(src.bos_id, "tokenizer.ggml.bos_token_id");
  check_id(src.eos_id, "tokenizer.ggml.eos_token_id");

  ProtoWriter model;
  bool has_bytes = false;
  for (size_t i = 0; i < n; ++i) {
    if (src.pieces[i].empty()) fail("tokenizer: tokenizer.ggml.tokens[" + std::to_string(i) + "] is empty");
    int type = src.types[i];
    if (type == 0) type = pb::kTypeNormal;  // llama.cpp's "undefined"
    if (type < 1 || type > 6)
      fail("tokenizer: tokenizer.ggml.token_type[" + std::to_string(i) + "] = " +
           std::to_string(src.types[i]) + " is not a SentencePiece type (1..6)");
    if (type == pb::kTypeByte) has_bytes = true;
    ProtoWriter p;
    p.bytes(pb::kPiecePiece, src.pieces[i]);
    p.fixed32_float(pb::kPieceScore, src.scores[i]);
    if (type != pb::kTypeNormal) p.varint(pb::kPieceType, type);  // NORMAL is the default
    model.bytes(pb::kModelPieces, p.str());
  }

  // Only fields that change encoding/decoding matter; values mirror Mistral's tokenizer.model.
  ProtoWriter trainer;
  trainer.varint(pb::kTrainerModelType, pb::kModelTypeBpe);
  trainer.int32(pb::kTrainerVocabSize, static_cast<int32_t>(n));
  trainer.boolean(pb::kTrainerSplitDigits, true);
  // Lets runs of spaces become one "word" so pieces like "▁▁" can match.
  trainer.boolean(pb::kTrainerAllowWhitespaceOnlyPieces, true);
  // Without <0xXX> pieces there is nothing to fall back to.
  trainer.boolean(pb::kTrainerByteFallback, has_bytes);
  trainer.int32(pb::kTrainerUnkId, src.unk_id);
  trainer.int32(pb::kTrainerBosId, src.bos_id);
  trainer.int32(pb::kTrainerEosId, src.eos_id);
  trainer.int32(pb::kTrainerPadId, -1);
  trainer.bytes(pb::kTrainerUnkPiece, src.pieces[src.unk_id]);
  trainer.bytes(pb::kTrainerBosPiece, src.pieces[src.bos_id]);
  trainer.bytes(pb::kTrainerEosPiece, src.pieces[src.eos_id]);
  model.bytes(pb::kModelTrainerSpec, trainer.str());

  ProtoWriter norm;
  norm.bytes(pb::kNormName, "identity");
  norm.boolean(pb::kNormAddDummyPrefix, src.add_dummy_prefix);
  norm.boolean(pb::kNormRemoveExtraWhitespaces, false);
  norm.boolean(pb::kNormEscapeWhitespaces, true);
  model.bytes(pb::kModelNormalizerSpec, norm.str());
  return model.str();
}

Tokenizer Tokenizer::load(const TokenizerSource& src) {
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  if (!src.model_path.empty()) {
    const auto st = sp->Load(src.model_path);
    if (!st.ok())
      fail("tokenizer: cannot load SentencePiece model '" + src.model_path + "': " + st.ToString());
  } else {
    const auto st = sp->LoadFromSerializedProto(sentencepiece_proto_from_vocab(src));
    if (!st.ok()) fail("tokenizer: GGUF vocabulary is not a valid SentencePiece model: " + st.ToString());
  }
  Tokenizer t;
  t.sp_ = std::move(sp);
  t.init_tables();
  return t;
}

void Tokenizer::init_tables() {
  vocab_size_ = sp_->GetPieceSize();
  if (vocab_size_ <= 0) fail("tokenizer: the model has an empty vocabulary");
  bos_id_ = sp_->bos_id();
  eos_id_ = sp_->eos_id();
  unk_id_ = sp_->unk_id();
  byte_value_.assign(vocab_size_, -1);
  kind_.assign(vocab_size_, kPlain);
  for (int id = 0; id < vocab_size_; ++id) {
    if (sp_->IsByte(id)) {
      kind_[id] = kByte;
      byte_value_[id] = parse_byte_piece(sp_->IdToPiece(id));
    } else if (sp_->IsControl(id)) {
      kind_[id] = kControl;
    } else if (sp_->IsUnknown(id)) {
      kind_[id] = kUnknown;
    } else if (sp_->IsUnused(id)) {
      kind_[id] = kUnused;
    }
  }
}

bool Tokenizer::is_control(int id) const { return is_valid(id) && kind_[id] == kControl; }

std::vector<int> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int> ids;
  const auto st = sp_->Encode(text, &ids);
  if (!st.ok()) fail("tokenizer: encode failed: " + st.ToString());
  if (add_bos) {
    if (bos_id_ < 0) fail("tokenizer: BOS requested but the model defines no BOS token");
    ids.insert(ids.begin(), bos_id_);
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (const int id : ids)
    if (!is_valid(id))
      fail("tokenizer: token id " + std::to_string(id) + " is outside the vocabulary of " +
           std::to_string(vocab_size_));
  std::string text;
  const auto st = sp_->Decode(ids, &text);
  if (!st.ok()) fail("tokenizer: decode failed: " + st.ToString());
  return text;
}

std::string Tokenizer::piece(int id) const {
  if (!is_valid(id))
    fail("tokenizer: token id " + std::to_string(id) + " is outside the vocabulary of " +
         std::to_string(vocab_size_));
  return sp_->IdToPiece(id);
}

// True when the ids end in byte tokens that start a UTF-8 character without finishing it.
bool StreamDecoder::pending_utf8() const {
  size_t begin = ids_.size();
  while (begin > read_ && tok_.byte_value(ids_[begin - 1]) >= 0) --begin;
  // Scan the trailing byte run the way a UTF-8 decoder would; only its tail matters.
  size_t i = begin;
  const size_t n = ids_.size();
  while (i < n) {
    const int len = utf8_len(static_cast<unsigned>(tok_.byte_value(ids_[i])));
    if (len == 0) {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < n && j < i + len && (tok_.byte_value(ids_[j]) & 0xc0) == 0x80) ++j;
    if (j == n && j < i + len) return true;  // a valid prefix cut short
    i = (j == i + len) ? j : i + 1;
  }
  return false;
}

std::string StreamDecoder::push(int id) {
  if (!tok_.is_valid(id))
    fail("tokenizer: token id " + std::to_string(id) + " is outside the vocabulary of " +
         std::to_string(tok_.vocab_size()));
  ids_.push_back(id);
  if (tok_.kind_[id] == kPlain) last_anchor_ = ids_.size() - 1;
  if (pending_utf8()) return {};
  return finish();
}

std::string StreamDecoder::finish() {
  if (read_ == ids_.size()) return {};
  // Decoding a window that starts at a plain piece (or at the very start) treats the leading
  // "▁" and byte runs the same way a decode of the whole sequence does, so the difference of
  // the two window decodes is exactly the new text.
  const std::vector<int> before(ids_.begin() + start_, ids_.begin() + read_);
  const std::vector<int> after(ids_.begin() + start_, ids_.end());
  const std::string prev = tok_.decode(before);
  std::string text = tok_.decode(after);
  if (text.compare(0, prev.size(), prev) == 0) text.erase(0, prev.size());
  read_ = ids_.size();
  start_ = last_anchor_ < read_ && tok_.kind_[ids_[last_anchor_]] == kPlain ? last_anchor_ : 0;
  return text;
}

}  // namespace mx
