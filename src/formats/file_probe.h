// Existence and type checks on paths that never throw std::filesystem_error: a path built from
// a file's contents (an index's shard name, a manifest's file) can be too long or unreadable,
// and that must end as an mx::Error naming the path, not as an escaped library exception.
#pragma once
#include <filesystem>
#include <vector>

namespace mx {

// False when nothing is there; mx::Error "<path>: cannot be checked: <why>" on any other error.
bool path_exists(const std::filesystem::path& p);
bool is_regular_path(const std::filesystem::path& p);  // a regular file (symlinks followed)
bool is_directory_path(const std::filesystem::path& p);
// The entries of a folder; mx::Error naming it when it cannot be listed.
std::vector<std::filesystem::path> list_directory(const std::filesystem::path& dir);

}  // namespace mx
