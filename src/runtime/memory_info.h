// How much RAM this process may plan to use, and byte counts for messages: shared by the demo's
// memory check (demo/demo_limits.h) and `mixtral bench`'s KV budget.
#pragma once
#include <cstdint>
#include <string>

namespace mx {

// RAM available to the demo: MIXTRAL_DEMO_MEM_LIMIT_MB when set (for tests and to leave room
// for other work), else MemAvailable from /proc/meminfo. `source` says which it was.
uint64_t available_memory_bytes(std::string* source);

std::string format_bytes(uint64_t n);  // "1.5 GiB", "12.0 MiB", "512 B"

}  // namespace mx
