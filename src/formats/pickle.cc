#include "formats/pickle.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <unordered_map>

#include "formats/error.h"

namespace mx {

namespace {

using Kind = PickleValue::Kind;

// Storage classes torch.save names in persistent ids, and what their elements are.
struct StorageType {
  const char* name;
  DType dtype;
};
constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", DType::F32}, {"HalfStorage", DType::F16}, {"BFloat16Storage", DType::BF16},
    {"IntStorage", DType::I32},   {"LongStorage", DType::I64}, {"ByteStorage", DType::U8},
};

bool storage_dtype(const PickleValue& g, DType* out) {
  if (g.kind != Kind::Global || g.str != "torch") return false;
  for (const StorageType& s : kStorageTypes) {
    if (g.name == s.name) {
      *out = s.dtype;
      return true;
    }
  }
  return false;
}

bool is_global(const PickleValue& v, const char* module, const char* name) {
  return v.kind == Kind::Global && v.str == module && v.name == name;
}

// Everything the unpickler will let a pickle name. Checked when the global is read, so a
// refused name fails before anything could refer to it.
bool allowed_global(const std::string& module, const std::string& name) {
  if (module == "collections" && name == "OrderedDict") return true;
  if (module == "torch._utils" && (name == "_rebuild_tensor_v2" || name == "_rebuild_parameter"))
    return true;
  if (module == "torch") {
    for (const StorageType& s : kStorageTypes)
      if (name == s.name) return true;
  }
  return false;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

}  // namespace

class Unpickler {
 public:
  Unpickler(std::span<const uint8_t> bytes, const std::string& source)
      : p_(bytes.data()), end_(bytes.data() + bytes.size()), begin_(bytes.data()), src_(source) {}

  Unpickled run() {
    while (true) {
      if (p_ >= end_) err("truncated pickle (no STOP opcode)");
      op_pos_ = static_cast<size_t>(p_ - begin_);
      const uint8_t op = *p_++;
      switch (op) {
        case 0x80:  // PROTO
          if (take(1)[0] > 5) err("unsupported pickle protocol " + std::to_string(p_[-1]));
          break;
        case 0x95: {  // FRAME: a length hint for buffered readers; the data is inline anyway
          const uint64_t n = le(take(8), 8);
          if (n > static_cast<uint64_t>(end_ - p_)) err("FRAME runs past the end of the pickle");
          break;
        }
        case '.': {  // STOP
          if (marks_.size() != 0) err("STOP inside an unclosed MARK");
          out_.root_ = pop();
          return std::move(out_);
        }
        case 'N': push(make(Kind::None)); break;
        case 0x88:
        case 0x89: {  // NEWTRUE / NEWFALSE
          PickleValue* v = make(Kind::Bool);
          v->b = op == 0x88;
          push(v);
          break;
        }
        case 'J': push_int(static_cast<int32_t>(le(take(4), 4))); break;  // BININT
        case 'K': push_int(take(1)[0]); break;                            // BININT1
        case 'M': push_int(static_cast<int64_t>(le(take(2), 2))); break;  // BININT2
        case 0x8a: long_int(take(1)[0]); break;                           // LONG1
        case 0x8b: {                                                      // LONG4
          const int32_t n = static_cast<int32_t>(le(take(4), 4));
          if (n < 0) err("LONG4 with negative length");
          long_int(static_cast<uint64_t>(n));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian IEEE double
          const uint8_t* b = take(8);
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = (u << 8) | b[k];
          PickleValue* v = make(Kind::Float);
          std::memcpy(&v->f, &u, 8);
          push(v);
          break;
        }
        case 'X': push_str(Kind::Str, le(take(4), 4)); break;     // BINUNICODE
        case 0x8c: push_str(Kind::Str, take(1)[0]); break;        // SHORT_BINUNICODE
        case 0x8d: push_str(Kind::Str, le(take(8), 8)); break;    // BINUNICODE8
        case 'B': push_str(Kind::Bytes, le(take(4), 4)); break;   // BINBYTES
        case 'C': push_str(Kind::Bytes, take(1)[0]); break;       // SHORT_BINBYTES
        case 0x8e: push_str(Kind::Bytes, le(take(8), 8)); break;  // BINBYTES8
        case ')': push(make(Kind::Tuple)); break;                 // EMPTY_TUPLE
        case ']': push(make(Kind::List)); break;                  // EMPTY_LIST
        case '}': push(make(Kind::Dict)); break;                  // EMPTY_DICT
        case '(': marks_.push_back(stack_.size()); break;         // MARK
        case 't': {                                               // TUPLE
          PickleValue* v = make(Kind::Tuple);
          for (PickleValue* x : pop_mark()) v->items.push_back(x);
          push(v);
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1..3
          const size_t n = static_cast<size_t>(op - 0x84);
          PickleValue* v = make(Kind::Tuple);
          v->items.resize(n);
          for (size_t k = n; k-- > 0;) v->items[k] = pop();
          push(v);
          break;
        }
        case 'a': {  // APPEND
          PickleValue* x = pop();
          top_of(Kind::List, "APPEND")->items.push_back(x);
          break;
        }
        case 'e': {  // APPENDS
          std::vector<PickleValue*> xs = pop_mark();
          PickleValue* list = top_of(Kind::List, "APPENDS");
          for (PickleValue* x : xs) list->items.push_back(x);
          break;
        }
        case 's': {  // SETITEM
          PickleValue* v = pop();
          PickleValue* k = pop();
          top_of(Kind::Dict, "SETITEM")->entries.emplace_back(k, v);
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<PickleValue*> xs = pop_mark();
          if (xs.size() % 2 != 0) err("SETITEMS with an odd number of items");
          PickleValue* dict = top_of(Kind::Dict, "SETITEMS");
          for (size_t k = 0; k < xs.size(); k += 2) dict->entries.emplace_back(xs[k], xs[k + 1]);
          break;
        }
        case '0': pop(); break;       // POP
        case '1': pop_mark(); break;  // POP_MARK
        case '2': {                   // DUP
          PickleValue* v = pop();
          push(v);
          push(v);
          break;
        }
        case 'q': put(take(1)[0]); break;      // BINPUT
        case 'r': put(le(take(4), 4)); break;  // LONG_BINPUT
        case 0x94: put(memo_.size()); break;   // MEMOIZE
        case 'h': get(take(1)[0]); break;      // BINGET
        case 'j': get(le(take(4), 4)); break;  // LONG_BINGET
        case 'c': {                            // GLOBAL "module\nname\n"
          std::string module = line();
          std::string name = line();
          push(global(std::move(module), std::move(name)));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          PickleValue* name = pop();
          PickleValue* module = pop();
          if (module->kind != Kind::Str || name->kind != Kind::Str)
            err("STACK_GLOBAL needs two strings");
          push(global(module->str, name->str));
          break;
        }
        case 'Q': push(persistent_load(pop())); break;  // BINPERSID
        case 'R': {                                     // REDUCE
          PickleValue* args = pop();
          PickleValue* fn = pop();
          push(reduce(*fn, *args));
          break;
        }
        case 'b': {  // BUILD: sets attributes (an OrderedDict's _metadata); nothing we use
          pop();
          PickleValue* obj = pop();
          if (obj->kind != Kind::Dict)
            err(std::string("BUILD on a ") + kind_name(obj->kind) + " is not supported");
          push(obj);
          break;
        }
        default: {
          char buf[64];
          std::snprintf(buf, sizeof buf, "unsupported pickle opcode 0x%02x", op);
          err(buf);
        }
      }
    }
  }

 private:
  [[noreturn]] void err(const std::string& what) const {
    fail(src_ + ": " + what + " (pickle offset " + std::to_string(op_pos_) + ")");
  }

  const uint8_t* take(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - p_)) err("truncated pickle");
    const uint8_t* r = p_;
    p_ += n;
    return r;
  }
  static uint64_t le(const uint8_t* b, int n) {
    uint64_t u = 0;
    for (int k = n - 1; k >= 0; --k) u = (u << 8) | b[k];
    return u;
  }
  std::string line() {
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(p_, '\n', end_ - p_));
    if (nl == nullptr) err("truncated GLOBAL opcode");
    std::string s(reinterpret_cast<const char*>(p_), nl - p_);
    p_ = nl + 1;
    return s;
  }

  PickleValue* make(Kind k) {
    out_.arena_.emplace_back();
    out_.arena_.back().kind = k;
    return &out_.arena_.back();
  }
  void push(PickleValue* v) { stack_.push_back(v); }
  void push_int(int64_t i) {
    PickleValue* v = make(Kind::Int);
    v->i = i;
    push(v);
  }
  void push_str(Kind k, uint64_t n) {
    const uint8_t* b = take(n);
    PickleValue* v = make(k);
    v->str.assign(reinterpret_cast<const char*>(b), static_cast<size_t>(n));
    push(v);
  }
  // Little-endian two's complement of n bytes; only values that fit in int64 are accepted.
  void long_int(uint64_t n) {
    if (n > 8) err("integer too large");
    const uint8_t* b = take(n);
    uint64_t u = n == 0 ? 0 : le(b, static_cast<int>(n));
    if (n > 0 && n < 8 && (b[n - 1] & 0x80)) u |= ~uint64_t{0} << (8 * n);  // sign-extend
    push_int(static_cast<int64_t>(u));
  }

  // A pop never reaches below the innermost MARK, as in CPython (where MARK starts a new stack).
  PickleValue* pop() {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) err("pickle stack underflow");
    PickleValue* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  std::vector<PickleValue*> pop_mark() {
    if (marks_.empty()) err("pickle opcode needs a MARK but there is none");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PickleValue*> xs(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return xs;
  }
  PickleValue* top_of(Kind k, const char* op) {
    PickleValue* v = pop();
    if (v->kind != k)
      err(std::string(op) + " on a " + kind_name(v->kind) + ", expected a " + kind_name(k));
    push(v);
    return v;
  }

  void put(uint64_t idx) {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() <= floor) err("memo store with an empty stack");
    memo_[idx] = stack_.back();
  }
  void get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) err("memo key " + std::to_string(idx) + " was never stored");
    push(it->second);
  }

  PickleValue* global(std::string module, std::string name) {
    // The names come from the file and can be as long as it is: quote only their start.
    const auto clip = [](const std::string& x) { return x.size() <= 64 ? x : x.substr(0, 64) + "..."; };
    if (!allowed_global(module, name))
      fail(src_ + ": refusing pickle global '" + clip(module) + " " + clip(name) + "'");
    PickleValue* v = make(Kind::Global);
    v->str = std::move(module);
    v->name = std::move(name);
    return v;
  }

  // torch.save's persistent id for a storage: ('storage', torch.XStorage, key, location, numel).
  PickleValue* persistent_load(const PickleValue* pid) {
    if (pid->kind != Kind::Tuple || pid->items.size() != 5 || pid->items[0]->kind != Kind::Str ||
        pid->items[0]->str != "storage")
      err("persistent id is not a ('storage', type, key, location, numel) tuple");
    const auto& it = pid->items;
    PickleValue* v = make(Kind::Storage);
    if (!storage_dtype(*it[1], &v->storage.dtype))
      err("persistent id names an unsupported storage type");
    if (it[2]->kind == Kind::Str)
      v->storage.key = it[2]->str;
    else if (it[2]->kind == Kind::Int)
      v->storage.key = std::to_string(it[2]->i);
    else
      err("storage key is not a string");
    if (it[3]->kind != Kind::Str) err("storage location is not a string");
    v->storage.location = it[3]->str;
    if (it[4]->kind != Kind::Int || it[4]->i < 0) err("storage size is not a non-negative int");
    v->storage.numel = it[4]->i;
    return v;
  }

  // Calls one of the allowed callables, by our own implementation of it.
  PickleValue* reduce(const PickleValue& fn, const PickleValue& args) {
    if (args.kind != Kind::Tuple) err("REDUCE arguments are not a tuple");
    const auto& a = args.items;
    if (is_global(fn, "collections", "OrderedDict")) {
      if (!a.empty()) err("OrderedDict called with arguments");
      return make(Kind::Dict);
    }
    if (is_global(fn, "torch._utils", "_rebuild_parameter")) {
      if (a.size() < 1 || a[0]->kind != Kind::Tensor)
        err("_rebuild_parameter without a tensor argument");
      return const_cast<PickleValue*>(a[0]);
    }
    if (is_global(fn, "torch._utils", "_rebuild_tensor_v2")) return rebuild_tensor(a);
    if (fn.kind == Kind::Global)
      err("refusing to call pickle global '" + fn.str + " " + fn.name + "'");
    err(std::string("REDUCE on a ") + kind_name(fn.kind));
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
  // [, metadata]): a view of the storage; bounds are checked here so callers can trust them.
  PickleValue* rebuild_tensor(const std::vector<const PickleValue*>& a) {
    if (a.size() < 4 || a.size() > 7) err("_rebuild_tensor_v2 with a wrong number of arguments");
    if (a[0]->kind != Kind::Storage) err("_rebuild_tensor_v2: first argument is not a storage");
    if (a[1]->kind != Kind::Int || a[1]->i < 0)
      err("_rebuild_tensor_v2: storage offset is not a non-negative int");
    if (a[2]->kind != Kind::Tuple || a[3]->kind != Kind::Tuple ||
        a[2]->items.size() != a[3]->items.size())
      err("_rebuild_tensor_v2: size and stride are not tuples of equal length");
    PickleValue* v = make(Kind::Tensor);
    TorchTensorRef& t = v->tensor;
    t.storage = a[0]->storage;
    t.offset = a[1]->i;
    __int128 numel = 1, last = t.offset;  // wide: sizes come from the file
    for (size_t d = 0; d < a[2]->items.size(); ++d) {
      const PickleValue* s = a[2]->items[d];
      const PickleValue* st = a[3]->items[d];
      if (s->kind != Kind::Int || st->kind != Kind::Int || s->i < 0 || st->i < 0)
        err("_rebuild_tensor_v2: sizes and strides must be non-negative ints");
      t.shape.push_back(s->i);
      t.stride.push_back(st->i);
      numel *= s->i;
      if (s->i > 0) last += static_cast<__int128>(s->i - 1) * st->i;
      if (numel > (__int128{1} << 62) || last > (__int128{1} << 62))
        err("_rebuild_tensor_v2: tensor too large");
    }
    // Empty tensors too: the loader forms base + offset, which must stay inside the storage.
    if ((numel > 0 && last >= t.storage.numel) || t.offset > t.storage.numel)
      err("_rebuild_tensor_v2: tensor extends past the end of storage '" + t.storage.key + "'");
    // Overlapping strides (0 or smaller than the row) repeat elements: such a view is copied
    // when loaded, so more elements than its storage holds would cost memory the file does not
    // have (shape [2^24, 2^17] with strides [0, 0] over one float is 8 TB).
    if (numel > t.storage.numel)
      err("_rebuild_tensor_v2: tensor of " + std::to_string(static_cast<int64_t>(numel)) +
          " elements is larger than its storage '" + t.storage.key + "' of " + std::to_string(t.storage.numel) +
          " (overlapping strides)");
    return v;
  }

  const uint8_t* p_;
  const uint8_t* end_;
  const uint8_t* begin_;
  const std::string& src_;
  size_t op_pos_ = 0;
  Unpickled out_;
  std::vector<PickleValue*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValue*> memo_;
};

Unpickled unpickle(std::span<const uint8_t> bytes, const std::string& source) {
  return Unpickler(bytes, source).run();
}

std::vector<std::pair<std::string, TorchTensorRef>> torch_state_dict(const Unpickled& u,
                                                                     const std::string& source) {
  const PickleValue& root = u.root();
  if (root.kind != PickleValue::Kind::Dict)
    fail(source + ": pickle is a " + kind_name(root.kind) + ", expected a state dict");
  std::vector<std::pair<std::string, TorchTensorRef>> out;
  std::map<std::string, size_t> index;  // a repeated key replaces the value, as in Python
  for (const auto& [k, v] : root.entries) {
    if (k->kind != PickleValue::Kind::Str) fail(source + ": state dict key is not a string");
    if (v->kind != PickleValue::Kind::Tensor) continue;
    auto [it, fresh] = index.emplace(k->str, out.size());
    if (fresh)
      out.emplace_back(k->str, v->tensor);
    else
      out[it->second].second = v->tensor;
  }
  return out;
}

}  // namespace mx
