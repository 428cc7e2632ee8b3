#pragma once
// Timestamps on the wire. Both sides hold time as nanoseconds since the Unix epoch and
// write it as protobuf's Timestamp JSON shape, with integer members:
//
//   {"seconds":<int64>,"nanos":<int32 in [0, 999999999]>}
//
// A time before the epoch borrows a second, so nanos stays non-negative (-1 ns is
// {"seconds":-1,"nanos":999999999}). Reading differs on purpose and stays with each
// side: the server validates client input and names the bad field, the SDK reads
// what a server wrote.

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace engram::wire {

struct timestamp_parts {
  int64_t seconds = 0;
  int64_t nanos = 0;  // 0 ..< 1e9
};

constexpr timestamp_parts split_timestamp(int64_t ns) {
  timestamp_parts t{ns / 1'000'000'000, ns % 1'000'000'000};
  if (t.nanos < 0) {
    t.nanos += 1'000'000'000;
    --t.seconds;
  }
  return t;
}

nlohmann::json timestamp_json(int64_t ns);
// The same object as text, for writers that do not build a json value.
void append_timestamp_json(std::string& out, int64_t ns);

}  // namespace engram::wire
