#include "wire/enums.hpp"

#include <cctype>
#include <string>

namespace engram::wire {

std::optional<int> enum_from_name(std::span<const std::string_view> names, std::string_view name,
                                  std::string_view prefix) {
  std::string upper(name);
  for (auto& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
  std::string_view key = upper;
  if (!prefix.empty() && key.starts_with(prefix)) key.remove_prefix(prefix.size());
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == key) return int(i);
  return std::nullopt;
}

std::string_view enum_name(std::span<const std::string_view> names, int value) {
  return value >= 0 && size_t(value) < names.size() ? names[size_t(value)] : std::string_view();
}

}  // namespace engram::wire
