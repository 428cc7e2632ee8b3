#pragma once
// Writes one JSON object straight into a string, member by member, for answers
// rendered without nlohmann::json (work units are the hot path; see codec.hpp).
// Nested objects are further json_objects on the same string. Not thread-safe.

#include <charconv>
#include <concepts>
#include <string>
#include <string_view>

#include "model/codec.hpp"
#include "model/text.hpp"

namespace engram::model {

class json_object {
 public:
  explicit json_object(std::string& out) : out_(out) { out_.push_back('{'); }
  json_object(const json_object&) = delete;
  json_object& operator=(const json_object&) = delete;

  // Writes `"key":` and returns the string for the caller to append one value.
  std::string& member(std::string_view key) {
    if (members_++) out_.push_back(',');
    append_json_string(out_, key);
    out_.push_back(':');
    return out_;
  }
  // Text from anywhere (error messages may echo client input): invalid UTF-8
  // bytes become '?' so the answer stays valid JSON.
  void string(std::string_view key, std::string_view value) {
    auto& out = member(key);
    if (valid_utf8(value)) return append_json_string(out, value);
    std::string clean(value);
    for (auto& c : clean)
      if (static_cast<unsigned char>(c) >= 0x80) c = '?';
    append_json_string(out, clean);
  }
  template <std::integral T>
    requires(!std::same_as<T, bool>)
  void number(std::string_view key, T value) {
    auto& out = member(key);
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, value);
    out.append(buf, r.ptr);
  }
  void boolean(std::string_view key, bool value) { member(key).append(value ? "true" : "false"); }
  // A value that is already JSON.
  void raw(std::string_view key, std::string_view json_value) { member(key).append(json_value); }
  void close() { out_.push_back('}'); }

 private:
  std::string& out_;
  size_t members_ = 0;
};

}  // namespace engram::model
