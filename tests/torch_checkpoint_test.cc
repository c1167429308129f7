#include "formats/torch_checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/pickle.h"
#include "formats/zip_reader.h"
#include "test_util.h"
#include "tiny_config.h"

namespace fs = std::filesystem;
using namespace std::string_literals;  // "..."s keeps embedded NULs
using mx::test::data_path;

namespace {

std::string tiny(const std::string& rel) { return data_path("tiny-mixtral/" + rel); }

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Runs `fn`, expecting an mx::Error whose message contains every one of `needles`.
template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "expected mx::Error";
  } catch (const mx::Error& e) {
    for (const std::string& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message '" << e.what() << "' lacks '" << n << "'";
  }
}

// Canonical name of a Mistral (pth / consolidated.safetensors) tensor name.
std::string canonical(const std::string& n) {
  std::string s = n;
  auto drop = [&](const std::string& what) {
    const size_t p = s.find(what);
    if (p != std::string::npos) s.erase(p, what.size());
  };
  if (s.size() > 7 && s.compare(s.size() - 7, 7, ".weight") == 0) s.resize(s.size() - 7);
  drop("feed_forward.");
  return s;
}

// The reference: mistral/consolidated.safetensors, parsed minimally (bf16 only here).
struct Reference {
  std::string bytes;
  struct Entry {
    std::vector<int64_t> shape;
    size_t begin, end;
  };
  std::map<std::string, Entry> tensors;  // canonical names

  Reference() {
    bytes = mx::test::read_file(tiny("mistral/consolidated.safetensors"));
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    const auto j = nlohmann::json::parse(bytes.substr(8, n));
    for (const auto& [name, v] : j.items()) {
      if (name == "__metadata__") continue;
      EXPECT_EQ(v["dtype"], "BF16");
      tensors[canonical(name)] = {v["shape"].get<std::vector<int64_t>>(),
                                  8 + n + v["data_offsets"][0].get<size_t>(),
                                  8 + n + v["data_offsets"][1].get<size_t>()};
    }
  }
};

const Reference& reference() {
  static Reference r;
  return r;
}

void expect_matches_reference(const mx::LoadedModel& m) {
  const Reference& ref = reference();
  ASSERT_EQ(m.store.tensors.size(), ref.tensors.size());
  for (const auto& [name, e] : ref.tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(m.store.has(name));
    const mx::Tensor& t = m.store.get(name);
    EXPECT_EQ(t.dtype, mx::DType::BF16);
    ASSERT_EQ(t.shape, e.shape);
    ASSERT_EQ(t.nbytes(), e.end - e.begin);
    EXPECT_EQ(std::memcmp(t.data, ref.bytes.data() + e.begin, t.nbytes()), 0);
  }
}

bool in_mmaps(const mx::LoadedModel& m, const uint8_t* p) {
  for (const auto& f : m.store.files)
    if (p >= f->data() && p < f->data() + f->size()) return true;
  return false;
}

void expect_config(const mx::LoadedModel& m) {
  const mx::ModelConfig& c = m.config;
  mx::test::expect_tiny_dims(c);
  EXPECT_TRUE(c.rope_interleaved);
  EXPECT_FALSE(m.tokenizer.model_path.empty());
  EXPECT_TRUE(fs::exists(m.tokenizer.model_path));
}

// A temporary folder, removed when it goes out of scope (copies of the 9 MB fixture add up).
class Scratch {
 public:
  explicit Scratch(const std::string& tag) : path_(mx::test::tmp_dir(tag)) {}
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A folder with params.json (optionally edited) next to a copy of a checkpoint file.
std::unique_ptr<Scratch> folder_with(const std::string& tag, const std::string& ckpt_bytes,
                                     const std::string& params = "") {
  auto d = std::make_unique<Scratch>(tag);
  write_file(d->path() + "/consolidated.00.pth", ckpt_bytes);
  write_file(d->path() + "/params.json",
             params.empty() ? mx::test::read_file(tiny("pth/params.json")) : params);
  return d;
}

// --- a tiny zip writer for archives the fixtures do not cover ---------------------------

void put16(std::string& s, uint16_t v) { s.append({char(v & 0xff), char(v >> 8)}); }
void put32(std::string& s, uint32_t v) {
  put16(s, static_cast<uint16_t>(v));
  put16(s, static_cast<uint16_t>(v >> 16));
}
void put64(std::string& s, uint64_t v) {
  put32(s, static_cast<uint32_t>(v));
  put32(s, static_cast<uint32_t>(v >> 32));
}

// zip64: saturate the 32-bit fields and carry them in ZIP64 extra fields and end records.
std::string make_zip(const std::vector<std::pair<std::string, std::string>>& files, bool zip64,
                     uint16_t method = 0) {
  std::string out, cd;
  for (const auto& [name, data] : files) {
    const uint64_t off = out.size();
    put32(out, 0x04034b50); put16(out, 45); put16(out, 0); put16(out, method);
    put16(out, 0); put16(out, 0); put32(out, 0);
    put32(out, static_cast<uint32_t>(data.size())); put32(out, static_cast<uint32_t>(data.size()));
    put16(out, static_cast<uint16_t>(name.size())); put16(out, 0);
    out += name;
    out += data;
    put32(cd, 0x02014b50); put16(cd, 45); put16(cd, 45); put16(cd, 0); put16(cd, method);
    put16(cd, 0); put16(cd, 0); put32(cd, 0);
    put32(cd, zip64 ? 0xffffffffu : static_cast<uint32_t>(data.size()));
    put32(cd, zip64 ? 0xffffffffu : static_cast<uint32_t>(data.size()));
    put16(cd, static_cast<uint16_t>(name.size())); put16(cd, zip64 ? 28 : 0); put16(cd, 0);
    put16(cd, 0); put16(cd, 0); put32(cd, 0);
    put32(cd, zip64 ? 0xffffffffu : static_cast<uint32_t>(off));
    cd += name;
    if (zip64) {
      put16(cd, 1); put16(cd, 24);
      put64(cd, data.size()); put64(cd, data.size()); put64(cd, off);
    }
  }
  const uint64_t cd_off = out.size();
  out += cd;
  if (zip64) {
    const uint64_t z = out.size();
    put32(out, 0x06064b50); put64(out, 44); put16(out, 45); put16(out, 45);
    put32(out, 0); put32(out, 0); put64(out, files.size()); put64(out, files.size());
    put64(out, cd.size()); put64(out, cd_off);
    put32(out, 0x07064b50); put32(out, 0); put64(out, z); put32(out, 1);
  }
  put32(out, 0x06054b50); put16(out, 0); put16(out, 0);
  put16(out, zip64 ? 0xffff : static_cast<uint16_t>(files.size()));
  put16(out, zip64 ? 0xffff : static_cast<uint16_t>(files.size()));
  put32(out, zip64 ? 0xffffffffu : static_cast<uint32_t>(cd.size()));
  put32(out, zip64 ? 0xffffffffu : static_cast<uint32_t>(cd_off));
  put16(out, 0);
  return out;
}

mx::ZipReader zip_of(const std::string& tag, const std::string& bytes) {
  const Scratch dir(tag);  // the mapping outlives the file
  write_file(dir.path() + "/a.zip", bytes);
  return mx::ZipReader::open(dir.path() + "/a.zip");
}

std::span<const uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

// --- the three fixture layouts ---------------------------------------------------------

TEST(TorchCheckpoint, LoadsPth) {
  const mx::LoadedModel m = mx::load_torch_checkpoint(tiny("pth"), {});
  EXPECT_EQ(m.layout, "pth");
  expect_config(m);
  expect_matches_reference(m);
  // torch.save aligns every storage to 64 bytes: nothing needs copying.
  EXPECT_TRUE(m.store.owned.empty());
  for (const auto& [name, t] : m.store.tensors) EXPECT_TRUE(in_mmaps(m, t.data)) << name;
}

TEST(TorchCheckpoint, LoadsSingleFile) {
  const mx::LoadedModel m = mx::load_torch_checkpoint(tiny("pth/consolidated.00.pth"), {});
  EXPECT_EQ(m.layout, "pth");
  expect_config(m);
  expect_matches_reference(m);
}

TEST(TorchCheckpoint, LoadsPthZip64) {
  const mx::LoadedModel m = mx::load_torch_checkpoint(tiny("pth-zip64"), {});
  EXPECT_EQ(m.layout, "pth");
  expect_config(m);
  expect_matches_reference(m);
  // This writer does not align entries: odd-offset bf16 storages are copied, the rest mapped.
  for (const auto& [name, t] : m.store.tensors)
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 2, 0u) << name;
  EXPECT_FALSE(m.store.owned.empty());
}

TEST(TorchCheckpoint, LoadsPtStacked) {
  const mx::LoadedModel m = mx::load_torch_checkpoint(tiny("pt-stacked"), {});
  EXPECT_EQ(m.layout, "pt-stacked");
  expect_config(m);
  expect_matches_reference(m);
  // w1/w3 slices are views into the mmap; every w2 is a transposed copy.
  EXPECT_EQ(m.store.owned.size(), 2u * 8u);
  EXPECT_TRUE(in_mmaps(m, m.store.get("layers.1.experts.5.w1").data));
  EXPECT_TRUE(in_mmaps(m, m.store.get("layers.0.experts.7.w3").data));
  EXPECT_FALSE(in_mmaps(m, m.store.get("layers.0.experts.2.w2").data));
}

TEST(TorchCheckpoint, StackedEqualsPthTensorForTensor) {
  const mx::LoadedModel a = mx::load_torch_checkpoint(tiny("pt-stacked"), {});
  const mx::LoadedModel b = mx::load_torch_checkpoint(tiny("pth"), {});
  ASSERT_EQ(a.store.tensors.size(), b.store.tensors.size());
  for (const auto& [name, t] : a.store.tensors) {
    const mx::Tensor& u = b.store.get(name);
    ASSERT_EQ(t.shape, u.shape) << name;
    EXPECT_EQ(std::memcmp(t.data, u.data, t.nbytes()), 0) << name;
  }
}

TEST(TorchCheckpoint, OwnedExpertsOnly) {
  mx::LoadOptions opts;
  opts.rank = 1;
  opts.n_ranks = 2;
  for (const char* layout : {"pth", "pt-stacked"}) {
    SCOPED_TRACE(layout);
    const mx::LoadedModel m = mx::load_torch_checkpoint(tiny(layout), opts);
    for (int L = 0; L < 2; ++L) {
      for (int e = 0; e < 8; ++e) {
        for (const char* w : {"w1", "w2", "w3"}) {
          const std::string n = "layers." + std::to_string(L) + ".experts." +
                                std::to_string(e) + "." + w;
          EXPECT_EQ(m.store.has(n), e >= 4) << n;
        }
      }
      EXPECT_TRUE(m.store.has("layers." + std::to_string(L) + ".gate"));
    }
    EXPECT_EQ(m.store.tensors.size(), 3u + 2u * (7u + 4u * 3u));
    if (std::string(layout) == "pt-stacked") {  // only the owned experts' w2 were transposed
      EXPECT_EQ(m.store.owned.size(), 2u * 4u);
    }
    // What is there still matches the reference bit for bit.
    const Reference& ref = reference();
    for (const auto& [name, t] : m.store.tensors) {
      const auto& e = ref.tensors.at(name);
      EXPECT_EQ(std::memcmp(t.data, ref.bytes.data() + e.begin, t.nbytes()), 0) << name;
    }
  }
}

// --- refusing to run pickles -----------------------------------------------------------

TEST(TorchCheckpoint, RefusesMaliciousPickle) {
  const char* marker = "/tmp/mixtral-pickle-was-executed";
  fs::remove(marker);
  expect_error([] { mx::load_torch_checkpoint(data_path("malicious"), {}); },
               {"evil.pth", "refusing pickle global 'posix system'"});
  expect_error([] { mx::load_torch_checkpoint(data_path("malicious/evil.pth"), {}); },
               {"posix system"});
  const mx::ZipReader z = mx::ZipReader::open(data_path("malicious/evil.pth"));
  expect_error([&] { mx::unpickle(z.data("archive/data.pkl"), "evil"); },
               {"evil: refusing pickle global 'posix system'"});
  EXPECT_FALSE(fs::exists(marker));
}

TEST(Pickle, RefusesGlobalsOutsideAllowList) {
  // STACK_GLOBAL route, and a harmless-looking torch name that is still not on the list.
  const std::string stack_global = std::string("\x80\x02\x8c\x02os\x8c\x06system\x93.", 16);
  expect_error([&] { mx::unpickle(bytes_of(stack_global), "sg"); },
               {"refusing pickle global 'os system'"});
  const std::string torch_load = "\x80\x02" "ctorch\nload\n.";
  expect_error([&] { mx::unpickle(bytes_of(torch_load), "tl"); },
               {"refusing pickle global 'torch load'"});
  // An allowed storage class may be named but not called.
  const std::string call_storage = "\x80\x02" "ctorch\nFloatStorage\n).";
  EXPECT_NO_THROW(mx::unpickle(bytes_of(call_storage), "cs"));
  expect_error([&] { mx::unpickle(bytes_of("\x80\x02" "ctorch\nFloatStorage\n)R."), "cs"); },
               {"refusing to call pickle global 'torch FloatStorage'"});
}

TEST(Pickle, DecodesTensorViews) {
  // {'a': _rebuild_tensor_v2(pid(('storage', HalfStorage, '3', 'cpu', 100)), 10, (3, 4),
  //  (1, 5), False, OrderedDict()), 'b': 7}, with memo use, protocol 4 framing and LONG1.
  std::string p = "\x80\x04\x95";
  put64(p, 0);
  p += "}\x94(\x8c\x01" "a";
  p += "ctorch._utils\n_rebuild_tensor_v2\n\x94(";
  p += "(X\x07\x00\x00\x00storage\x94" "ctorch\nHalfStorage\nX\x01\x00\x00\x00" "3"
       "X\x03\x00\x00\x00" "cpu" "Kdt" "Q"s;
  p += "K\x0a" "K\x03K\x04\x86" "K\x01\x8a\x01\x05\x86" "\x89" "ccollections\nOrderedDict\n)R"
       "tR";
  p += "\x8c\x01" "bK\x07u.";
  const mx::Unpickled u = mx::unpickle(bytes_of(p), "views");
  const auto sd = mx::torch_state_dict(u, "views");
  ASSERT_EQ(sd.size(), 1u);  // 'b' is not a tensor
  EXPECT_EQ(sd[0].first, "a");
  const mx::TorchTensorRef& t = sd[0].second;
  EXPECT_EQ(t.storage.dtype, mx::DType::F16);
  EXPECT_EQ(t.storage.key, "3");
  EXPECT_EQ(t.storage.location, "cpu");
  EXPECT_EQ(t.storage.numel, 100);
  EXPECT_EQ(t.offset, 10);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(t.stride, (std::vector<int64_t>{1, 5}));
}

TEST(Pickle, ScalarOpcodes) {
  // [None, True, -2 (BININT), 65535 (BININT2), -1 (LONG1), 1.5 (BINFLOAT), b'xy']
  std::string p = "\x80\x02](N\x88J";
  put32(p, 0xfffffffe);
  p += "M\xff\xff\x8a\x01\xff" "G";
  p += std::string("\x3f\xf8\x00\x00\x00\x00\x00\x00", 8);
  p += "C\x02xye.";
  const mx::Unpickled u = mx::unpickle(bytes_of(p), "scalars");
  const mx::PickleValue& r = u.root();
  ASSERT_EQ(r.kind, mx::PickleValue::Kind::List);
  ASSERT_EQ(r.items.size(), 7u);
  EXPECT_EQ(r.items[0]->kind, mx::PickleValue::Kind::None);
  EXPECT_TRUE(r.items[1]->b);
  EXPECT_EQ(r.items[2]->i, -2);
  EXPECT_EQ(r.items[3]->i, 65535);
  EXPECT_EQ(r.items[4]->i, -1);
  EXPECT_EQ(r.items[5]->f, 1.5);
  EXPECT_EQ(r.items[6]->str, "xy");
}

TEST(Pickle, MalformedStreamsAreErrors) {
  struct Case {
    std::string bytes, needle;
  };
  const std::vector<Case> cases = {
      {std::string("\x80\x02}\xff.", 5), "unsupported pickle opcode 0xff"},
      {"\x80\x02" "cos\nsystem\n" "(S'ls'\ntR.", "refusing pickle global 'os system'"},
      {"\x80\x02" "I42\n.", "unsupported pickle opcode 0x49"},  // protocol-0 INT
      {"\x80\x02" "X\xff\xff\x00\x00" "ab."s, "truncated"},
      {"\x80\x02}", "no STOP"},
      {"", "no STOP"},
      {"\x80\x02" "s.", "underflow"},
      {"\x80\x02" "h\x05.", "memo key 5"},
      {"\x80\x02" "]K\x01K\x02s.", "SETITEM on a list"},
      {"\x80\x02" "}(K\x01u.", "odd number"},
      {"\x80\x02" "t.", "MARK"},
      {"\x80\x02" "(K\x01.", "unclosed MARK"},
      {"\x80\x02" "]\x85(\x85.", "underflow"},  // pops never cross a MARK
      {"\x80\x02" "ccollections\nOrderedDict\nK\x01\x85R.", "OrderedDict called with arguments"},
      {"\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n)R.", "wrong number of arguments"},
      {"\x80\x02" "\x8a\x09" "123456789.", "integer too large"},
      {"\x80\x02" "ctorch._utils\n_rebuild_tensor_v2", "truncated GLOBAL"},
      {"\x80\x02" "N\x85Q.", "persistent id"},
      {"\x80\x02" "Nb.", "underflow"},
      {"\x80\x02" "K\x01K\x02" "b.", "BUILD on a int"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.needle);
    expect_error([&] { mx::unpickle(bytes_of(c.bytes), "bad.pkl"); }, {"bad.pkl", c.needle});
  }
  // A view past the end of its storage.
  const std::string past =
      "\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n("
      "(X\x07\x00\x00\x00storage" "ctorch\nFloatStorage\nX\x01\x00\x00\x00" "0"
      "X\x03\x00\x00\x00" "cpu" "K\x06tQ" "K\x01K\x02K\x03\x86K\x03K\x01\x86\x89)tR."s;
  expect_error([&] { mx::unpickle(bytes_of(past), "bad.pkl"); }, {"past the end of storage"});
  // The state-dict view wants a dict.
  const mx::Unpickled list = mx::unpickle(bytes_of("\x80\x02]."), "l");
  expect_error([&] { mx::torch_state_dict(list, "l.pkl"); }, {"l.pkl", "expected a state dict"});
}

// --- zip ------------------------------------------------------------------------------

TEST(Zip, Zip64ExtraFieldsAndEndRecords) {
  const std::vector<std::pair<std::string, std::string>> files = {
      {"arch/data.pkl", "pickle bytes"}, {"arch/data/0", std::string(1000, 'z')},
      {"arch/version", "3\n"}};
  for (bool zip64 : {false, true}) {
    SCOPED_TRACE(zip64);
    const mx::ZipReader z = zip_of("zip64", make_zip(files, zip64));
    ASSERT_EQ(z.entries().size(), 3u);
    for (const auto& [name, data] : files) {
      const auto s = z.data(name);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(s.data()), s.size()), data);
    }
    EXPECT_EQ(z.find("nope"), nullptr);
    expect_error([&] { z.data("nope"); }, {"missing zip entry 'nope'"});
  }
}

TEST(Zip, DeflatedEntryIsAnErrorNamingIt) {
  const mx::ZipReader z = zip_of("deflate", make_zip({{"arch/data/7", "xxxx"}}, false, 8));
  ASSERT_EQ(z.entries().size(), 1u);
  expect_error([&] { z.data("arch/data/7"); }, {"'arch/data/7'", "compressed", "deflate"});
}

TEST(Zip, MalformedArchivesAreErrors) {
  const std::string good = make_zip({{"a", "hello"}, {"b", "world"}}, true);
  ASSERT_NO_THROW(zip_of("ok", good));
  auto corrupt = [&](size_t at, const std::string& with) {
    std::string s = good;
    s.replace(at, with.size(), with);
    return s;
  };
  const size_t cd = good.find(std::string("PK\x01\x02", 4));
  const size_t z64 = good.find(std::string("PK\x06\x06", 4));
  const size_t loc = good.find(std::string("PK\x06\x07", 4));
  std::string eight_ff(8, '\xff');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {good.substr(0, good.size() / 2), "no end-of-central-directory"},
      {good.substr(0, 10), "too short"},
      {"", "too short"},
      {corrupt(cd, "XX"), "corrupt central directory (entry 0: bad signature"},
      {corrupt(z64 + 48, std::string("\x00\x00\x00\x00\x00\x00\x01\x00", 8)),
       "central directory lies outside the file"},
      {corrupt(z64 + 24, eight_ff + eight_ff), "entries cannot fit"},
      {corrupt(z64, "XX"), "ZIP64 end-of-central-directory record"},
      {corrupt(loc + 8, eight_ff), "locator points outside the file"},
      {corrupt(cd + 46 + 1 + 4 + 16, eight_ff), "local header offset outside the file"},
      {corrupt(cd + 46 + 1 + 4 + 8, eight_ff), "data runs past"},
      {corrupt(cd + 46 + 1 + 4, eight_ff), "compressed size differs"},
      {corrupt(0, "XX"), "bad local header signature"},
      {corrupt(cd + 46 + 1 + 2, "\xff\x00"s), "corrupt extra field in entry 'a'"},
      {corrupt(cd + 30, "\xff\x00"s), "entry 0: runs past its end"},
  };
  for (const auto& [bytes, needle] : cases) {
    SCOPED_TRACE(needle);
    expect_error([&] { zip_of("bad", bytes); }, {"a.zip", needle});
  }
}

// --- malformed checkpoints --------------------------------------------------------------

TEST(TorchCheckpoint, TruncatedArchiveIsAnError) {
  const std::string full = mx::test::read_file(tiny("pth/consolidated.00.pth"));
  for (size_t keep : {size_t{0}, size_t{100}, full.size() / 2, full.size() - 30}) {
    SCOPED_TRACE(keep);
    const auto d = folder_with("trunc", full.substr(0, keep));
    expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); }, {"consolidated.00.pth"});
  }
}

TEST(TorchCheckpoint, CorruptCentralDirectoryIsAnError) {
  const std::string full = mx::test::read_file(tiny("pth/consolidated.00.pth"));
  // A damaged signature, comment length and name: each is caught.
  const size_t pos = full.find("PK\x01\x02"s);
  ASSERT_NE(pos, std::string::npos);
  const std::vector<std::pair<size_t, std::string>> damage = {
      {pos + 2, "bad signature"}, {pos + 32, "corrupt central directory"},
      {pos + 50, "local header names a different entry"}};
  for (const auto& [at, needle] : damage) {
    std::string bad = full;
    bad[at] = 'X';
    const auto d = folder_with("cd", bad);
    expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); },
                 {"consolidated.00.pth", needle});
  }
  std::string bad = full;
  bad[pos + 28] = '\x7f';  // name length far past the directory
  bad[pos + 29] = '\x7f';
  const auto d = folder_with("cd-len", bad);
  expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); },
               {"consolidated.00.pth", "corrupt"});
}

TEST(TorchCheckpoint, UnknownPickleOpcodeIsAnError) {
  std::string full = mx::test::read_file(tiny("pth/consolidated.00.pth"));
  const mx::ZipReader z = mx::ZipReader::open(tiny("pth/consolidated.00.pth"));
  const mx::ZipEntry* e = z.find("consolidated.00/data.pkl");
  ASSERT_NE(e, nullptr);
  ASSERT_EQ(full[e->data_offset + 2], '}');
  full[e->data_offset + 2] = '\xfe';  // stored entries and no CRC check: the pickle is altered
  const auto d = folder_with("opcode", full);
  expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); },
               {"consolidated.00.pth", "data.pkl", "unsupported pickle opcode 0xfe"});
}

TEST(TorchCheckpoint, MissingParamsFieldIsAnError) {
  const std::string ckpt = mx::test::read_file(tiny("pth/consolidated.00.pth"));
  auto params = nlohmann::json::parse(mx::test::read_file(tiny("pth/params.json")));
  for (const char* field : {"dim", "n_layers", "hidden_dim", "vocab_size"}) {
    SCOPED_TRACE(field);
    auto p = params;
    p.erase(field);
    const auto d = folder_with("params", ckpt, p.dump());
    expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); }, {"params.json", field});
  }
  auto p = params;
  p["moe"].erase("num_experts");
  const auto d = folder_with("params-moe", ckpt, p.dump());
  expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); }, {"params.json", "num_experts"});
  const Scratch none("noparams");
  write_file(none.path() + "/consolidated.00.pth", ckpt);
  expect_error([&] { mx::load_torch_checkpoint(none.path(), {}); }, {"params.json"});
}

TEST(TorchCheckpoint, ShapeDisagreeingWithParamsIsAnError) {
  const std::string ckpt = mx::test::read_file(tiny("pth/consolidated.00.pth"));
  auto params = nlohmann::json::parse(mx::test::read_file(tiny("pth/params.json")));
  params["hidden_dim"] = 256;
  auto d = folder_with("shape", ckpt, params.dump());
  expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); },
               {"consolidated.00.pth", "experts.0.w1.weight", "[128, 64]", "[256, 64]"});
  params = nlohmann::json::parse(mx::test::read_file(tiny("pth/params.json")));
  params["n_layers"] = 3;  // a layer the file lacks
  d = folder_with("layers", ckpt, params.dump());
  expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); }, {"missing tensor", "layers.2."});
  params = nlohmann::json::parse(mx::test::read_file(tiny("pth/params.json")));
  params["n_layers"] = 1;  // a layer params.json does not know
  d = folder_with("layers1", ckpt, params.dump());
  expect_error([&] { mx::load_torch_checkpoint(d->path(), {}); },
               {"layers.1.", "layer index out of range"});
}

TEST(TorchCheckpoint, MissingFileOrFolderIsAnError) {
  expect_error([] { mx::load_torch_checkpoint("/nonexistent/ckpt", {}); }, {"/nonexistent/ckpt"});
  const Scratch empty("empty");
  expect_error([&] { mx::load_torch_checkpoint(empty.path(), {}); }, {"no .pth or .pt"});
  // Half of a split checkpoint: the other file's tensors are reported missing.
  const Scratch half("half");
  write_file(half.path() + "/consolidated.00.pt",
             mx::test::read_file(tiny("pt-stacked/consolidated.00.pt")));
  write_file(half.path() + "/params.json", mx::test::read_file(tiny("pt-stacked/params.json")));
  expect_error([&] { mx::load_torch_checkpoint(half.path(), {}); }, {"missing tensor 'norm'"});
}

// --- storage offsets and strides, through the whole loader ------------------------------

namespace {

struct Spec {
  std::string name;
  int64_t offset;
  std::vector<int64_t> shape, stride;
};

// BININT for small non-negative ints.
void put_int(std::string& p, int64_t v) {
  p += 'J';
  put32(p, static_cast<uint32_t>(v));
}

// A state dict pickle as torch.save writes it, every tensor a view of float storage "0".
std::string views_pickle(const std::vector<Spec>& specs, int64_t storage_numel) {
  std::string p = "\x80\x02}(";
  for (const Spec& s : specs) {
    p += 'X';
    put32(p, static_cast<uint32_t>(s.name.size()));
    p += s.name;
    p += "ctorch._utils\n_rebuild_tensor_v2\n((X"s;
    put32(p, 7);
    p += "storagectorch\nFloatStorage\nX"s;
    put32(p, 1);
    p += "0X";
    put32(p, 3);
    p += "cpu";
    put_int(p, storage_numel);
    p += "tQ";
    put_int(p, s.offset);
    p += '(';
    for (int64_t d : s.shape) put_int(p, d);
    p += "t(";
    for (int64_t d : s.stride) put_int(p, d);
    p += "t\x89" "ccollections\nOrderedDict\n)RtR";
  }
  p += "u.";
  return p;
}

}  // namespace

TEST(TorchCheckpoint, StorageOffsetsAndStrides) {
  // dim 2, one layer, one expert of ffn 2, vocab 2: every tensor is [2, 2], [1, 2] or [2].
  const std::vector<Spec> specs = {
      {"tok_embeddings.weight", 0, {2, 2}, {1, 2}},  // transposed view
      {"output.weight", 5, {2, 2}, {2, 1}},          // contiguous at an odd offset
      {"norm.weight", 9, {2}, {3}},                   // strided vector
      {"layers.0.attention_norm.weight", 10, {2}, {1}},
      {"layers.0.ffn_norm.weight", 12, {2}, {0}},     // broadcast (expanded) view
      {"layers.0.attention.wq.weight", 14, {2, 2}, {2, 1}},
      {"layers.0.attention.wk.weight", 18, {2, 2}, {1, 2}},
      {"layers.0.attention.wv.weight", 22, {2, 2}, {4, 1}},  // gap between rows
      {"layers.0.attention.wo.weight", 30, {2, 2}, {2, 1}},
      {"layers.0.block_sparse_moe.gate.weight", 34, {1, 2}, {2, 1}},
      {"layers.0.block_sparse_moe.w1", 36, {2, 2}, {2, 1}},
      {"layers.0.block_sparse_moe.w2", 40, {2, 2}, {2, 1}},
      {"layers.0.block_sparse_moe.w3", 44, {2, 2}, {1, 2}},
  };
  const int64_t numel = 48;
  std::string storage(numel * 4, '\0');
  for (int64_t i = 0; i < numel; ++i) {
    const float f = static_cast<float>(i);
    std::memcpy(&storage[i * 4], &f, 4);
  }
  const Scratch dir("views");
  write_file(dir.path() + "/consolidated.00.pt",
             make_zip({{"m/data.pkl", views_pickle(specs, numel)}, {"m/data/0", storage},
                       {"m/version", "3\n"}},
                      true));
  write_file(dir.path() + "/params.json",
             R"({"dim": 2, "n_layers": 1, "head_dim": 2, "hidden_dim": 2, "n_heads": 1,
                 "n_kv_heads": 1, "norm_eps": 1e-5, "vocab_size": 2, "rope_theta": 10000,
                 "moe": {"num_experts": 1, "num_experts_per_tok": 1}})");
  const mx::LoadedModel m = mx::load_torch_checkpoint(dir.path(), {});
  EXPECT_EQ(m.layout, "pt-stacked");
  EXPECT_FLOAT_EQ(m.config.rope_theta, 10000.f);
  EXPECT_TRUE(m.tokenizer.model_path.empty());
  const std::map<std::string, std::string> canon = {
      {"tok_embeddings.weight", "tok_embeddings"}, {"output.weight", "output"},
      {"norm.weight", "norm"},
      {"layers.0.attention_norm.weight", "layers.0.attention_norm"},
      {"layers.0.ffn_norm.weight", "layers.0.ffn_norm"},
      {"layers.0.attention.wq.weight", "layers.0.attention.wq"},
      {"layers.0.attention.wk.weight", "layers.0.attention.wk"},
      {"layers.0.attention.wv.weight", "layers.0.attention.wv"},
      {"layers.0.attention.wo.weight", "layers.0.attention.wo"},
      {"layers.0.block_sparse_moe.gate.weight", "layers.0.gate"},
      {"layers.0.block_sparse_moe.w1", "layers.0.experts.0.w1"},
      {"layers.0.block_sparse_moe.w2", "layers.0.experts.0.w2"},
      {"layers.0.block_sparse_moe.w3", "layers.0.experts.0.w3"}};
  EXPECT_EQ(m.store.tensors.size(), canon.size());
  for (const Spec& s : specs) {
    SCOPED_TRACE(s.name);
    const mx::Tensor& t = m.store.get(canon.at(s.name));
    EXPECT_EQ(t.dtype, mx::DType::F32);
    ASSERT_EQ(t.shape, s.shape);
    const bool transposed = s.name.ends_with(".w2");  // ours is the transpose of the file's
    const int64_t rows = t.rows(), cols = t.cols();
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t sr = transposed ? c : r, sc = transposed ? r : c;
        const int64_t idx = s.shape.size() == 1 ? s.offset + sc * s.stride[0]
                                                : s.offset + sr * s.stride[0] + sc * s.stride[1];
        float got;
        std::memcpy(&got, t.data + (r * cols + c) * 4, 4);
        EXPECT_EQ(got, static_cast<float>(idx)) << r << "," << c;
      }
    }
  }
}

// A view whose strides repeat elements (here [2^20, 2^20] with strides 0 over one float) is
// copied when loaded; with a params.json to match its shape that copy was terabytes, from a
// file of a few hundred bytes. Views may not hold more elements than their storage.
TEST(TorchCheckpoint, ViewLargerThanItsStorageIsAnError) {
  const Scratch dir("views-overlap");
  write_file(dir.path() + "/consolidated.00.pt",
             make_zip({{"m/data.pkl", views_pickle({{"norm.weight", 0, {1 << 20, 1 << 20}, {0, 0}}}, 1)},
                       {"m/data/0", std::string(4, '\0')},
                       {"m/version", "3\n"}},
                      true));
  write_file(dir.path() + "/params.json", mx::test::read_file(tiny("pth/params.json")));
  expect_error([&] { mx::load_torch_checkpoint(dir.path(), {}); },
               {dir.path() + "/consolidated.00.pt", "tensor of 1099511627776 elements is larger than its storage '0' of 1"});
}

// An empty tensor (a dimension 0) at a storage offset past the end used to pass the bounds
// check, and the loader then formed a pointer from the offset.
TEST(TorchCheckpoint, EmptyTensorPastItsStorageIsAnError) {
  const Scratch dir("views-empty");
  const int64_t numel = 8;
  write_file(dir.path() + "/consolidated.00.pt",
             make_zip({{"m/data.pkl", views_pickle({{"norm.weight", 1 << 30, {0, 2}, {2, 1}}}, numel)},
                       {"m/data/0", std::string(numel * 4, '\0')},
                       {"m/version", "3\n"}},
                      true));
  write_file(dir.path() + "/params.json", mx::test::read_file(tiny("pth/params.json")));
  expect_error([&] { mx::load_torch_checkpoint(dir.path(), {}); },
               {dir.path() + "/consolidated.00.pt", "extends past the end of storage '0'"});
}
