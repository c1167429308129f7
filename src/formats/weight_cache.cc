#include "formats/weight_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/expert_split.h"
#include "formats/file_probe.h"
#include "formats/json_input.h"
#include "formats/mapped_file.h"
#include "formats/safetensors_writer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace mx {

std::string cache_expert_file(int expert) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "expert-%03d.bin", expert);
  return buf;
}

int canonical_expert(const std::string& n) {
  // layers.<L>.experts.<E>.w<1|2|3>
  static const std::string a = "layers.", b = ".experts.";
  if (n.rfind(a, 0) != 0) return -1;
  const size_t p = n.find(b, a.size());
  if (p == std::string::npos) return -1;
  size_t i = p + b.size(), j = i;
  while (j < n.size() && j - i < 9 && n[j] >= '0' && n[j] <= '9') ++j;
  if (j == i || j >= n.size() || n[j] != '.') return -1;
  return std::atoi(n.substr(i, j - i).c_str());
}

std::string cache_file_header() {
  std::string h(kCacheHeaderBytes, '\0');
  std::memcpy(h.data(), kCacheMagic, sizeof kCacheMagic);
  const uint32_t v = kCacheFormatVersion;
  std::memcpy(h.data() + 8, &v, 4);
  return h;
}

// ---- source fingerprint --------------------------------------------------------------------

namespace {

SourceFileStamp stamp(const fs::path& p, const std::string& name) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) fail(p.string() + ": cannot stat: " + std::strerror(errno));
  SourceFileStamp s;
  s.name = name;
  s.size = static_cast<uint64_t>(st.st_size);
  s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  uint64_t size = 0;
  const int fd = open_regular_file(p.string(), &size);  // a FIFO must not block the stamp
  std::vector<char> head(std::min<uint64_t>(size, uint64_t{1} << 20));
  size_t got = 0;
  while (got < head.size()) {
    const ssize_t n = ::read(fd, head.data() + got, head.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  s.head_hash = Hash64::of(head.data(), got);
  return s;
}

}  // namespace

std::vector<SourceFileStamp> fingerprint_source(const std::string& model_path) {
  const fs::path p(model_path);
  std::vector<SourceFileStamp> out;
  if (is_directory_path(p)) {
    for (const fs::path& e : list_directory(p))
      if (is_regular_path(e)) out.push_back(stamp(e, e.filename().string()));
  } else {
    out.push_back(stamp(p, p.filename().string()));
    // A GGUF file picks up the tokenizer.model next to it.
    const fs::path tok = p.parent_path() / "tokenizer.model";
    if (p.filename() != "tokenizer.model" && is_regular_path(tok))
      out.push_back(stamp(tok, "tokenizer.model"));
  }
  std::sort(out.begin(), out.end(),
            [](const SourceFileStamp& a, const SourceFileStamp& b) { return a.name < b.name; });
  return out;
}

// ---- manifest ------------------------------------------------------------------------------

const CacheFileEntry* CacheManifest::file(const std::string& name) const {
  for (const auto& f : files)
    if (f.name == name) return &f;
  return nullptr;
}

std::string manifest_to_json(const CacheManifest& m) {
  ojson j;
  j["format"] = kCacheFormatName;
  j["version"] = m.version;
  j["created_by"] = m.created_by;
  j["dtype"] = m.dtype;
  j["config"] = ojson::parse(to_json_string(m.config));
  ojson src = {{"path", m.source_path}, {"layout", m.source_layout}, {"files", ojson::array()}};
  for (const auto& s : m.source_files)
    src["files"].push_back({{"name", s.name},
                            {"size", s.size},
                            {"mtime_ns", s.mtime_ns},
                            {"head_xxh64", hex64(s.head_hash)}});
  j["source"] = src;
  auto name_or_null = [](const std::string& s) { return s.empty() ? ojson(nullptr) : ojson(s); };
  j["tokenizer"] = {{"model_file", name_or_null(m.tokenizer_model_file)},
                    {"vocab_file", name_or_null(m.tokenizer_vocab_file)},
                    {"bos_id", m.bos_id},
                    {"eos_id", m.eos_id},
                    {"unk_id", m.unk_id},
                    {"add_dummy_prefix", m.add_dummy_prefix},
                    {"chat_template", m.chat_template}};
  j["files"] = ojson::array();
  for (const auto& f : m.files) {
    ojson e = {{"name", f.name}, {"kind", f.kind}};
    if (f.kind == "expert") e["expert"] = f.expert;
    e["size"] = f.size;
    e["xxh64"] = hex64(f.hash);
    j["files"].push_back(e);
  }
  j["tensors"] = ojson::object();
  for (const auto& t : m.tensors)
    j["tensors"][t.name] = {{"file", t.file},
                            {"offset", t.offset},
                            {"nbytes", t.nbytes},
                            {"dtype", std::string(dtype_info(t.dtype).name)},
                            {"shape", t.shape}};
  j["notes"] = m.notes;
  if (m.ranks > 0) j["ranks"] = {{"count", m.ranks}, {"files", m.rank_files}};
  // Paths, source file names and a GGUF's chat template are bytes, not always UTF-8; the
  // default handler would throw the JSON library's type_error out of repack. Such bytes become
  // U+FFFD: the names are informational, and a changed name only makes the next repack rebuild.
  return j.dump(1, ' ', false, ojson::error_handler_t::replace) + "\n";
}

namespace {

// Typed access to required manifest fields; every failure names the file and the field.
struct Reader {
  std::string path;

  const json& field(const json& obj, const std::string& key, const std::string& where) const {
    if (!obj.is_object() || !obj.contains(key))
      fail(path + ": missing required field '" + where + key + "'");
    return obj[key];
  }
  std::string str(const json& obj, const std::string& key, const std::string& where = "") const {
    const json& v = field(obj, key, where);
    if (!v.is_string()) fail(path + ": field '" + where + key + "' must be a string");
    return v.get<std::string>();
  }
  // A string or null ("" for null).
  std::string opt_str(const json& obj, const std::string& key, const std::string& where) const {
    if (!obj.contains(key) || obj[key].is_null()) return "";
    return str(obj, key, where);
  }
  uint64_t u64(const json& obj, const std::string& key, const std::string& where = "") const {
    const json& v = field(obj, key, where);
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
      fail(path + ": field '" + where + key + "' must be a non-negative integer");
    return v.get<uint64_t>();
  }
  int64_t i64(const json& obj, const std::string& key, const std::string& where = "") const {
    const json& v = field(obj, key, where);
    if (!v.is_number_integer()) fail(path + ": field '" + where + key + "' must be an integer");
    return v.get<int64_t>();
  }
  int small_int(const json& obj, const std::string& key, const std::string& where = "") const {
    const int64_t v = i64(obj, key, where);
    if (v < -1 || v > (int64_t{1} << 30)) fail(path + ": field '" + where + key + "' is out of range");
    return static_cast<int>(v);
  }
  bool boolean(const json& obj, const std::string& key, const std::string& where = "") const {
    const json& v = field(obj, key, where);
    if (!v.is_boolean()) fail(path + ": field '" + where + key + "' must be true or false");
    return v.get<bool>();
  }
  uint64_t hash(const json& obj, const std::string& key, const std::string& where) const {
    uint64_t h;
    if (!parse_hex64(str(obj, key, where), &h))
      fail(path + ": field '" + where + key + "' must be 16 hex digits");
    return h;
  }
  // A plain file name inside the cache folder: no separators, no "..", nothing hidden.
  std::string file_name(const json& obj, const std::string& key, const std::string& where) const {
    const std::string s = str(obj, key, where);
    if (s.empty() || s.find('/') != std::string::npos || s.find('\\') != std::string::npos ||
        s[0] == '.')
      fail(path + ": field '" + where + key + "' is not a plain file name: " + json_excerpt(s));
    return s;
  }
};

}  // namespace

CacheManifest parse_cache_manifest(const std::string& text, const std::string& path) {
  const json j = parse_untrusted_json(text, path);
  if (!j.is_object()) fail(path + ": not a JSON object");
  const Reader r{path};
  if (r.str(j, "format") != kCacheFormatName)
    fail(path + ": field 'format' is not \"" + std::string(kCacheFormatName) + "\"");
  CacheManifest m;
  const int64_t version = r.i64(j, "version");
  if (version != kCacheFormatVersion)
    fail(path + ": cache format version " + std::to_string(version) +
         " is not the one this build reads (" + std::to_string(kCacheFormatVersion) +
         "); re-run mixtral repack");
  m.version = static_cast<int>(version);
  m.created_by = j.contains("created_by") && j["created_by"].is_string()
                     ? j["created_by"].get<std::string>() : "";
  m.dtype = r.str(j, "dtype");
  m.config = config_from_json(r.field(j, "config", ""), path + " (field 'config')");

  const json& src = r.field(j, "source", "");
  m.source_path = r.str(src, "path", "source.");
  m.source_layout = r.str(src, "layout", "source.");
  const json& sf = r.field(src, "files", "source.");
  if (!sf.is_array()) fail(path + ": field 'source.files' must be a list");
  for (const auto& e : sf) {
    SourceFileStamp s;
    s.name = r.str(e, "name", "source.files[].");
    s.size = r.u64(e, "size", "source.files[].");
    s.mtime_ns = r.i64(e, "mtime_ns", "source.files[].");
    s.head_hash = r.hash(e, "head_xxh64", "source.files[].");
    m.source_files.push_back(s);
  }

  const json& tok = r.field(j, "tokenizer", "");
  if (tok.contains("model_file") && !tok["model_file"].is_null())
    m.tokenizer_model_file = r.file_name(tok, "model_file", "tokenizer.");
  if (tok.contains("vocab_file") && !tok["vocab_file"].is_null())
    m.tokenizer_vocab_file = r.file_name(tok, "vocab_file", "tokenizer.");
  m.bos_id = r.small_int(tok, "bos_id", "tokenizer.");
  m.eos_id = r.small_int(tok, "eos_id", "tokenizer.");
  m.unk_id = r.small_int(tok, "unk_id", "tokenizer.");
  m.add_dummy_prefix = r.boolean(tok, "add_dummy_prefix", "tokenizer.");
  m.chat_template = r.opt_str(tok, "chat_template", "tokenizer.");

  const json& files = r.field(j, "files", "");
  if (!files.is_array()) fail(path + ": field 'files' must be a list");
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string w = "files[" + std::to_string(i) + "].";
    CacheFileEntry f;
    f.name = r.file_name(files[i], "name", w);
    f.kind = r.str(files[i], "kind", w);
    if (f.kind != "shared" && f.kind != "expert" && f.kind != "tokenizer")
      fail(path + ": field '" + w + "kind' must be shared, expert or tokenizer, not '" + f.kind + "'");
    if (f.kind == "expert") {
      f.expert = r.small_int(files[i], "expert", w);
      if (f.expert < 0 || f.expert >= m.config.n_experts)
        fail(path + ": field '" + w + "expert' is " + std::to_string(f.expert) + ", outside [0, " +
             std::to_string(m.config.n_experts) + ")");
    }
    f.size = r.u64(files[i], "size", w);
    f.hash = r.hash(files[i], "xxh64", w);
    if (m.file(f.name)) fail(path + ": file " + f.name + " is listed twice in 'files'");
    m.files.push_back(f);
  }

  const json& tensors = r.field(j, "tensors", "");
  if (!tensors.is_object()) fail(path + ": field 'tensors' must be an object");
  std::map<std::string, std::vector<std::pair<uint64_t, const CacheTensorEntry*>>> by_file;
  m.tensors.reserve(tensors.size());
  for (const auto& [name, v] : tensors.items()) {
    if (name.size() > kMaxTensorNameBytes)
      fail(path + ": a tensor name is " + std::to_string(name.size()) + " bytes long, more than the " +
           std::to_string(kMaxTensorNameBytes) + " allowed (it starts " + json_excerpt(name) + ")");
    const std::string w = "tensors." + name + ".";
    const std::string where = path + ": tensor " + name;
    CacheTensorEntry t;
    t.name = name;
    t.file = r.file_name(v, "file", w);
    t.offset = r.u64(v, "offset", w);
    t.nbytes = r.u64(v, "nbytes", w);
    const std::string dt = r.str(v, "dtype", w);
    if (!parse_dtype(dt, &t.dtype) || t.dtype == DType::Count)
      fail(where + ": unknown dtype '" + dt + "'");
    const json& shp = r.field(v, "shape", w);
    if (!shp.is_array() || shp.empty() || shp.size() > 4) fail(where + ": shape must be a list of 1 to 4 sizes");
    uint64_t n = 1;
    for (const auto& d : shp) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) fail(where + ": bad dimension " + json_excerpt(d));
      const auto dv = d.get<int64_t>();
      if (dv != 0 && n > (uint64_t{1} << 50) / static_cast<uint64_t>(dv))
        fail(where + ": shape is too large");
      n *= static_cast<uint64_t>(dv);
      t.shape.push_back(dv);
    }
    const DTypeInfo& di = dtype_info(t.dtype);
    const int64_t cols = t.shape.back();
    if (cols % di.block_elems != 0)
      fail(where + ": " + std::to_string(cols) + " columns are not a multiple of the " +
           std::string(di.name) + " block size " + std::to_string(di.block_elems));
    if (is_r16(t.dtype) && (t.shape.size() != 2 || t.shape[0] % 16 != 0))
      fail(where + ": " + std::string(di.name) + " needs a 2-D shape with a multiple of 16 rows, not " +
           shape_str(t.shape));
    const uint64_t want = n / static_cast<uint64_t>(di.block_elems) * static_cast<uint64_t>(di.block_bytes);
    if (want != t.nbytes)
      fail(where + ": shape " + shape_str(t.shape) + " of " + std::string(di.name) + " needs " +
           std::to_string(want) + " bytes, manifest says " + std::to_string(t.nbytes));
    if (t.offset % kCacheAlignment != 0)
      fail(where + ": offset " + std::to_string(t.offset) + " is not 64-byte aligned");
    const CacheFileEntry* f = m.file(t.file);
    if (f == nullptr) fail(where + ": file " + t.file + " is not listed in 'files'");
    if (f->kind == "tokenizer") fail(where + ": lies in tokenizer file " + t.file);
    if (t.offset < kCacheHeaderBytes || t.nbytes > f->size || t.offset > f->size - t.nbytes)
      fail(where + ": bytes [" + std::to_string(t.offset) + ", " + std::to_string(t.offset + t.nbytes) +
           ") lie outside " + t.file + " (" + std::to_string(f->size) + " bytes after its " +
           std::to_string(kCacheHeaderBytes) + "-byte header)");
    t.expert = canonical_expert(name);
    if (t.expert >= m.config.n_experts)
      fail(where + ": expert " + std::to_string(t.expert) + " is outside the config's " +
           std::to_string(m.config.n_experts) + " experts");
    // Expert files hold only their own expert: a host holding a subset must not need others'.
    if ((t.expert >= 0) != (f->kind == "expert") || (t.expert >= 0 && t.expert != f->expert))
      fail(where + ": is stored in " + t.file + ", which is the wrong file for it");
    m.tensors.push_back(std::move(t));
  }
  for (const auto& t : m.tensors) by_file[t.file].push_back({t.offset, &t});
  for (auto& [file, v] : by_file) {
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t i = 1; i < v.size(); ++i)
      if (v[i].first < v[i - 1].first + v[i - 1].second->nbytes)
        fail(path + ": tensors " + v[i - 1].second->name + " and " + v[i].second->name +
             " overlap in " + file);
  }

  m.notes.clear();
  if (j.contains("notes") && j["notes"].is_array())
    for (const auto& n : j["notes"])
      if (n.is_string()) m.notes.push_back(n.get<std::string>());

  if (j.contains("ranks") && !j["ranks"].is_null()) {
    const json& rk = j["ranks"];
    const int64_t count = r.i64(rk, "count", "ranks.");
    // Up to one rank per 16-row group of every expert (split experts, formats/expert_split.h).
    const int64_t most = static_cast<int64_t>(m.config.n_experts) * std::max<int64_t>(1, m.config.ffn_dim / kSplitRows);
    if (count < 1 || count > most)
      fail(path + ": field 'ranks.count' (" + std::to_string(count) + ") must be 1 to " +
           std::to_string(most) + " (" + std::to_string(m.config.n_experts) + " experts of " +
           std::to_string(m.config.ffn_dim / kSplitRows) + " 16-row groups)");
    const json& rf = r.field(rk, "files", "ranks.");
    if (!rf.is_array() || static_cast<int64_t>(rf.size()) != count)
      fail(path + ": field 'ranks.files' must hold one list per rank");
    m.ranks = static_cast<int>(count);
    for (const auto& list : rf) {
      if (!list.is_array()) fail(path + ": field 'ranks.files' must hold lists of file names");
      std::vector<std::string> names;
      for (const auto& n : list) {
        if (!n.is_string() || !m.file(n.get<std::string>()))
          fail(path + ": field 'ranks.files' names " + json_excerpt(n) + ", which is not in 'files'");
        names.push_back(n.get<std::string>());
      }
      m.rank_files.push_back(names);
    }
  }
  return m;
}

namespace {

std::string slurp(const std::string& path, uint64_t limit) { return read_regular_file(path, limit); }

}  // namespace

CacheManifest read_cache_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kCacheManifest).string();
  if (!path_exists(path))
    fail(dir + ": no " + std::string(kCacheManifest) +
         " (not a mixtral repack cache, or a repack that did not finish)");
  return parse_cache_manifest(slurp(path, uint64_t{64} << 20), path);
}

// ---- tokenizer.json ------------------------------------------------------------------------

namespace {

// What nlohmann's serializer accepts (it rejects overlong forms and surrogates too).
bool valid_utf8(const std::string& s) {
  try {
    (void)json(s).dump();
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::string to_hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string o;
  for (unsigned char c : s) {
    o += d[c >> 4];
    o += d[c & 15];
  }
  return o;
}

bool from_hex(const std::string& h, std::string* out) {
  if (h.size() % 2) return false;
  out->clear();
  for (size_t i = 0; i < h.size(); i += 2) {
    int v = 0;
    for (int k = 0; k < 2; ++k) {
      const char c = h[i + k];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else return false;
    }
    out->push_back(static_cast<char>(v));
  }
  return true;
}

}  // namespace

std::string tokenizer_vocab_to_json(const TokenizerSource& t) {
  json j;
  json pieces = json::array();
  for (const auto& p : t.pieces) pieces.push_back(valid_utf8(p) ? json(p) : json{{"hex", to_hex(p)}});
  j["pieces"] = std::move(pieces);
  j["scores"] = t.scores;
  j["types"] = t.types;
  j["bos_id"] = t.bos_id;
  j["eos_id"] = t.eos_id;
  j["unk_id"] = t.unk_id;
  j["add_dummy_prefix"] = t.add_dummy_prefix;
  return j.dump() + "\n";
}

void tokenizer_vocab_from_json(const std::string& text, const std::string& path, TokenizerSource* t) {
  const json j = parse_untrusted_json(text, path);
  const Reader r{path};
  const json& pieces = r.field(j, "pieces", "");
  const json& scores = r.field(j, "scores", "");
  const json& types = r.field(j, "types", "");
  if (!pieces.is_array() || !scores.is_array() || !types.is_array())
    fail(path + ": fields 'pieces', 'scores' and 'types' must be lists");
  if (scores.size() != pieces.size() || (!types.empty() && types.size() != pieces.size()))
    fail(path + ": 'pieces' (" + std::to_string(pieces.size()) + "), 'scores' (" +
         std::to_string(scores.size()) + ") and 'types' (" + std::to_string(types.size()) +
         ") differ in length");
  t->pieces.clear();
  t->scores.clear();
  t->types.clear();
  for (size_t i = 0; i < pieces.size(); ++i) {
    const json& p = pieces[i];
    std::string s;
    if (p.is_string()) {
      s = p.get<std::string>();
    } else if (!(p.is_object() && p.contains("hex") && p["hex"].is_string() &&
                 from_hex(p["hex"].get<std::string>(), &s))) {
      fail(path + ": pieces[" + std::to_string(i) + "] must be a string or {\"hex\": ...}");
    }
    if (!scores[i].is_number()) fail(path + ": scores[" + std::to_string(i) + "] is not a number");
    t->pieces.push_back(std::move(s));
    t->scores.push_back(scores[i].get<float>());
    if (!types.empty()) {
      if (!types[i].is_number_integer()) fail(path + ": types[" + std::to_string(i) + "] is not an integer");
      t->types.push_back(types[i].get<int32_t>());
    }
  }
  t->bos_id = r.small_int(j, "bos_id");
  t->eos_id = r.small_int(j, "eos_id");
  t->unk_id = r.small_int(j, "unk_id");
  if (j.contains("add_dummy_prefix") && j["add_dummy_prefix"].is_boolean())
    t->add_dummy_prefix = j["add_dummy_prefix"].get<bool>();
}

// ---- loader --------------------------------------------------------------------------------

namespace {

bool verify_requested() {
  const char* v = std::getenv("MIXTRAL_VERIFY_CACHE");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

// Files this rank reads: shared.bin, its experts' files, the tokenizer files.
std::vector<const CacheFileEntry*> needed_files(const CacheManifest& m, const LoadOptions& opts) {
  std::vector<const CacheFileEntry*> out;
  for (const auto& f : m.files)
    if (f.kind != "expert" || opts.owns_expert(f.expert, m.config.n_experts)) out.push_back(&f);
  return out;
}

std::string missing_file_msg(const std::string& path, const CacheFileEntry& f, const LoadOptions& opts) {
  std::string why = f.kind == "expert"
                        ? "this rank (" + std::to_string(opts.rank) + " of " +
                              std::to_string(opts.n_ranks) + ") owns expert " +
                              std::to_string(f.expert) + " and needs it"
                        : "every rank needs it";
  return path + ": missing; " + why + " (copy it from the repack output)";
}

void check_hash(const std::string& path, const uint8_t* data, size_t n, uint64_t want) {
  const uint64_t got = Hash64::of(data, n);
  if (got != want)
    fail(path + ": checksum " + hex64(got) + " differs from the manifest's " + hex64(want) +
         " (file corrupted or replaced; re-run mixtral repack)");
}

}  // namespace

void verify_weight_cache(const std::string& dir, const LoadOptions& opts) {
  const CacheManifest m = read_cache_manifest(dir);
  for (const CacheFileEntry* f : needed_files(m, opts)) {
    const std::string path = (fs::path(dir) / f->name).string();
    if (!path_exists(path)) fail(missing_file_msg(path, *f, opts));
    auto mf = MappedFile::open(path);
    if (mf->size() != f->size)
      fail(path + ": is " + std::to_string(mf->size()) + " bytes, the manifest says " +
           std::to_string(f->size));
    check_hash(path, mf->data(), mf->size(), f->hash);
  }
}

LoadedModel load_weight_cache(const std::string& dir, const LoadOptions& opts) {
  const CacheManifest mf = read_cache_manifest(dir);
  LoadedModel m;
  m.path = dir;
  m.layout = "cache";
  m.config = mf.config;
  m.store.source = dir;
  const bool verify = verify_requested();

  std::map<std::string, std::shared_ptr<MappedFile>> opened;
  auto open = [&](const CacheFileEntry& f) -> const MappedFile& {
    auto it = opened.find(f.name);
    if (it != opened.end()) return *it->second;
    const std::string path = (fs::path(dir) / f.name).string();
    if (!path_exists(path)) fail(missing_file_msg(path, f, opts));
    auto file = MappedFile::open(path);
    if (file->size() != f.size)
      fail(path + ": is " + std::to_string(file->size()) + " bytes, the manifest says " +
           std::to_string(f.size) + " (truncated or replaced; re-run mixtral repack)");
    if (f.kind != "tokenizer" &&
        (f.size < kCacheHeaderBytes || std::memcmp(file->data(), kCacheMagic, sizeof kCacheMagic) != 0))
      fail(path + ": does not start with the cache header \"MXWCACHE\"");
    if (verify) check_hash(path, file->data(), file->size(), f.hash);
    m.store.files.push_back(file);
    return *opened.emplace(f.name, file).first->second;
  };

  // Every needed file must be there, even one no tensor of this rank would touch.
  for (const CacheFileEntry* f : needed_files(mf, opts))
    if (f->kind != "tokenizer") open(*f);
  for (const auto& t : mf.tensors) {
    if (t.expert >= 0 && !opts.owns_expert(t.expert, mf.config.n_experts)) continue;
    const MappedFile& file = open(*mf.file(t.file));
    Tensor v;
    v.dtype = t.dtype;
    v.shape = t.shape;
    v.data = file.data() + t.offset;
    v.name = file.path() + ":" + t.name;
    m.store.tensors[t.name] = std::move(v);
  }

  // Tokenizer: the SentencePiece model when present, else the GGUF vocabulary.
  TokenizerSource& tok = m.tokenizer;
  tok.bos_id = mf.bos_id;
  tok.eos_id = mf.eos_id;
  tok.unk_id = mf.unk_id;
  tok.add_dummy_prefix = mf.add_dummy_prefix;
  tok.chat_template = mf.chat_template;
  const fs::path model_file = fs::path(dir) / "tokenizer.model";
  if (path_exists(model_file)) {
    // SentencePiece would block reading a FIFO; refuse anything but a file here.
    if (!is_regular_path(model_file)) fail(model_file.string() + ": not a regular file");
    tok.model_path = model_file.string();
  }
  if (!mf.tokenizer_vocab_file.empty()) {
    const std::string p = (fs::path(dir) / mf.tokenizer_vocab_file).string();
    if (!path_exists(p)) {
      if (tok.model_path.empty()) fail(p + ": missing; it holds the model's vocabulary");
    } else {
      const std::string text = slurp(p, uint64_t{256} << 20);
      const CacheFileEntry* f = mf.file(mf.tokenizer_vocab_file);
      if (verify && f) check_hash(p, reinterpret_cast<const uint8_t*>(text.data()), text.size(), f->hash);
      tokenizer_vocab_from_json(text, p, &tok);
    }
  } else if (!mf.tokenizer_model_file.empty() && tok.model_path.empty()) {
    fail((fs::path(dir) / mf.tokenizer_model_file).string() +
         ": missing; the manifest lists it as the tokenizer");
  }
  if (verify && !tok.model_path.empty()) {
    if (const CacheFileEntry* f = mf.file("tokenizer.model")) {
      auto file = MappedFile::open(tok.model_path);
      check_hash(tok.model_path, file->data(), file->size(), f->hash);
    }
  }
  return m;
}

}  // namespace mx
