#include "wire/timestamp.hpp"

#include <nlohmann/json.hpp>

namespace engram::wire {

nlohmann::json timestamp_json(int64_t ns) {
  const auto t = split_timestamp(ns);
  return nlohmann::json{{"seconds", t.seconds}, {"nanos", t.nanos}};
}

void append_timestamp_json(std::string& out, int64_t ns) {
  const auto t = split_timestamp(ns);
  out.append("{\"seconds\":").append(std::to_string(t.seconds));
  out.append(",\"nanos\":").append(std::to_string(t.nanos)).push_back('}');
}

}  // namespace engram::wire
