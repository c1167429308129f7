// A restricted unpickler for the data.pkl of torch.save checkpoints. It never runs code: it
// interprets the protocol 2-4 opcodes a state dict uses, resolves globals against a fixed
// allow-list (anything else is refused when the GLOBAL opcode is read), and evaluates the few
// allowed callables itself (OrderedDict(), _rebuild_tensor_v2, _rebuild_parameter). Storage
// persistent ids become StorageRef values naming the zip entry with the bytes.
#pragma once
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

struct TorchStorageRef {
  DType dtype = DType::F32;  // from torch.<X>Storage
  std::string key;           // zip entry <archive>/data/<key>
  std::string location;      // "cpu", "cuda:0", ... (informational)
  int64_t numel = 0;         // elements in the storage
};

struct TorchTensorRef {
  TorchStorageRef storage;
  int64_t offset = 0;           // in elements
  std::vector<int64_t> shape;   // outermost first
  std::vector<int64_t> stride;  // in elements
};

struct PickleValue {
  enum class Kind : uint8_t {
    None,
    Bool,
    Int,
    Float,
    Str,
    Bytes,
    Tuple,
    List,
    Dict,
    Global,
    Storage,
    Tensor
  };
  Kind kind = Kind::None;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string str;                        // Str, Bytes; Global: module
  std::string name;                       // Global: attribute name
  std::vector<const PickleValue*> items;  // Tuple, List
  std::vector<std::pair<const PickleValue*, const PickleValue*>> entries;  // Dict, in order
  TorchStorageRef storage;                                                 // Storage
  TorchTensorRef tensor;                                                   // Tensor
};

// Owns every value of one unpickled stream. Values reference each other by plain pointers
// into this arena, so shared and even cyclic references are fine and destruction never
// recurses.
class Unpickled {
 public:
  const PickleValue& root() const { return *root_; }

 private:
  friend class Unpickler;
  std::deque<PickleValue> arena_;
  const PickleValue* root_ = nullptr;
};

// Interprets `bytes`; throws mx::Error "<source>: ..." for an unknown or unsupported opcode,
// a global outside the allow-list ("refusing pickle global 'posix system'"), truncation or
// any inconsistency (stack underflow, missing memo entry, bad arguments).
Unpickled unpickle(std::span<const uint8_t> bytes, const std::string& source);

// The tensors of a state dict (a dict or OrderedDict of name -> tensor), in pickle order.
// Entries whose value is not a tensor are skipped; a root that is not a dict is an error.
std::vector<std::pair<std::string, TorchTensorRef>> torch_state_dict(const Unpickled& u,
                                                                     const std::string& source);

}  // namespace mx
