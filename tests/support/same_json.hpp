#pragma once
// Whether two JSON values are the same, types included, all the way down:
// nlohmann's == and dump() do not tell an unsigned 5 from a signed one, and
// parse_json must give nlohmann's number kinds (model_test, fuzz_request_json).
// Header-only and free of GoogleTest, so the fuzz targets can use it too.

#include <cstddef>
#include <nlohmann/json.hpp>

namespace engram::test {

inline bool same_json(const nlohmann::json& a, const nlohmann::json& b) {
  if (a.type() != b.type() || a.size() != b.size()) return false;
  if (a.is_object()) {
    for (auto i = a.begin(), j = b.begin(); i != a.end(); ++i, ++j)
      if (i.key() != j.key() || !same_json(*i, *j)) return false;
    return true;
  }
  if (a.is_array()) {
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!same_json(a[i], b[i])) return false;
    return true;
  }
  return a == b;
}

}  // namespace engram::test
