// One exception type for bad input: the message names the file or field and the problem.
#pragma once
#include <stdexcept>
#include <string>

namespace mx {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error(msg); }

}  // namespace mx
