// /metrics after exercising every module, parsed as the Prometheus text exposition
// format (0.0.4) and checked against its rules and the naming conventions.
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "engram/stream_connections.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

struct family {
  std::string type, help;
  std::vector<std::pair<std::string, double>> samples;  // full sample name + labels, value
};

// Parses the exposition text; any line that is not valid fails the test.
std::map<std::string, family> parse_exposition(const std::string& text) {
  static const std::regex help_re(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$)");
  static const std::regex type_re(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
  static const std::regex sample_re(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)?\})? (\S+)( -?[0-9]+)?$)");
  std::map<std::string, family> out;
  std::istringstream in(text);
  std::string line, current;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::smatch m;
    if (std::regex_match(line, m, help_re)) {
      out[m[1]].help = m[2];
      continue;
    }
    if (std::regex_match(line, m, type_re)) {
      EXPECT_TRUE(out[m[1]].type.empty()) << "TYPE twice for " << m[1];
      out[m[1]].type = m[2];
      current = m[1];
      continue;
    }
    EXPECT_FALSE(line.starts_with("#")) << "unknown comment: " << line;
    if (line.starts_with("#")) continue;
    if (!std::regex_match(line, m, sample_re)) {
      ADD_FAILURE() << "not a sample line: " << line;
      continue;
    }
    const std::string name = m[1];
    // A sample belongs to the family whose TYPE came last (histograms add suffixes).
    EXPECT_FALSE(current.empty()) << "sample before any TYPE: " << line;
    EXPECT_TRUE(name == current || name == current + "_bucket" || name == current + "_sum" ||
                name == current + "_count")
        << line << " is not part of family " << current;
    const std::string value = m[7];
    double v = 0;
    if (value == "+Inf") v = std::numeric_limits<double>::infinity();
    else if (value == "-Inf") v = -std::numeric_limits<double>::infinity();
    else if (value == "NaN") v = std::numeric_limits<double>::quiet_NaN();
    else {
      size_t used = 0;
      v = std::stod(value, &used);
      EXPECT_EQ(used, value.size()) << line;
    }
    out[current].samples.emplace_back(line.substr(0, line.rfind(' ')), v);
  }
  return out;
}

TEST(MetricsTest, ExpositionIsValidAndCoversEveryModule) {
  temp_dir dir;
  test_server server(dir);
  auto c = server.connect();
  // Exercise HTTP, storage, router, streams, locks and search.
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=m"));
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(call(c, "POST", "/workunit", R"({"context_id":"m","agent_id":"a","text":"metric unit"})").status, 201u);
  ASSERT_EQ(call(c, "POST", "/locks", R"({"resource_path":"m/r","agent_id":"a"})").status, 200u);
  ASSERT_EQ(call(c, "POST", "/locks", R"({"resource_path":"m/r","agent_id":"b"})").status, 409u);
  ASSERT_TRUE(wait_until([&] { return call(c, "GET", "/search?q=metric").body["total_count"] == 5; }));
  EXPECT_EQ(call(c, "GET", "/nope").status, 404u);

  auto r = call(c, "GET", "/metrics");
  ASSERT_EQ(r.status, 200u);
  EXPECT_EQ(r.http.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const auto families = parse_exposition(r.raw);

  std::set<std::string> modules;
  for (const auto& [name, f] : families) {
    SCOPED_TRACE(name);
    EXPECT_FALSE(f.type.empty()) << "no TYPE";
    EXPECT_FALSE(f.help.empty()) << "no HELP";
    // Ours are engram_*; process_* are the standard process metrics.
    EXPECT_TRUE(name.starts_with("engram_") || name.starts_with("process_")) << "not in a known namespace";
    EXPECT_TRUE(std::regex_match(name, std::regex("[a-z][a-z0-9_]*"))) << "snake_case";
    // Conventions: counters end in _total and nothing else does; durations are
    // in seconds, never milliseconds.
    EXPECT_EQ(f.type == "counter", name.ends_with("_total"));
    EXPECT_EQ(name.find("_ms"), std::string::npos);
    EXPECT_EQ(name.find("milliseconds"), std::string::npos);
    if (f.type == "histogram" && !f.samples.empty()) {
      // Buckets are cumulative per label set, and +Inf equals _count.
      std::map<std::string, std::vector<double>> buckets;
      std::map<std::string, double> counts;
      for (const auto& [sample, v] : f.samples) {
        if (sample.starts_with(name + "_bucket")) {
          std::string labels = sample.substr(sample.find('{'));
          labels = std::regex_replace(labels, std::regex(R"(,?le="[^"]*")"), "");
          buckets[labels].push_back(v);
        } else if (sample.starts_with(name + "_count")) {
          counts[sample.size() > name.size() + 6 ? sample.substr(name.size() + 6) : "{}"] = v;
        }
      }
      for (const auto& [labels, values] : buckets) {
        EXPECT_TRUE(std::is_sorted(values.begin(), values.end())) << labels;
        EXPECT_EQ(values.back(), counts[labels]) << labels;
      }
    }
    if (name.starts_with("engram_")) modules.insert(name.substr(7, name.find('_', 7) - 7));
  }
  for (const char* m : {"http", "storage", "router", "stream", "locks", "search"})
    EXPECT_TRUE(modules.count(m)) << "no metrics from " << m;

  // Values reflect what happened.
  auto value = [&](const std::string& fam, const std::string& sample) {
    for (const auto& [s, v] : families.at(fam).samples)
      if (s == sample) return v;
    return -1.0;
  };
  EXPECT_GE(value("engram_storage_units_written_total", "engram_storage_units_written_total"), 5);
  EXPECT_EQ(value("engram_locks_active", "engram_locks_active"), 1);
  EXPECT_GE(value("engram_locks_conflicts_total", "engram_locks_conflicts_total"), 1);
  EXPECT_EQ(value("engram_stream_subscribers", "engram_stream_subscribers{transport=\"websocket\"}"), 1);
  EXPECT_GE(value("engram_http_requests_total",
                  "engram_http_requests_total{method=\"POST\",route=\"/workunit\",status=\"201\"}"),
            5);
  EXPECT_GE(value("engram_http_requests_total",
                  "engram_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"),
            1);

  // The process metrics are this server's (the test runs it in-process).
  const double rss = value("process_resident_memory_bytes", "process_resident_memory_bytes");
  EXPECT_GT(rss, 1e6);
  EXPECT_LT(rss, 64e9);
  EXPECT_GE(value("process_open_fds", "process_open_fds"), 3);
  EXPECT_GT(value("process_max_fds", "process_max_fds"), value("process_open_fds", "process_open_fds"));
  EXPECT_GT(value("process_threads", "process_threads"), 1);
  EXPECT_GT(value("process_cpu_seconds_total", "process_cpu_seconds_total"), 0);
  const double started = value("process_start_time_seconds", "process_start_time_seconds");
  const double now = double(std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count());
  EXPECT_GT(started, now - 24 * 3600);  // the test process started today
  EXPECT_LE(started, now + 1);
}

}  // namespace
}  // namespace engram::test
