// Pages of the newest units answered from the tail cache (engine/tail_cache.hpp)
// against the real server. The oracle is the same page asked with ?text=1, which
// is always read from storage: with its "text" members removed it must be the
// cached page, byte for byte in content, while units arrive, other events
// interleave, retention removes units and contexts are deleted.
#include <gtest/gtest.h>

#include <random>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

const std::string hits = R"(engram_tail_cache_pages_total{result="hit"})";

// The page at `target` (which has a query string), and the same page from storage.
void expect_page_matches_storage(client::http_connection& http, const std::string& target) {
  auto cached = call(http, "GET", target);
  auto stored = call(http, "GET", target + "&text=1");
  ASSERT_EQ(cached.status, 200u) << target << ": " << cached.raw;
  ASSERT_EQ(stored.status, 200u) << target << ": " << stored.raw;
  for (auto& u : stored.body["work_units"]) u.erase("text");
  EXPECT_EQ(cached.body, stored.body) << target;
}

std::string pages_of(const std::string& ctx) { return "/workunits/" + ctx + "?"; }

void append_units(client::http_connection& http, const std::string& ctx, int n) {
  for (int i = 0; i < n; ++i) {
    auto r = call(http, "POST", "/workunit",
                  json({{"context_id", ctx}, {"agent_id", "a"}, {"text", "unit " + std::to_string(i)}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
  }
}

TEST(TailCache, PagesMatchStorageWhileUnitsAndOtherEventsArrive) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.engine.tail_cache_bytes = 1 << 20;  // 256 KiB per context: big units push the oldest out
  test_server server(cfg);
  auto http = server.connect();
  std::mt19937 rng(7);
  const std::vector<std::string> contexts{"tail/a", "tail/b", "tail/c"};
  std::map<std::string, uint64_t> head;
  for (int round = 0; round < 60; ++round) {
    const auto& ctx = contexts[rng() % contexts.size()];
    const int n = int(rng() % 5);
    for (int i = 0; i < n; ++i) {
      // Mostly small units, now and then one of 40 KiB.
      const size_t size = rng() % 8 == 0 ? 40 * 1024 : 10 + rng() % 300;
      auto r = call(http, "POST", "/workunit",
                    json({{"context_id", ctx}, {"agent_id", "a"}, {"text", std::string(size, 'x')}}).dump());
      ASSERT_EQ(r.status, 201u) << r.raw;
      head[ctx] = r.body["work_unit"]["seq"];
    }
    if (rng() % 4 == 0) {  // an event that is not a unit
      auto r = call(http, "PATCH", "/contexts/" + ctx, json({{"meta", {{"round", std::to_string(round)}}}}).dump());
      ASSERT_EQ(r.status, 200u) << r.raw;
      head[ctx] = r.body["context"]["head_seq"];
    }
    const uint64_t h = head[ctx];
    const auto base = pages_of(ctx);
    for (int limit : {1, 3, 10, 100}) {
      ASSERT_NO_FATAL_FAILURE(expect_page_matches_storage(http, base + "reverse=true&limit=" + std::to_string(limit)));
      expect_page_matches_storage(http, base + "limit=" + std::to_string(limit) +
                                            "&after_seq=" + std::to_string(h > 6 ? h - 6 : 0));
    }
    expect_page_matches_storage(http, base + "reverse=true&limit=4&after_seq=" + std::to_string(h / 2));
    expect_page_matches_storage(http, base + "limit=2&after_seq=" + std::to_string(h));
    // Follow a reverse listing's cursors down a few pages.
    std::string cursor;
    for (int page = 0; page < 4; ++page) {
      auto target = base + "reverse=true&limit=3" + (cursor.empty() ? "" : "&cursor=" + cursor);
      ASSERT_NO_FATAL_FAILURE(expect_page_matches_storage(http, target));
      cursor = call(http, "GET", target).body.value("next_cursor", "");
      if (cursor.empty()) break;
    }
  }
  // The test is about the cache: most pages must have come from it.
  EXPECT_GT(metric(http, hits), 500) << call(http, "GET", "/metrics").raw;
}

TEST(TailCache, AnswersOnlyWhatRetentionKept) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.retention.interval = 50ms;
  test_server server(cfg);
  auto http = server.connect();
  ASSERT_NO_FATAL_FAILURE(append_units(http, "kept", 20));
  ASSERT_EQ(call(http, "GET", "/workunits/kept?reverse=true&limit=100").body["work_units"].size(), 20u);
  const double before = metric(http, hits);
  ASSERT_EQ(call(http, "GET", "/workunits/kept?reverse=true&limit=100").body["work_units"].size(), 20u);
  ASSERT_EQ(metric(http, hits), before + 1);  // the tail holds all 20
  // Keep 3 events: the PATCH (seq 21) and units 19 and 20. The head does not move.
  ASSERT_EQ(call(http, "PATCH", "/contexts/kept", R"({"retention":{"max_events":3}})").status, 200u);
  ASSERT_TRUE(wait_until(
      [&] { return call(http, "GET", "/contexts/kept").body["context"].value("first_seq", uint64_t(1)) == 19; }, 30s));
  auto page = call(http, "GET", "/workunits/kept?reverse=true&limit=100");
  ASSERT_EQ(page.body["work_units"].size(), 2u) << page.raw;
  EXPECT_EQ(page.body["work_units"][0]["seq"], 20);
  EXPECT_EQ(page.body["work_units"][1]["seq"], 19);
  expect_page_matches_storage(http, "/workunits/kept?reverse=true&limit=100");
  expect_page_matches_storage(http, "/workunits/kept?limit=100");
  expect_page_matches_storage(http, "/workunits/kept?limit=5&after_seq=2");
}

TEST(TailCache, ForgetsADeletedContext) {
  temp_dir dir;
  test_server server(dir);
  auto http = server.connect();
  ASSERT_NO_FATAL_FAILURE(append_units(http, "gone", 5));
  for (int i = 0; i < 2; ++i)  // filled, then served from the tail
    ASSERT_EQ(call(http, "GET", "/workunits/gone?reverse=true&limit=10").body["work_units"].size(), 5u);
  ASSERT_EQ(call(http, "DELETE", "/contexts/gone").status, 200u);
  auto page = call(http, "GET", "/workunits/gone?reverse=true&limit=10");
  ASSERT_EQ(page.status, 200u) << page.raw;
  EXPECT_EQ(page.body["work_units"].size(), 0u) << page.raw;
  EXPECT_EQ(page.body["context_exists"], false) << page.raw;
  EXPECT_EQ(call(http, "GET", "/workunits/gone?limit=10&after_seq=2").body["work_units"].size(), 0u);
  EXPECT_EQ(metric(http, "engram_tail_cache_bytes"), 0) << "the deleted context's units are still held";
}

// Many small contexts: the tails of the least recently listed ones are dropped, so
// the cache stays within storage.tail_cache_mb, and their pages stay right.
TEST(TailCache, StaysWithinItsBudget) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.engine.tail_cache_bytes = 1 << 20;
  test_server server(cfg);
  auto http = server.connect();
  constexpr int contexts = 1200;  // a tail of one unit costs ~1.7 KiB: ~600 fit
  for (int i = 0; i < contexts; ++i) {
    auto ctx = "many/" + std::to_string(i);
    ASSERT_EQ(call(http, "POST", "/workunit", json({{"context_id", ctx}, {"agent_id", "a"}, {"text", ctx}}).dump())
                  .status,
              201u);
    auto page = call(http, "GET", "/workunits/" + ctx + "?reverse=true&limit=5");
    ASSERT_EQ(page.body["work_units"].size(), 1u) << page.raw;
    ASSERT_LE(metric(http, "engram_tail_cache_bytes"), double(1 << 20)) << "after " << ctx;
  }
  EXPECT_GT(metric(http, "engram_tail_cache_bytes"), double(1 << 19));  // full, not emptied
  expect_page_matches_storage(http, "/workunits/many%2F0?reverse=true&limit=5");  // dropped long ago
  expect_page_matches_storage(http, "/workunits/many%2F" + std::to_string(contexts - 1) + "?reverse=true&limit=5");
}

}  // namespace
}  // namespace engram::test
