#pragma once
// What every fuzz target shares: an invariant check that crashes (so libFuzzer, or
// the corpus replay under CTest, reports the input) and a JSON validity check.

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string_view>

#include "model/codec.hpp"

namespace engram::fuzz {

inline void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
  std::abort();
}

// What the server sends must always be valid JSON (UTF-8 included).
inline model::json check_json(std::string_view text, const char* what) {
  auto parsed = model::parse_json(text);
  check(parsed.has_value(), what);
  return std::move(*parsed);
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace engram::fuzz
