// Keyword search over real HTTP against the real server (RocksDB + Xapian in a
// temp dir): the v3 table, text features, every filter, errors, freshness,
// restarts and index rebuilds, and a 50k-unit corpus checked against a
// brute-force scan of the same data.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <atomic>
#include <random>
#include <set>
#include <thread>

#include "model/text.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

class SearchTest : public ::testing::Test {
 protected:
  void SetUp() override { start(); }
  void start(const std::function<void(config::config&)>& tweak = {}) {
    http_.reset();
    server_.reset();
    auto cfg = test_config(dir_.str() + "/data");
    if (tweak) tweak(cfg);
    server_ = std::make_unique<test_server>(cfg);
    http_ = std::make_unique<client::http_connection>(server_->connect());
  }

  // Appends one unit; returns its JSON.
  json put(const json& unit) {
    auto r = call(*http_, "POST", "/workunit", unit.dump());
    EXPECT_EQ(r.status, 201u) << r.raw;
    return r.body["work_unit"];
  }
  std::string put_text(const std::string& ctx, const std::string& text, const json& extra = json::object()) {
    json u = {{"context_id", ctx}, {"agent_id", "agent"}, {"type", "MESSAGE"}, {"text", text}};
    u.update(extra);
    return put(u)["id"];
  }

  reply search(const json& body) { return call(*http_, "POST", "/search", body.dump()); }
  std::vector<std::string> ids(const json& body) {
    auto r = search(body);
    EXPECT_EQ(r.status, 200u) << body.dump() << " → " << r.raw;
    return r.body.value("results", std::vector<std::string>{});
  }

  void wait_indexed() { test::wait_indexed(*http_); }

  temp_dir dir_;
  std::unique_ptr<test_server> server_;
  std::unique_ptr<client::http_connection> http_;
};

// The Engram v3 search table, with its exact answers.
class SearchTableTest : public SearchTest {
 protected:
  void SetUp() override {
    SearchTest::SetUp();
    u1 = put({{"context_id", "c1"}, {"agent_id", "a1"}, {"type", 1}, {"text", "First message with keyword apple"},
              {"meta", {{"category", "fruit"}, {"priority", "high"}}}})["id"];
    u2 = put({{"context_id", "c1"}, {"agent_id", "a2"}, {"type", 8}, {"text", "Second message with keyword banana"},
              {"meta", {{"category", "fruit"}, {"priority", "medium"}}}})["id"];
    u3 = put({{"context_id", "c2"}, {"agent_id", "a1"}, {"type", "SYSTEM"}, {"text", "System message about carrot"},
              {"meta", {{"category", "vegetable"}, {"priority", "low"}}}})["id"];
    wait_indexed();
  }
  std::string u1, u2, u3;
};

using strings = std::vector<std::string>;

TEST_F(SearchTableTest, V3Table) {
  EXPECT_EQ(ids({{"query", "apple"}}), strings({u1}));
  EXPECT_EQ(ids({{"context_id", "c1"}}), strings({u2, u1}));
  EXPECT_EQ(ids({{"agent_ids", {"a1"}}}), strings({u3, u1}));
  EXPECT_EQ(ids({{"types", {"SYSTEM"}}}), strings({u3, u2}));
  EXPECT_EQ(ids({{"types", {8}}}), strings({u3, u2}));
  EXPECT_EQ(ids({{"meta_filters", {{"category", "vegetable"}}}}), strings({u3}));
  EXPECT_EQ(ids({{"query", "fruit"}, {"context_id", "c1"}, {"agent_ids", {"a2"}}}), strings({u2}));
  auto page = search({{"limit", 1}, {"offset", 1}});
  EXPECT_EQ(page.body["results"], json({u2}));
  EXPECT_EQ(page.body["total_count"], 3);
  EXPECT_EQ(page.body["total_count_exact"], true);
  EXPECT_EQ(page.body["limit"], 1);
  EXPECT_EQ(page.body["offset"], 1);
  EXPECT_EQ(ids({{"query", "nonexistent"}}), strings{});
  EXPECT_EQ(ids(json::object()), strings({u3, u2, u1}));
}

TEST_F(SearchTableTest, HitsCarryContextSeqScoreAndSnippet) {
  auto r = search({{"query", "keyword"}});
  ASSERT_EQ(r.status, 200u) << r.raw;
  ASSERT_EQ(r.body["hits"].size(), 2u);
  for (const auto& h : r.body["hits"]) {
    EXPECT_EQ(h["context_id"], "c1");
    EXPECT_GT(h["score"].get<double>(), 0);
    EXPECT_NE(h["snippet"].get<std::string>().find("keyword"), std::string::npos) << h.dump();
  }
  const std::set<uint64_t> seqs = {r.body["hits"][0]["seq"].get<uint64_t>(), r.body["hits"][1]["seq"].get<uint64_t>()};
  EXPECT_EQ(seqs, (std::set<uint64_t>{1, 2}));
  EXPECT_EQ(r.body["results"][0], r.body["hits"][0]["id"]);
  // No text: newest first, score 0.
  auto all = search(json::object());
  EXPECT_EQ(all.body["hits"][0]["score"], 0.0);
  EXPECT_EQ(all.body["hits"][0]["seq"], 1);  // u3, first in c2
  // Snippets can be turned off.
  EXPECT_EQ(search({{"query", "apple"}, {"snippets", false}}).body["hits"][0]["snippet"], "");
}

TEST_F(SearchTableTest, GetSearchHasTheSameSemantics) {
  auto get_ids = [&](const std::string& target) {
    auto r = call(*http_, "GET", target);
    EXPECT_EQ(r.status, 200u) << target << " → " << r.raw;
    return r.body.value("results", strings{});
  };
  EXPECT_EQ(get_ids("/search?q=apple"), strings({u1}));
  EXPECT_EQ(get_ids("/search?context=c1"), strings({u2, u1}));
  EXPECT_EQ(get_ids("/search?agent=a1"), strings({u3, u1}));
  EXPECT_EQ(get_ids("/search?type=SYSTEM"), strings({u3, u2}));
  EXPECT_EQ(get_ids("/search?type=1&type=8"), strings({u3, u2, u1}));
  EXPECT_EQ(get_ids("/search?meta=category%3Dvegetable"), strings({u3}));
  EXPECT_EQ(get_ids("/search?q=fruit&context=c1&agent=a2"), strings({u2}));
  EXPECT_EQ(get_ids("/search?limit=1&offset=1"), strings({u2}));
  EXPECT_EQ(get_ids("/search?q=nonexistent"), strings{});
  EXPECT_EQ(get_ids("/search?context=c*"), strings({u3, u2, u1}));
  auto both = get_ids("/search?q=message+AND+NOT+carrot&context=c*");
  EXPECT_EQ(std::set<std::string>(both.begin(), both.end()), (std::set<std::string>{u1, u2}));
}

TEST_F(SearchTableTest, ContextPrefixPatterns) {
  const auto p1 = put_text("proj/x", "shared word zebra");
  const auto p2 = put_text("proj/y", "shared word zebra");
  put_text("other", "shared word zebra");
  wait_indexed();
  EXPECT_EQ(ids({{"query", "zebra"}, {"context_id", "proj/*"}}).size(), 2u);
  EXPECT_EQ(ids({{"context_id", "proj/*"}}), strings({p2, p1}));
  EXPECT_EQ(ids({{"query", "zebra"}, {"context_id", "*"}}).size(), 3u);
  EXPECT_EQ(ids({{"query", "zebra"}, {"context_id", "proj/x"}}), strings({p1}));
  EXPECT_EQ(ids({{"context_id", "proj"}}), strings{});  // exact id, not a prefix
}

TEST_F(SearchTest, StemmingPhrasesOperatorsAndWildcards) {
  const auto run = put_text("t", "we run the integration suite nightly");
  const auto running = put_text("t", "the end-to-end suite keeps running out of time");
  const auto flaky = put_text("t", "flaky integration tests again");
  wait_indexed();
  auto as_set = [](strings v) { return std::set<std::string>(v.begin(), v.end()); };
  EXPECT_EQ(as_set(ids({{"query", "running"}})), as_set({run, running}));  // stem: run
  EXPECT_EQ(as_set(ids({{"query", "runs"}})), as_set({run, running}));
  EXPECT_EQ(ids({{"query", "\"integration suite\""}}), strings({run}));
  EXPECT_EQ(ids({{"query", "\"suite integration\""}}), strings{});
  EXPECT_EQ(as_set(ids({{"query", "integration OR time"}})), as_set({run, running, flaky}));
  EXPECT_EQ(ids({{"query", "integration AND NOT flaky"}}), strings({run}));
  EXPECT_EQ(ids({{"query", "integration -flaky"}}), strings({run}));
  EXPECT_EQ(ids({{"query", "integration suite"}}), strings({run}));  // default operator AND
  EXPECT_EQ(ids({{"query", "fla*"}}), strings({flaky}));
  EXPECT_EQ(ids({{"query", "!!! ..."}}), strings{});  // nonsense: empty, not an error
  EXPECT_EQ(ids({{"query", "   "}}).size(), 3u);     // blank: no text condition
}

TEST_F(SearchTest, OrIsTheDefaultOperatorWhenConfigured) {
  start([](config::config& c) { c.search.default_and = false; });
  const auto a = put_text("t", "alpha");
  const auto b = put_text("t", "beta");
  wait_indexed();
  EXPECT_EQ(ids({{"query", "alpha beta"}}).size(), 2u);
  (void)a, (void)b;
}

TEST_F(SearchTest, NonAsciiWordsAreWords) {
  const auto fr = put_text("i18n", "le café était fermé à l'heure");
  const auto ru = put_text("i18n", "привет мир, как дела");
  const auto zh = put_text("i18n", "我们的数据库迁移失败了");
  const auto de = put_text("i18n", "Größenänderung der Übersicht");
  wait_indexed();
  EXPECT_EQ(ids({{"query", "café"}}), strings({fr}));
  EXPECT_EQ(ids({{"query", "CAFÉ"}}), strings({fr}));  // Unicode case folding
  EXPECT_EQ(ids({{"query", "мир"}}), strings({ru}));
  EXPECT_EQ(ids({{"query", "数据库"}}), strings({zh}));  // CJK n-grams
  EXPECT_EQ(ids({{"query", "übersicht"}}), strings({de}));
  EXPECT_EQ(call(*http_, "GET", "/search?q=%E6%95%B0%E6%8D%AE").body["results"], json({zh}));
}

TEST_F(SearchTest, BinaryPayloadsAreNotText) {
  // Valid base64 of bytes that are not UTF-8 but contain an ASCII word.
  const std::string bytes = std::string("\xff\xfe secretword \x80\x81", 17);
  const auto bin = put({{"context_id", "b"}, {"agent_id", "x"}, {"payload", model::base64_encode(bytes)},
                        {"meta", {{"label", "blob"}}}})["id"];
  const auto nul = put({{"context_id", "b"}, {"agent_id", "x"},
                        {"payload", model::base64_encode(std::string("secretword\0tail", 15))}})["id"];
  wait_indexed();
  EXPECT_EQ(ids({{"query", "secretword"}}), strings{});
  EXPECT_EQ(ids({{"query", "blob"}}), strings({bin}));  // metadata values still are
  EXPECT_EQ(ids({{"context_id", "b"}}), strings({nul, bin}));
}

TEST_F(SearchTest, RelationshipFilters) {
  const auto q = put_text("r", "question: why is CI red?");
  const auto other = put_text("r", "unrelated");
  const auto answer = put_text("r", "answer: the cache expired", {{"relationships", {{{"target_id", q}, {"type", "RESPONDS_TO"}}}}});
  const auto ref = put_text("r", "see the question", {{"relationships", {{{"target_id", q}, {"type", 4}}}}});
  const auto both = put_text("r", "answer and reference",
                             {{"relationships", {{{"target_id", q}, {"type", 5}}, {{"target_id", other}, {"type", 4}}}}});
  wait_indexed();
  EXPECT_EQ(ids({{"relationships", {{{"target_id", q}, {"type", "RESPONDS_TO"}}}}}), strings({both, answer}));
  EXPECT_EQ(ids({{"relationships", {{{"target_id", q}}}}}), strings({both, ref, answer}));  // any type
  EXPECT_EQ(ids({{"relationships", {{{"target_id", q}, {"type", 5}}, {{"target_id", other}}}}}), strings({both}));
  EXPECT_EQ(ids({{"query", "answer"}, {"relationships", {{{"target_id", q}, {"type", "REFERENCES"}}}}}), strings{});
  auto get = call(*http_, "GET", "/search?rel=RESPONDS_TO:" + q);
  EXPECT_EQ(get.body["results"], json({both, answer})) << get.raw;
  EXPECT_EQ(call(*http_, "GET", "/search?rel=" + q).body["results"].size(), 3u);
}

TEST_F(SearchTest, TimeRangeFilter) {
  const auto a = put_text("time", "tick");
  const auto b = put_text("time", "tick");
  const auto c = put_text("time", "tick");
  wait_indexed();
  auto ts_of = [&](const std::string& id) { return call(*http_, "GET", "/workunit/" + id).body["work_unit"]["ts"]; };
  const json tb = ts_of(b);
  const json tc = ts_of(c);
  EXPECT_EQ(ids({{"query", "tick"}, {"from", tb}}).size(), 2u);  // inclusive
  EXPECT_EQ(ids({{"from", tb}, {"to", tc}}), strings({b}));       // exclusive end
  EXPECT_EQ(ids({{"to", tb}}), strings({a}));
  EXPECT_EQ(ids({{"from", tc}, {"to", tb}}), strings{});
  EXPECT_EQ(ids({{"from", "2000-01-01T00:00:00Z"}, {"to", "2000-01-02T00:00:00+01:00"}}), strings{});
  EXPECT_EQ(ids({{"from", "2000-01-01T00:00:00Z"}}).size(), 3u);
  EXPECT_EQ(call(*http_, "GET", "/search?from=946684800&to=" + std::to_string(tb["seconds"].get<int64_t>() + 3600))
                .body["results"]
                .size(),
            3u);
}

TEST_F(SearchTest, BadRequestsGetClearErrors) {
  struct bad_case {
    std::string body, expect;
  };
  const std::vector<bad_case> cases = {
      {"{", "not valid JSON"},
      {"[]", "must be a JSON object"},
      {R"({"query":5})", "query must be a string"},
      {R"({"agent_ids":"a1"})", "agent_ids must be an array"},
      {R"({"agent_ids":[1]})", "agent_ids must be an array"},
      {R"({"types":["FOO"]})", "unknown"},
      {R"({"types":[99]})", "unknown"},
      {R"({"meta_filters":{"k":1}})", "meta_filters.k must be a string"},
      {R"({"meta_filters":[]})", "meta_filters must be an object"},
      {R"({"relationships":[{"type":5}]})", "target_id"},
      {R"({"relationships":[{"target_id":"x","type":"NOPE"}]})", "unknown"},
      {R"({"from":"yesterday"})", "RFC 3339"},
      {R"({"to":{"seconds":-1}})", "must be {"},
      {R"({"limit":-1})", "limit must be a non-negative integer"},
      {R"({"offset":"2"})", "offset must be a non-negative integer"},
      {R"({"offset":100001})", "offset may be at most"},
      {R"({"snippets":"yes"})", "snippets must be true or false"},
      {R"({"context_id":"bad\u0001id"})", "control characters"},
      {R"({"mode":"semantic"})", "needs query text or a vector"},
      {R"({"mode":"vector"})", "mode must be"},
      {R"({"query":"x","mode":"hybrid"})", "no embedding endpoint is configured"},
      {R"({"vector":[]})", "vector must have 1 to"},
      {R"({"vector":[0,0]})", "must not be all zeros"},
      {R"({"vector":["a"]})", "must contain only numbers"},
      {R"({"vector":[1e39]})", "finite 32-bit"},
      {R"({"vector":[1],"mode":"hybrid"})", "needs query text as well"},
      {R"({"vector":[1],"embedding_model":""})", "embedding_model"},
      {R"({"query":"AND ( OR"})", "query: Syntax"},
  };
  for (const auto& c : cases) {
    auto r = call(*http_, "POST", "/search", c.body);
    EXPECT_EQ(r.status, 400u) << c.body << " → " << r.raw;
    EXPECT_NE(r.body.value("error", std::string()).find(c.expect), std::string::npos) << c.body << " → " << r.raw;
  }
  EXPECT_EQ(call(*http_, "POST", "/search", std::string(17 * 1024, 'a')).status, 400u);
  EXPECT_EQ(call(*http_, "GET", "/search?limit=x").status, 400u);
  EXPECT_EQ(call(*http_, "GET", "/search?meta=novalue").status, 400u);
  EXPECT_EQ(call(*http_, "GET", "/search?from=soon").status, 400u);
  EXPECT_EQ(call(*http_, "GET", "/search?q=%FF%FE").status, 400u);
  EXPECT_EQ(call(*http_, "DELETE", "/search").status, 405u);
  // Still serving.
  EXPECT_EQ(search({{"query", "anything"}}).status, 200u);
}

TEST_F(SearchTest, WildcardExpansionBeyondTheLimitIsRefusedWithXapiansReason) {
  start([](config::config& c) { c.search.max_wildcard_terms = 5; });
  for (int i = 0; i < 8; ++i) put_text("w", "prefix" + std::to_string(i) + "word");
  wait_indexed();
  auto r = search({{"query", "prefix*"}});
  EXPECT_EQ(r.status, 400u) << r.raw;
  EXPECT_NE(r.body.value("error", std::string()).find("query: "), std::string::npos) << r.raw;
  EXPECT_EQ(ids({{"query", "prefix1*"}}).size(), 1u);
}

TEST_F(SearchTest, LimitIsCappedAndPagesAreDisjoint) {
  for (int b = 0; b < 2; ++b) {  // a batch holds at most 1000
    std::vector<json> batch;
    for (int i = 0; i < 600; ++i) batch.push_back({{"text", "page item " + std::to_string(i)}});
    ASSERT_EQ(call(*http_, "POST", "/workunits",
                   json({{"context_id", "pages"}, {"agent_id", "p"}, {"work_units", batch}}).dump())
                  .status,
              201u);
  }
  wait_indexed();
  auto big = search({{"query", "page"}, {"limit", 5000}});
  EXPECT_EQ(big.body["limit"], 1000);
  EXPECT_EQ(big.body["results"].size(), 1000u);
  EXPECT_EQ(big.body["total_count"], 1200);
  EXPECT_EQ(search({{"query", "page"}}).body["results"].size(), 100u);  // default
  std::set<std::string> seen;
  for (size_t offset = 0; offset < 1200; offset += 500) {
    auto page = search({{"context_id", "pages"}, {"limit", 500}, {"offset", offset}});
    for (const auto& id : page.body["results"]) EXPECT_TRUE(seen.insert(id.get<std::string>()).second);
  }
  EXPECT_EQ(seen.size(), 1200u);
}

TEST_F(SearchTest, FreshUnitsBecomeSearchableWithinTheBound) {
  // The bound is a target measured in bench/; here only that it happens promptly.
  for (int i = 0; i < 20; ++i) {
    const std::string word = "fresh" + std::to_string(i) + "x";
    const auto id = put_text("fresh", word);
    EXPECT_TRUE(wait_until([&] { return ids({{"query", word}}) == strings({id}); }, 10s)) << word;
  }
  EXPECT_GT(metric(*http_, "engram_search_index_delay_seconds_count"), 0);
  EXPECT_EQ(metric(*http_, "engram_search_index_lag_events"), 0);
  EXPECT_GE(metric(*http_, "engram_search_documents_indexed_total"), 20);
}

// While a batch waits for its commit, the events that arrive are not read one by
// one: the indexer stays asleep until its commit is due or wake_batch (256) of them
// wait. The commit interval here is a minute, so after the first batch (committed
// at once) none is due during the test; a stop commits what was read, and every
// unit is found after the restart.
TEST_F(SearchTest, EventsArrivingBeforeTheCommitAreReadTogether) {
  start([](config::config& c) { c.search.commit_interval = std::chrono::milliseconds(60'000); });
  wait_indexed();
  put_text("trickle", "first");
  ASSERT_TRUE(wait_until([&] { return metric(*http_, "engram_search_documents_indexed_total") == 1; }, 10s));
  const double rounds = metric(*http_, "engram_search_indexer_rounds_total");
  put_text("trickle", "second");  // starts a batch, read at once, that waits for its commit
  ASSERT_TRUE(wait_until([&] { return metric(*http_, "engram_search_indexer_rounds_total") == rounds + 1; }, 10s));
  for (int i = 0; i < 100; ++i) put_text("trickle", "single" + std::to_string(i));
  EXPECT_EQ(metric(*http_, "engram_search_indexer_rounds_total"), rounds + 1) << "an event woke the indexer";
  json units = json::array();
  for (int i = 0; i < 200; ++i) units.push_back({{"text", "batched" + std::to_string(i)}});
  auto r = call(*http_, "POST", "/workunits",
                json({{"context_id", "trickle"}, {"agent_id", "agent"}, {"work_units", units}}).dump());
  ASSERT_EQ(r.status, 201u) << r.raw;  // 300 events wait now: over wake_batch
  EXPECT_TRUE(wait_until([&] { return metric(*http_, "engram_search_indexer_rounds_total") == rounds + 2; }, 10s));
  EXPECT_EQ(metric(*http_, "engram_search_documents_indexed_total"), 1) << "nothing is committed before its time";
  start();  // a stop commits the batch
  wait_indexed();
  EXPECT_EQ(ids({{"query", "first"}}).size(), 1u);
  EXPECT_EQ(ids({{"query", "single99"}}).size(), 1u);
  EXPECT_EQ(ids({{"query", "batched199"}}).size(), 1u);
  EXPECT_EQ(ids({{"query", "second"}}).size(), 1u);
  EXPECT_EQ(ids({{"context_id", "trickle"}, {"limit", 500}}).size(), 302u);
}

// More writes than the indexer keeps up with: it pauses between short rounds
// (search.yield_backlog), and once the writes stop it catches up with all of them.
TEST_F(SearchTest, AnOverloadedIndexerYieldsThenCatchesUp) {
  start([](config::config& c) {
    c.search.yield_backlog = 100;
    c.search.yield_percent = 20;
  });
  const std::string yielded = "engram_search_indexer_yield_seconds_total";
  std::atomic<size_t> sent{0}, failures{0};
  std::atomic<bool> writing{true};
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      auto c = server_->connect();
      while (writing) {  // batches cost the server far less per unit than indexing them does
        json units = json::array();
        for (int i = 0; i < 200; ++i) units.push_back({{"text", "overload entry w" + std::to_string(w)}});
        auto r = call(c, "POST", "/workunits",
                      json({{"context_id", "load/" + std::to_string(w)}, {"agent_id", "w"}, {"work_units", units}})
                          .dump());
        if (r.status == 201) sent += 200;
        else ++failures;
      }
    });
  }
  const bool paused = wait_until([&] { return metric(*http_, yielded) > 0 || failures > 0; }, 120s);
  writing = false;
  for (auto& t : writers) t.join();
  EXPECT_EQ(failures, 0u);
  EXPECT_TRUE(paused) << "the indexer never yielded to " << sent << " units";
  // With no more arrivals the indexer stops pausing: at most the pause under way
  // when the writers stopped (max_yield, 1 s) is added before it has caught up.
  const double before = metric(*http_, yielded);
  wait_indexed();
  EXPECT_LE(metric(*http_, yielded) - before, 2.0);
  EXPECT_EQ(metric(*http_, "engram_search_documents_indexed_total"), double(sent.load()));
  EXPECT_EQ(ids({{"query", "overload"}, {"context_id", "load/1"}, {"limit", 1}}).size(), 1u);
}

// Queries on several threads (several query workers, pooled readers) while the
// indexer commits new batches, seals shards and merges them underneath them. The count of matches seen by a reader never drops (no
// unit vanishes while its shard is merged) and never exceeds what was sent (no
// unit is seen twice).
TEST_F(SearchTest, ConcurrentSearchesWhileIndexingAndMerging) {
  start([](config::config& c) { c.search.recent_units = 300; });
  std::atomic<bool> writing{true};
  std::atomic<size_t> failures{0}, queries{0}, sent{0};
  std::thread writer([&] {
    auto c = server_->connect();
    for (int b = 0; b < 40; ++b) {
      json units = json::array();
      for (int i = 0; i < 50; ++i)
        units.push_back({{"text", "concurrent entry alpha" + std::to_string(i % 7) + " beta"},
                         {"meta", {{"batch", std::to_string(b)}}}});
      sent += 50;  // before the request: a unit may be searchable before its ack is read
      auto r = call(c, "POST", "/workunits",
                    json({{"context_id", "conc/" + std::to_string(b % 4)}, {"agent_id", "w"}, {"work_units", units}}).dump());
      if (r.status != 201) ++failures;
    }
    writing = false;
  });
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      auto c = server_->connect();
      const std::vector<json> bodies = {{{"query", "concurrent"}, {"snippets", false}},
                                        {{"query", "\"entry alpha3\""}, {"context_id", "conc/*"}},
                                        {{"context_id", "conc/1"}, {"limit", 5}},
                                        {{"query", "alpha*"}, {"meta_filters", {{"batch", "3"}}}}};
      uint64_t seen = 0;
      while (writing) {
        auto r = call(c, "POST", "/search", bodies[size_t(t)].dump());
        ++queries;
        if (r.status != 200) {
          ++failures;
          ADD_FAILURE() << r.raw;
          return;
        }
        if (t == 0) {
          const uint64_t total = r.body["total_count"];
          EXPECT_GE(total, seen) << "a unit disappeared from search";
          EXPECT_LE(total, sent.load()) << "a unit was counted twice";
          seen = total;
        }
      }
    });
  }
  writer.join();
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures, 0u);
  EXPECT_GT(queries, 0u);
  wait_indexed();
  EXPECT_EQ(search({{"query", "concurrent"}}).body["total_count"], 2000);
  // With no more writes, the sealed shards still get merged (merges do not wait
  // for the next commit), and the merged view holds every unit once.
  EXPECT_TRUE(wait_until([&] { return call(*http_, "GET", "/readyz").body["search"]["pending_merges"] == 0; }, 60s))
      << call(*http_, "GET", "/readyz").raw;
  EXPECT_EQ(search({{"context_id", "conc/*"}, {"limit", 1}}).body["total_count"], 2000);
  // Queries here may lose their revision to the commits (nothing here forces it);
  // the counters are exported either way, and a query holds the commits only
  // after it lost its revision twice.
  const double retries = metric(*http_, "engram_search_query_retries_total");
  const double holds = metric(*http_, "engram_search_index_commit_holds_total");
  EXPECT_GE(retries, 0) << "exported";
  EXPECT_GE(holds, 0) << "exported";
  EXPECT_GE(retries, 2 * holds);
}

// Recent shards left unmerged by a stop are merged after the restart without
// waiting for a write (an idle server once showed pending_merges: 1 for ever).
TEST_F(SearchTest, ShardsLeftUnmergedAtAStopAreMergedAfterTheRestartWithoutWrites) {
  auto small_shards = [](config::config& c) { c.search.recent_units = 100; };
  start(small_shards);
  auto pending = [&] { return call(*http_, "GET", "/readyz").body["search"]["pending_merges"].get<int>(); };
  int seen = 0;
  for (int b = 0; b < 200 && seen == 0; ++b) {
    json units = json::array();
    for (int i = 0; i < 500; ++i) units.push_back({{"text", "unmerged entry " + std::to_string(i)}});
    auto r = call(*http_, "POST", "/workunits", json({{"context_id", "unmerged"}, {"agent_id", "w"}, {"work_units", units}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
    seen = pending();
  }
  ASSERT_GT(seen, 0) << "no merge was ever pending: the stop below would prove nothing";
  start(small_shards);  // a graceful stop aborts the merge in progress; nothing is written after the restart
  EXPECT_TRUE(wait_until([&] { return pending() == 0; }, 60s)) << call(*http_, "GET", "/readyz").raw;
  wait_indexed();
  const auto total = search({{"context_id", "unmerged"}, {"limit", 1}}).body["total_count"].get<uint64_t>();
  EXPECT_EQ(total % 500, 0u);  // every acknowledged batch, each unit once
  EXPECT_GT(total, 0u);
}

// Merges tier the shards by doubling: 60 sealed shards of 100 units settle into a
// few (each larger than all newer ones together), where without merging the
// sealed shards would stop at their limit (16) and the active one would grow. The
// merged shards hold every unit once, before and after a restart; a shard
// directory the list does not name (a merge's output a crash left unlisted) is
// deleted at start-up.
TEST_F(SearchTest, MergesKeepFewShardsAndEveryUnitOnce) {
  auto small_shards = [](config::config& c) { c.search.recent_units = 100; };
  start(small_shards);
  const auto index_dir = dir_.str() + "/data/search";
  auto listed = [&] {
    std::ifstream in(index_dir + "/shards");
    std::vector<std::string> names;
    for (std::string name; std::getline(in, name);) names.push_back(name);
    return names;
  };
  auto settled = [&] {
    wait_indexed();
    return wait_until([&] { return call(*http_, "GET", "/readyz").body["search"]["pending_merges"] == 0; }, 60s);
  };
  constexpr int batches = 60, per_batch = 100;
  for (int b = 0; b < batches; ++b) {
    json units = json::array();
    for (int i = 0; i < per_batch; ++i) units.push_back({{"text", "tiered entry " + std::to_string(i)}});
    auto r = call(*http_, "POST", "/workunits", json({{"context_id", "tiers"}, {"agent_id", "w"}, {"work_units", units}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
    wait_indexed();  // one commit, one sealed shard per batch
  }
  ASSERT_TRUE(settled()) << call(*http_, "GET", "/readyz").raw;
  auto total = [&] { return search({{"query", "tiered"}, {"limit", 1}}).body["total_count"]; };
  EXPECT_EQ(total(), batches * per_batch);
  EXPECT_EQ(search({{"context_id", "tiers"}, {"limit", 1}}).body["total_count"], batches * per_batch);
  // 6,000 units in shards of 100: log2(60) + 1 merged shards and the active one.
  const auto names = listed();
  EXPECT_LE(names.size(), 8u) << names.size() << " shards";
  EXPECT_GE(names.size(), 2u);
  // The merged inputs are gone from disk: no view shows them any more.
  auto on_disk = [&] {
    std::set<std::string> found;
    for (const auto& e : std::filesystem::directory_iterator(index_dir))
      if (e.path().filename().string().starts_with("shard.")) found.insert(e.path().filename().string());
    return found;
  };
  EXPECT_TRUE(wait_until([&] { return on_disk() == std::set<std::string>(names.begin(), names.end()); }, 10s))
      << on_disk().size() << " shard directories, " << names.size() << " listed";

  http_.reset();
  server_.reset();
  std::filesystem::create_directories(index_dir + "/shard.99999");
  std::ofstream(index_dir + "/shard.99999/postlist.glass") << "a merge's output a crash left unlisted";
  start(small_shards);
  ASSERT_TRUE(settled()) << call(*http_, "GET", "/readyz").raw;
  EXPECT_FALSE(std::filesystem::exists(index_dir + "/shard.99999"));
  EXPECT_EQ(total(), batches * per_batch);
  // The shards were reopened, not rebuilt, and no unit was indexed again (as a
  // position lowered by a merge would cause).
  EXPECT_EQ(metric(*http_, "engram_search_documents_indexed_total"), 0.0);
  const auto after = listed();
  ASSERT_GE(after.size(), names.size());
  EXPECT_TRUE(std::equal(names.begin(), names.end(), after.begin())) << "the listed shards changed at the restart";
}

TEST_F(SearchTest, CatchesUpAfterRestartAndRebuildsMissingCorruptOrForeignIndexes) {
  start([](config::config& c) { c.search.enabled = false; });
  std::vector<std::string> written;
  for (int i = 0; i < 50; ++i) written.push_back(put_text("restart", "offline entry " + std::to_string(i)));
  EXPECT_EQ(search({{"query", "offline"}}).status, 503u);  // disabled

  auto expect_all = [&](const std::string& why) {
    wait_indexed();
    auto r = search({{"query", "offline"}, {"limit", 1000}});
    std::set<std::string> got(r.body["results"].begin(), r.body["results"].end());
    EXPECT_EQ(got, std::set<std::string>(written.begin(), written.end())) << why;
    EXPECT_EQ(r.body["total_count"], written.size()) << why;
  };
  start();  // catch-up from the logs
  expect_all("catch-up");
  written.push_back(put_text("restart", "offline entry live"));
  const auto index_dir = dir_.str() + "/data/search";

  start([&](config::config&) { std::filesystem::remove_all(index_dir); });
  expect_all("missing index");

  http_.reset();
  server_.reset();
  for (const auto& entry : std::filesystem::recursive_directory_iterator(index_dir))
    if (entry.is_regular_file() && entry.path().filename() != "flintlock")
      std::ofstream(entry.path(), std::ios::trunc) << "not a xapian table";
  start();
  expect_all("corrupt index");

  // An index built from another store is not trusted.
  temp_dir other;
  {
    test_server foreign(test_config(other.str() + "/data"));
    auto c = foreign.connect();
    call(c, "POST", "/workunit", json({{"context_id", "restart"}, {"agent_id", "z"}, {"text", "offline foreign"}}).dump());
  }
  http_.reset();
  server_.reset();
  std::filesystem::remove_all(index_dir);
  std::filesystem::copy(other.str() + "/data/search", index_dir, std::filesystem::copy_options::recursive);
  start();
  expect_all("foreign index");

  // The layout before shard.<n> directories (a base and recent.<n> shards) is rebuilt.
  http_.reset();
  server_.reset();
  std::filesystem::create_directories(index_dir + "/base");
  start();
  expect_all("older layout");
  EXPECT_FALSE(std::filesystem::exists(index_dir + "/base"));
}

// 50k units across 200 contexts (10k in sanitizer builds, where indexing and the
// brute-force scans run several times slower), then filter combinations compared
// with a brute-force scan of the same data.
TEST_F(SearchTest, LargeCorpusMatchesBruteForce) {
  constexpr int n_units = sanitized_build ? 10'000 : 50'000, n_contexts = 200, batch = 1000, vocab = 400;
  // Small recent shards (about 1 in 17 of the corpus): the corpus ends up spread
  // over merged shards, sealed ones and the active one, with merges running while
  // the queries run.
  start([](config::config& c) { c.search.recent_units = n_units * 3 / 50; });
  struct unit {
    std::string id, ctx, agent;
    int type;
    std::set<std::string> words;
    std::string k1, k2, rel_target;
    int rel_type = -1;
    int64_t ts;
    uint64_t seq;
  };
  std::mt19937 rng(20261121);
  auto pick = [&](int n) { return int(rng() % unsigned(n)); };
  std::vector<unit> units;
  units.reserve(n_units);
  for (int b = 0; b < n_units / batch; ++b) {
    // Each batch goes to one context, as the batch API requires.
    const std::string ctx = (b % 2 ? "team-a/" : "team-b/") + std::to_string(pick(n_contexts / 2));
    json list = json::array();
    std::vector<unit> pending;
    for (int i = 0; i < batch; ++i) {
      unit u;
      u.ctx = ctx;
      u.agent = "agent" + std::to_string(pick(20));
      u.type = pick(9);
      std::string text;
      for (int w = 0; w < 6; ++w) {
        const std::string word = "k" + std::to_string(pick(vocab));  // never changed by stemming
        u.words.insert(word);
        text += word + " ";
      }
      u.k1 = "v" + std::to_string(pick(5));
      u.k2 = "w" + std::to_string(pick(10));
      json j = {{"agent_id", u.agent}, {"type", u.type}, {"text", text}, {"meta", {{"k1", u.k1}, {"k2", u.k2}}}};
      if (!units.empty() && pick(4) == 0) {
        u.rel_target = units[size_t(pick(int(units.size())))].id;
        u.rel_type = 1 + pick(7);
        j["relationships"] = {{{"target_id", u.rel_target}, {"type", u.rel_type}}};
      }
      list.push_back(std::move(j));
      pending.push_back(std::move(u));
    }
    auto r = call(*http_, "POST", "/workunits", json({{"context_id", ctx}, {"work_units", list}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
    for (int i = 0; i < batch; ++i) {
      const auto& w = r.body["work_units"][size_t(i)];
      pending[size_t(i)].id = w["id"];
      pending[size_t(i)].seq = w["seq"];
      pending[size_t(i)].ts = w["ts"]["seconds"].get<int64_t>() * 1'000'000'000 + w["ts"]["nanos"].get<int64_t>();
      units.push_back(std::move(pending[size_t(i)]));
    }
  }
  wait_indexed();
  EXPECT_EQ(call(*http_, "GET", "/readyz").body["search"]["documents"], n_units);

  for (int round = 0; round < 150; ++round) {
    json body = json::object();
    std::function<bool(const unit&)> keep = [](const unit&) { return true; };
    auto also = [&](std::function<bool(const unit&)> f) {
      keep = [prev = keep, f = std::move(f)](const unit& u) { return prev(u) && f(u); };
    };
    const bool text = pick(2) == 0;
    if (text) {
      const std::string a = "k" + std::to_string(pick(vocab)), b = "k" + std::to_string(pick(vocab));
      if (pick(2)) {
        body["query"] = a;
        also([a](const unit& u) { return u.words.count(a) > 0; });
      } else {
        body["query"] = a + " OR " + b;
        also([a, b](const unit& u) { return u.words.count(a) + u.words.count(b) > 0; });
      }
    }
    if (pick(3) == 0) {
      if (pick(2)) {
        const std::string ctx = "team-a/" + std::to_string(pick(n_contexts / 2));
        body["context_id"] = ctx;
        also([ctx](const unit& u) { return u.ctx == ctx; });
      } else {
        body["context_id"] = "team-b/*";
        also([](const unit& u) { return u.ctx.starts_with("team-b/"); });
      }
    }
    if (pick(3) == 0) {
      std::set<std::string> agents = {"agent" + std::to_string(pick(20)), "agent" + std::to_string(pick(20))};
      body["agent_ids"] = agents;
      also([agents](const unit& u) { return agents.count(u.agent) > 0; });
    }
    if (pick(3) == 0) {
      std::set<int> types = {pick(9), pick(9)};
      body["types"] = types;
      also([types](const unit& u) { return types.count(u.type) > 0; });
    }
    if (pick(3) == 0) {
      const std::string v = "v" + std::to_string(pick(5));
      body["meta_filters"]["k1"] = v;
      also([v](const unit& u) { return u.k1 == v; });
      if (pick(2)) {
        const std::string w = "w" + std::to_string(pick(10));
        body["meta_filters"]["k2"] = w;
        also([w](const unit& u) { return u.k2 == w; });
      }
    }
    if (pick(6) == 0) {
      const auto& target = units[size_t(pick(n_units))];
      body["relationships"] = {{{"target_id", target.id}}};
      also([id = target.id](const unit& u) { return u.rel_target == id; });
    }
    if (pick(4) == 0) {
      const auto& a = units[size_t(pick(n_units))];
      const auto& b = units[size_t(pick(n_units))];
      const int64_t from = std::min(a.ts, b.ts), to = std::max(a.ts, b.ts);
      body["from"] = {{"seconds", from / 1'000'000'000}, {"nanos", from % 1'000'000'000}};
      body["to"] = {{"seconds", to / 1'000'000'000}, {"nanos", to % 1'000'000'000}};
      also([from, to](const unit& u) { return u.ts >= from && u.ts < to; });
    }
    std::vector<const unit*> expected;
    for (const auto& u : units)
      if (keep(u)) expected.push_back(&u);
    body["limit"] = 1000;
    body["snippets"] = false;
    auto r = search(body);
    ASSERT_EQ(r.status, 200u) << body.dump() << " → " << r.raw;
    if (expected.size() <= 10'000) {
      EXPECT_EQ(r.body["total_count"], expected.size()) << body.dump();
      EXPECT_EQ(r.body["total_count_exact"], true) << body.dump();
    }
    const auto& got = r.body["results"];
    ASSERT_EQ(got.size(), std::min<size_t>(expected.size(), 1000)) << body.dump();
    if (text) {
      if (expected.size() <= 1000) {
        std::set<std::string> want, have(got.begin(), got.end());
        for (const auto* u : expected) want.insert(u->id);
        EXPECT_EQ(have, want) << body.dump();
      }
    } else {
      // Newest first: exactly the brute-force order by (ts, seq) descending (a
      // batch shares one ts).
      std::sort(expected.begin(), expected.end(),
                [](const unit* x, const unit* y) { return std::tie(x->ts, x->seq) > std::tie(y->ts, y->seq); });
      for (size_t i = 0; i < got.size(); ++i) {
        if (got[i] != expected[i]->id) {
          ADD_FAILURE() << body.dump() << ": position " << i;
          break;
        }
      }
    }
  }
}

}  // namespace
}  // namespace engram::test
