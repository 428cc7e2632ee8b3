// Pure pieces of search: term layout, request parsing, time parsing.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "gateway/search_params.hpp"
#include "model/codec.hpp"
#include "search/terms.hpp"
#include "search/yield.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using model::json;

TEST(SearchTerms, LongValuesAreHashedButStayDistinctAndKeepTheirPrefix) {
  const std::string a(300, 'a');
  std::string b = a;
  b.back() = 'b';
  const auto ta = search::bool_term("XC", a), tb = search::bool_term("XC", b);
  EXPECT_LE(ta.size(), search::max_term_bytes);
  EXPECT_NE(ta, tb);
  EXPECT_EQ(ta, search::bool_term("XC", a));
  EXPECT_TRUE(ta.starts_with("XC" + std::string(search::max_context_prefix_bytes, 'a')));
  EXPECT_EQ(search::bool_term("XC", "short"), "XCshort");
  // The longest value kept verbatim, and one byte more.
  EXPECT_EQ(search::bool_term("XC", std::string(238, 'x')).size(), 240u);
  EXPECT_NE(search::bool_term("XC", std::string(239, 'x')).find('#'), std::string::npos);
}

TEST(SearchTerms, SortableIntegersRoundTripAndSortAsBytes) {
  for (uint64_t v : std::initializer_list<uint64_t>{0, 1, 255, 256, 1'795'293'945'000'000'000, UINT64_MAX})
    EXPECT_EQ(search::read_sortable_u64(search::sortable_u64(v)), v);
  EXPECT_LT(search::sortable_u64(255), search::sortable_u64(256));
  EXPECT_EQ(search::read_sortable_u64("short"), 0u);
}

TEST(SearchTerms, PayloadTextSkipsBinaryAndCutsAtCharacterBoundaries) {
  api::WorkUnit u;
  u.set_payload("héllo wörld");
  EXPECT_EQ(search::payload_text(u, 100), "héllo wörld");
  EXPECT_EQ(search::payload_text(u, 2), "h");  // 'é' is two bytes: not cut in half
  u.set_payload(std::string("a\0b", 3));
  EXPECT_FALSE(search::payload_text(u, 100));
  u.set_payload("\xff\xfe");
  EXPECT_FALSE(search::payload_text(u, 100));
  u.set_payload("");
  EXPECT_FALSE(search::payload_text(u, 100));
}

TEST(SearchTerms, SnippetUnescapingIsExact) {
  EXPECT_EQ(search::unescape_html("a &lt;b&gt; &amp;lt; &quot;q&quot; &#39;s&#39; &x"), "a <b> &lt; \"q\" 's' &x");
}

TEST(SearchTerms, FiltersRejectOverlongPrefixPatterns) {
  search::query q;
  q.context_id = std::string(search::max_context_prefix_bytes, 'p') + "*";
  EXPECT_TRUE(search::filter_query(q));
  q.context_id = std::string(search::max_context_prefix_bytes + 1, 'p') + "*";
  EXPECT_FALSE(search::filter_query(q));
  q.context_id.clear();
  EXPECT_FALSE(search::filter_query(q)->has_value());  // no filters at all
}

// The indexer pauses only while the backlog is over search.yield_backlog and still
// growing, long enough to be busy yield_percent of the time, at most max_yield.
TEST(SearchYield, PausesOnlyWhileTheBacklogGrows) {
  using std::chrono::milliseconds;
  search::options o;  // 10,000 events, 10%
  EXPECT_TRUE(search::over_yield_backlog(o, 10'001));
  EXPECT_FALSE(search::over_yield_backlog(o, 10'000));
  EXPECT_EQ(search::yield_pause(o, milliseconds(10), 500, 256, 20'000), milliseconds(90));
  EXPECT_EQ(search::yield_pause(o, milliseconds(10), 256, 256, 20'000), milliseconds(90));  // keeping pace only
  EXPECT_EQ(search::yield_pause(o, milliseconds(10), 255, 256, 20'000).count(), 0);         // catching up
  EXPECT_EQ(search::yield_pause(o, milliseconds(10), 500, 256, 10'000).count(), 0);         // backlog not over
  EXPECT_EQ(search::yield_pause(o, milliseconds(10), 500, 0, 20'000).count(), 0);           // took nothing
  EXPECT_EQ(search::yield_pause(o, milliseconds(500), 5000, 256, 20'000), search::max_yield);
  o.yield_percent = 50;
  EXPECT_EQ(search::yield_pause(o, milliseconds(10), 500, 256, 20'000), milliseconds(10));
  o.yield_percent = 100;
  EXPECT_EQ(search::yield_pause(o, milliseconds(10), 500, 256, 20'000).count(), 0);
  EXPECT_FALSE(search::over_yield_backlog(o, 20'000));  // off: no short rounds either
  o.yield_percent = 10;
  o.yield_backlog = 0;  // off
  EXPECT_EQ(search::yield_pause(o, milliseconds(10), 500, 256, 1'000'000'000).count(), 0);
}

// The head is a value; documents indexed before it moved there keep it in their
// data, and both read back the same from a database on disk.
TEST(SearchTerms, HeadsReadBackFromValuesAndFromOlderDocumentData) {
  api::WorkUnit u;
  u.set_id("u-1");
  u.set_context_id("ctx");
  u.set_seq(7);
  u.set_ts_ns(1'795'293'945'000'000'000);
  u.set_agent_id("agent");
  u.set_type(api::WORK_UNIT_TYPE_TOOL_CALL);
  u.set_payload("some text");
  temp_dir dir;
  {
    Xapian::WritableDatabase db(dir.str() + "/db", Xapian::DB_CREATE);
    Xapian::TermGenerator generator;
    db.add_document(search::make_document(u, generator, 100));
    Xapian::Document old;
    api::WorkUnit head = u;
    head.clear_payload();
    old.set_data(head.SerializeAsString());
    db.add_document(old);
    db.commit();
  }
  Xapian::Database db(dir.str() + "/db");
  const auto fresh = db.get_document(1);
  EXPECT_TRUE(fresh.get_data().empty());  // nothing for glass to compress
  for (const Xapian::docid id : {1u, 2u}) {
    const auto head = search::document_head(db.get_document(id));
    EXPECT_EQ(head.id(), "u-1") << id;
    EXPECT_EQ(head.context_id(), "ctx") << id;
    EXPECT_EQ(head.seq(), 7u) << id;
    EXPECT_EQ(head.ts_ns(), u.ts_ns()) << id;
    EXPECT_EQ(head.agent_id(), "agent") << id;
    EXPECT_EQ(head.type(), api::WORK_UNIT_TYPE_TOOL_CALL) << id;
    EXPECT_TRUE(head.payload().empty()) << id;
  }
}

TEST(Rfc3339, ParsesOffsetsAndFractions) {
  EXPECT_EQ(*model::parse_rfc3339("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(*model::parse_rfc3339("1970-01-01T00:00:01.5Z"), 1'500'000'000);
  EXPECT_EQ(*model::parse_rfc3339("1970-01-01T01:00:00+01:00"), 0);
  EXPECT_EQ(*model::parse_rfc3339("2026-11-21T20:40:00.123456789z"), 1'795'293'600'123'456'789);
  EXPECT_EQ(*model::parse_rfc3339("2000-02-29 12:00:00-00:30"), *model::parse_rfc3339("2000-02-29T12:30:00Z"));
  for (const char* bad : {"", "2026-11-21", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-21T24:00:00Z",
                          "2026-11-21T20:40:00", "2026-11-21T20:40:00.Z", "2026-11-21T20:40:00Zjunk",
                          "2026-11-21T20:40:00+1:00", "1969-12-31T23:59:59Z"})
    EXPECT_FALSE(model::parse_rfc3339(bad)) << bad;
  EXPECT_EQ(*model::timestamp_from_json(json{{"seconds", 2}, {"nanos", 5}}, "t"), 2'000'000'005);
  EXPECT_FALSE(model::timestamp_from_json(json{{"seconds", 2}, {"nanos", 1'000'000'000}}, "t"));
  EXPECT_FALSE(model::timestamp_from_json(json(5), "t"));
}

TEST(SearchParams, BodyFieldsMapOntoTheQuery) {
  auto r = gateway::parse_search_body(json::parse(R"({
    "query":"flaky tests","context_id":"proj/*","agent_ids":["a1","a2"],"types":[1,"SYSTEM","tool_call"],
    "meta_filters":{"k":"v"},"relationships":[{"target_id":"u1","type":"RESPONDS_TO"},{"target_id":"u2"}],
    "from":"2026-01-01T00:00:00Z","to":{"seconds":1800000000,"nanos":0},"limit":7,"offset":3,"snippets":false,
    "mode":"keyword","unknown_field":1})"));
  ASSERT_TRUE(r) << r.error().message;
  const auto& q = r->query;
  EXPECT_EQ(q.text, "flaky tests");
  EXPECT_EQ(q.context_id, "proj/*");
  EXPECT_EQ(q.agent_ids, (std::vector<std::string>{"a1", "a2"}));
  EXPECT_EQ(q.types, (std::vector<int>{1, 8, 3}));
  ASSERT_EQ(q.meta.size(), 1u);
  ASSERT_EQ(q.relationships.size(), 2u);
  EXPECT_EQ(q.relationships[0].type, 5);
  EXPECT_FALSE(q.relationships[1].type);
  EXPECT_EQ(*q.from_ns, *model::parse_rfc3339("2026-01-01T00:00:00Z"));
  EXPECT_EQ(*q.to_ns, 1'800'000'000'000'000'000);
  EXPECT_EQ(r->limit, 7u);
  EXPECT_EQ(q.offset, 3u);
  EXPECT_FALSE(q.snippets);
  EXPECT_TRUE(gateway::parse_search_body(json::object()));
  json many = {{"agent_ids", std::vector<std::string>(gateway::max_filter_values + 1, "a")}};
  EXPECT_FALSE(gateway::parse_search_body(many));
}

TEST(SearchParams, QueryStringFieldsMapOntoTheQuery) {
  auto r = gateway::parse_search_params({{"q", "x y"}, {"context", "c1"}, {"agent", "a1"}, {"agent", "a2"},
                                         {"type", "8"}, {"type", "message"}, {"meta", "k=v=w"},
                                         {"rel", "REFERENCES:u1"}, {"rel", "no-type:u2"}, {"from", "60"},
                                         {"to", "1970-01-01T00:02:00Z"}, {"limit", "5"}, {"offset", "10"},
                                         {"snippets", "false"}});
  ASSERT_TRUE(r) << r.error().message;
  const auto& q = r->query;
  EXPECT_EQ(q.text, "x y");
  EXPECT_EQ(q.agent_ids.size(), 2u);
  EXPECT_EQ(q.types, (std::vector<int>{8, 1}));
  EXPECT_EQ(q.meta[0], (std::pair<std::string, std::string>{"k", "v=w"}));
  EXPECT_EQ(q.relationships[0].type, 4);
  EXPECT_EQ(q.relationships[0].target_id, "u1");
  EXPECT_FALSE(q.relationships[1].type);  // "no-type" names no type: all of it is the target
  EXPECT_EQ(q.relationships[1].target_id, "no-type:u2");
  EXPECT_EQ(*q.from_ns, 60'000'000'000);
  EXPECT_EQ(*q.to_ns, 120'000'000'000);
  EXPECT_EQ(r->limit, 5u);
  EXPECT_EQ(q.offset, 10u);
  EXPECT_FALSE(q.snippets);
  for (auto bad : std::vector<std::pair<std::string, std::string>>{
           {"limit", "-1"}, {"offset", "1e3"}, {"type", "NOPE"}, {"meta", "nokey"}, {"from", "later"},
           {"snippets", "maybe"}, {"mode", "vector"}, {"vector", "1,x"}, {"vector", "0,0"}, {"vector", ""}, {"q", std::string(gateway::max_query_bytes + 1, 'q')}})
    EXPECT_FALSE(gateway::parse_search_params({bad})) << bad.first << "=" << bad.second;
}

}  // namespace
}  // namespace engram::test
