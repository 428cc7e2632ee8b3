// Micro-benchmarks (Google Benchmark) for the per-request CPU work on the hot path.
#include <benchmark/benchmark.h>

#include <nlohmann/json.hpp>

#include "model/codec.hpp"
#include "model/ids.hpp"
#include "model/text.hpp"

namespace {

engram::api::WorkUnit sample_unit() {
  engram::api::WorkUnit u;
  u.set_id("0190f0e0-0000-7000-8000-000000000000");
  u.set_context_id("project-7/main");
  u.set_agent_id("agent-1");
  u.set_seq(42);
  u.set_type(engram::api::WORK_UNIT_TYPE_MESSAGE);
  u.set_ts_ns(1'700'000'000'000'000'000);
  u.set_payload(std::string(300, 'x'));
  u.mutable_meta()->insert({std::string("k"), std::string("value")});
  return u;
}

void BM_UnitToJson(benchmark::State& state) {
  const auto u = sample_unit();
  for (auto _ : state) benchmark::DoNotOptimize(engram::model::unit_json(u));
}
BENCHMARK(BM_UnitToJson);

void BM_UnitFromJson(benchmark::State& state) {
  const std::string body = engram::model::unit_json(sample_unit());
  for (auto _ : state) {
    auto j = engram::model::parse_json(body);
    benchmark::DoNotOptimize(engram::model::unit_from_json(*j, {}));
  }
}
BENCHMARK(BM_UnitFromJson);

void BM_UnitProtoRoundTrip(benchmark::State& state) {
  const auto u = sample_unit();
  engram::api::WorkUnit out;
  for (auto _ : state) {
    const auto bytes = u.SerializeAsString();
    benchmark::DoNotOptimize(out.ParseFromString(bytes));
  }
}
BENCHMARK(BM_UnitProtoRoundTrip);

void BM_UuidV7(benchmark::State& state) {
  engram::model::uuid_v7_generator gen;
  int64_t ms = 1'700'000'000'000;
  for (auto _ : state) benchmark::DoNotOptimize(gen.next(ms++ / 64).to_string());
}
BENCHMARK(BM_UuidV7);

void BM_Base64Decode300(benchmark::State& state) {
  const auto enc = engram::model::base64_encode(std::string(300, 'x'));
  for (auto _ : state) benchmark::DoNotOptimize(engram::model::base64_decode(enc));
}
BENCHMARK(BM_Base64Decode300);

// Payload text is checked when it is appended and again when it is indexed.
void BM_ValidUtf8(benchmark::State& state) {
  std::string text;
  while (text.size() < size_t(state.range(0))) text += state.range(1) ? "caf\xC3\xA9 deploy the fix " : "deploy the fix ";
  for (auto _ : state) benchmark::DoNotOptimize(engram::model::valid_utf8(text));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(text.size()));
}
BENCHMARK(BM_ValidUtf8)->ArgNames({"bytes", "accents"})->Args({300, 0})->Args({300, 1})->Args({4096, 0});

}  // namespace

BENCHMARK_MAIN();
