// Pages of the newest units answered from the tail cache (engine/tail_cache.hpp)
// against the real server, with and without ?text=1, while units arrive, other
// events interleave, retention removes units and contexts are deleted. The
// oracle is the context's log as GET /contexts/{id}/events?text=1 reads it from
// storage: the test picks the page's units out of it itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

const std::string hits = R"(engram_tail_cache_pages_total{result="hit"})";

struct page_ask {
  bool reverse = false;
  size_t limit = 100;
  uint64_t after_seq = 0;
  std::string cursor;       // a previous page's next_cursor
  uint64_t cursor_seq = 0;  // the seq it stands for: that page's last unit
};

// Every unit the context's log holds, with its text, read from storage.
std::vector<json> stored_units(client::http_connection& http, const std::string& ctx) {
  auto r = call(http, "GET", "/contexts/" + ctx + "/events?text=1&limit=1000");
  std::vector<json> out;
  if (r.status == 404) return out;  // deleted
  EXPECT_EQ(r.status, 200u) << r.raw;
  EXPECT_EQ(r.body["more"], false) << "the test's contexts fit one events page";
  for (const auto& e : r.body["events"])
    if (e["type"].is_number_integer()) out.push_back(e);  // units; other events have a string type
  return out;
}

// The page `ask` of `ctx`, with and without text, against the log. Returns the
// next ask down the same listing (cursor empty on the last page).
page_ask expect_page(client::http_connection& http, const std::string& ctx, const page_ask& ask) {
  std::vector<json> want;
  const uint64_t above = ask.cursor_seq && !ask.reverse ? std::max(ask.after_seq, ask.cursor_seq) : ask.after_seq;
  const uint64_t below = ask.cursor_seq && ask.reverse ? ask.cursor_seq : UINT64_MAX;
  for (auto& u : stored_units(http, ctx))
    if (u["seq"].get<uint64_t>() > above && u["seq"].get<uint64_t>() < below) want.push_back(std::move(u));
  if (ask.reverse) std::reverse(want.begin(), want.end());
  const bool more = want.size() > ask.limit;
  if (more) want.resize(ask.limit);
  std::string target = "/workunits/" + ctx + "?limit=" + std::to_string(ask.limit);
  if (ask.reverse) target += "&reverse=true";
  if (ask.after_seq) target += "&after_seq=" + std::to_string(ask.after_seq);
  if (!ask.cursor.empty()) target += "&cursor=" + ask.cursor;
  page_ask next = ask;
  std::string cursors[2];
  for (bool text : {false, true}) {
    auto r = call(http, "GET", target + (text ? "&text=1" : ""));
    EXPECT_EQ(r.status, 200u) << target << ": " << r.raw;
    json expected = want;
    if (!text)
      for (auto& u : expected) u.erase("text");
    EXPECT_EQ(r.body["work_units"], expected) << target << (text ? "&text=1" : "");
    EXPECT_EQ(r.body.value("next_cursor", "").empty(), !more) << target << ": " << r.raw;
    cursors[text] = r.body.value("next_cursor", "");
  }
  EXPECT_EQ(cursors[0], cursors[1]) << target << ": the two renderings disagree on where the next page starts";
  next.cursor = cursors[1];
  next.cursor_seq = want.empty() ? 0 : want.back()["seq"].get<uint64_t>();
  return next;
}

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
  cfg.engine.tail_cache_bytes = 1 << 20;  // 256 KiB per tail: big units push the oldest out
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
    for (size_t limit : {1, 3, 10, 100}) {
      expect_page(http, ctx, {.reverse = true, .limit = limit});
      expect_page(http, ctx, {.limit = limit, .after_seq = h > 6 ? h - 6 : 0});
    }
    expect_page(http, ctx, {.reverse = true, .limit = 4, .after_seq = h / 2});
    expect_page(http, ctx, {.limit = 2, .after_seq = h});
    // Follow a listing's cursors a few pages: newest first from the head, and
    // oldest first from a recent seq.
    for (page_ask ask : {page_ask{.reverse = true, .limit = 3}, page_ask{.limit = 2, .after_seq = h > 8 ? h - 8 : 0}})
      for (int page = 0; page < 4; ++page) {
        ask = expect_page(http, ctx, ask);
        if (ask.cursor.empty() || ::testing::Test::HasFailure()) break;
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
  expect_page(http, "kept", {.reverse = true, .limit = 100});
  expect_page(http, "kept", {.limit = 100});
  expect_page(http, "kept", {.limit = 5, .after_seq = 2});
}

TEST(TailCache, ForgetsADeletedContext) {
  temp_dir dir;
  test_server server(dir);
  auto http = server.connect();
  ASSERT_NO_FATAL_FAILURE(append_units(http, "gone", 5));
  for (int i = 0; i < 2; ++i)  // filled, then served from the tails (with and without text)
    for (const char* text : {"", "&text=1"})
      ASSERT_EQ(call(http, "GET", std::string("/workunits/gone?reverse=true&limit=10") + text).body["work_units"].size(),
                5u);
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
  expect_page(http, "many/0", {.reverse = true, .limit = 5});  // dropped long ago
  expect_page(http, "many/" + std::to_string(contexts - 1), {.reverse = true, .limit = 5});
}

}  // namespace
}  // namespace engram::test
