// Codecs, ids and text helpers (internal/model).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "model/codec.hpp"
#include "model/ids.hpp"
#include "model/log_context.hpp"
#include "model/text.hpp"
#include "support/same_json.hpp"

namespace engram::model {
namespace {

TEST(Base64, RoundTripsAllLengthsAndBytes) {
  std::string bytes;
  for (int len = 0; len < 70; ++len) {
    const auto enc = base64_encode(bytes);
    ASSERT_EQ(enc.size() % 4, 0u);
    auto dec = base64_decode(enc);
    ASSERT_TRUE(dec) << enc;
    EXPECT_EQ(*dec, bytes);
    auto url = base64url_decode(base64url_encode(bytes));
    ASSERT_TRUE(url);
    EXPECT_EQ(*url, bytes);
    bytes.push_back(char(len * 37 + 11));
  }
  EXPECT_EQ(base64_encode("hello world"), "aGVsbG8gd29ybGQ=");
}

TEST(Base64, RejectsMalformedInput) {
  EXPECT_FALSE(base64_decode("a"));           // impossible length
  EXPECT_FALSE(base64_decode("aGk=\n"));      // whitespace
  EXPECT_FALSE(base64_decode("aG!="));        // alphabet
  EXPECT_FALSE(base64_decode("aGl="));        // non-zero padding bits
  EXPECT_FALSE(base64_decode("a-_b"));        // URL alphabet is not standard
  EXPECT_TRUE(base64_decode("aGk"));          // unpadded is accepted
  EXPECT_TRUE(base64_decode(""));
}

TEST(Utf8, AcceptsValidAndRejectsInvalid) {
  EXPECT_TRUE(valid_utf8("plain"));
  EXPECT_TRUE(valid_utf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));
  EXPECT_FALSE(valid_utf8("\xC3"));              // truncated
  EXPECT_FALSE(valid_utf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(valid_utf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(valid_utf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(valid_utf8("\xFF"));
  // ASCII is checked eight bytes at a time: a bad byte or a split character at
  // every position around those words is still found.
  for (size_t at = 0; at < 20; ++at) {
    std::string text(20, 'a');
    text[at] = '\xFF';
    EXPECT_FALSE(valid_utf8(text)) << at;
    text[at] = '\xC3';
    EXPECT_FALSE(valid_utf8(text)) << at;  // a lead byte followed by ASCII
    if (at + 1 < text.size()) {
      text[at + 1] = '\xA9';
      EXPECT_TRUE(valid_utf8(text)) << at;  // é across a word boundary or not
    }
    EXPECT_TRUE(valid_utf8(std::string(at, 'b') + "\xE2\x82\xAC" + std::string(9, 'c'))) << at;
    EXPECT_FALSE(valid_utf8(std::string(at, 'b') + "\xE2\x82")) << at;  // truncated at the end
  }
}

TEST(Identifier, ValidatesLengthUtf8AndControls) {
  EXPECT_FALSE(check_identifier("context_id", "project-7/main"));
  EXPECT_TRUE(check_identifier("context_id", ""));
  EXPECT_TRUE(check_identifier("context_id", std::string(257, 'a')));
  EXPECT_TRUE(check_identifier("context_id", "a\nb"));
  EXPECT_TRUE(check_identifier("context_id", "bad\xFF"));
  EXPECT_NE(check_identifier("agent_id", "")->find("agent_id"), std::string::npos);
}

TEST(Uuid, V7IsWellFormedAndStrictlyIncreasing) {
  uuid_v7_generator gen;
  std::set<std::string> seen;
  uuid prev{};
  for (int i = 0; i < 20000; ++i) {
    const auto id = gen.next(1'700'000'000'000 + i / 5000);  // many ids per millisecond
    EXPECT_EQ(id.version(), 7);
    EXPECT_EQ(id.bytes[8] >> 6, 0b10);
    if (i > 0) {
      EXPECT_LT(prev, id);
    }
    prev = id;
    const auto text = id.to_string();
    ASSERT_EQ(text.size(), 36u);
    auto back = uuid::parse(text);
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, id);
    seen.insert(text);
  }
  EXPECT_EQ(seen.size(), 20000u);
  EXPECT_EQ(gen.next(1'800'000'000'000).unix_ms(), 1'800'000'000'000);
}

TEST(Uuid, ParseRejectsNonCanonical) {
  EXPECT_FALSE(uuid::parse("not-a-uuid"));
  EXPECT_FALSE(uuid::parse("0190f0e0-0000-7000-8000-00000000000"));   // short
  EXPECT_FALSE(uuid::parse("0190f0e0x0000-7000-8000-000000000000"));  // dash
  EXPECT_FALSE(uuid::parse("0190f0e0-0000-7000-8000-00000000000g"));  // hex
  EXPECT_TRUE(uuid::parse("0190F0E0-0000-7000-8000-000000000000"));
}

TEST(Codec, UnitRoundTripsToV3Json) {
  auto parsed = unit_from_json(
      json::parse(R"({"context_id":"c","agent_id":"a","type":"TOOL_CALL","text":"héllo",
                       "meta":{"k":"v"},"relationships":[{"target_id":"x","type":"CAUSES"}]})"),
      {});
  ASSERT_TRUE(parsed) << parsed.error().message;
  parsed->set_seq(7);
  parsed->set_ts_ns(1'700'000'000'123'456'789);
  const json out = json::parse(unit_json(*parsed));
  EXPECT_EQ(out["type"], 3);
  EXPECT_EQ(out["seq"], 7);
  EXPECT_EQ(out["ts"]["seconds"], 1'700'000'000);
  EXPECT_EQ(out["ts"]["nanos"], 123'456'789);
  EXPECT_EQ(out["payload"], base64_encode("héllo"));
  EXPECT_EQ(out["relationships"][0]["type"], 2);
  EXPECT_EQ(out["meta"]["k"], "v");
  // Output is accepted as input again (payload as base64, integer types).
  auto again = unit_from_json(out, {});
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(again->payload(), "héllo");
  EXPECT_EQ(again->type(), api::WORK_UNIT_TYPE_TOOL_CALL);
}

TEST(Codec, UnitWriterEscapesAndMatchesNlohmann) {
  api::WorkUnit u;
  u.set_id("i\"d");
  u.set_context_id("c\\/\x01\n\t\r\x1f é😀");
  u.set_agent_id("a");
  u.set_seq(18446744073709551615ull);
  u.set_ts_ns(-1);
  (*u.mutable_meta())["z"] = "1";
  (*u.mutable_meta())["a"] = "\"quoted\"";
  auto* r = u.add_relationships();
  r->set_target_id("t");
  (*r->mutable_meta())["m"] = "v";
  const auto text = unit_json(u);
  auto parsed = json::parse(text);  // valid JSON
  EXPECT_EQ(parsed["id"], "i\"d");
  EXPECT_EQ(parsed["context_id"], u.context_id());
  EXPECT_EQ(parsed["seq"].get<uint64_t>(), 18446744073709551615ull);
  EXPECT_EQ(parsed["ts"], timestamp_json(-1));
  EXPECT_EQ(parsed["meta"]["a"], "\"quoted\"");
  EXPECT_LT(text.find("\"a\":"), text.find("\"z\":"));  // sorted keys: stable bytes
  EXPECT_EQ(parsed["relationships"][0]["meta"]["m"], "v");
  EXPECT_FALSE(parsed.contains("idempotency_key"));
  EXPECT_EQ(text, unit_json(u));
}

// Token counts: the client's own, or the server's estimate (characters / 4, rounded
// up; bytes / 4 for a payload that is not UTF-8), fixed at write time.
TEST(Codec, TokensAreTheClientsCountOrTheEstimate) {
  EXPECT_EQ(estimate_tokens(""), 0u);
  EXPECT_EQ(estimate_tokens("abcd"), 1u);
  EXPECT_EQ(estimate_tokens("abcde"), 2u);
  EXPECT_EQ(estimate_tokens("ééééé"), 2u);  // 5 characters in 10 bytes
  EXPECT_EQ(estimate_tokens(std::string("\xff\xfe\xfd\xfc\xfb", 5)), 2u);
  // Code points counted eight bytes at a time: every length and alignment of mixed
  // one- to four-byte characters against a count a byte at a time. Up to three
  // ASCII letters after it put the count on every side of a multiple of four, so
  // a count off by one changes at least one estimate.
  const std::string mixed = "a\u00e9\u20ac\U0001F600bc\u00e9\u00e9\u20acd\U0001F600\U0001F600efgh\u20ac";
  for (size_t from = 0; from < mixed.size(); ++from)
    for (size_t len = 0; from + len <= mixed.size(); ++len)
      for (const std::string_view tail : {"", "x", "xy", "xyz"}) {
        const std::string s = mixed.substr(from, len) + std::string(tail);
        if (!valid_utf8(s)) continue;
        size_t points = 0;
        for (unsigned char c : s) points += (c & 0xC0) != 0x80;
        ASSERT_EQ(estimate_tokens(s), (points + 3) / 4) << from << "+" << len << "+" << tail.size();
      }
  auto est = unit_from_json(json{{"context_id", "c"}, {"agent_id", "a"}, {"text", "twelve chars"}}, {});
  ASSERT_TRUE(est) << est.error().message;
  EXPECT_EQ(est->tokens(), 3u);
  auto own = unit_from_json(json{{"context_id", "c"}, {"agent_id", "a"}, {"text", "x"}, {"tokens", 7}}, {});
  ASSERT_TRUE(own);
  EXPECT_EQ(own->tokens(), 7u);
  for (const json& bad : {json(-1), json(1.5), json("7"), json(200'000'000)})
    EXPECT_FALSE(unit_from_json(json{{"context_id", "c"}, {"agent_id", "a"}, {"tokens", bad}}, {})) << bad;
}

// A SUMMARY names the seqs it covers.
TEST(Codec, SummariesNameTheSpanTheyCover) {
  auto unit = [](json meta) {
    return unit_from_json(json{{"context_id", "c"}, {"agent_id", "a"}, {"type", "SUMMARY"}, {"meta", meta}, {"text", "s"}}, {});
  };
  ASSERT_TRUE(unit({{"covers_from_seq", "3"}, {"covers_to_seq", "9"}}));
  EXPECT_TRUE(unit({{"covers_from_seq", "4"}, {"covers_to_seq", "4"}}));
  for (const json& bad : {json::object(), json{{"covers_from_seq", "3"}}, json{{"covers_from_seq", "0"}, {"covers_to_seq", "2"}},
                          json{{"covers_from_seq", "x"}, {"covers_to_seq", "2"}}, json{{"covers_from_seq", "5"}, {"covers_to_seq", "2"}},
                          json{{"covers_from_seq", "2 "}, {"covers_to_seq", "3"}}}) {
    auto r = unit(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find("covers_"), std::string::npos) << r.error().message;
  }
  // Other types take such meta as any other.
  EXPECT_TRUE(unit_from_json(json{{"context_id", "c"}, {"agent_id", "a"}, {"meta", {{"covers_from_seq", "x"}}}}, {}));
}

TEST(Codec, AcceptsEveryTypeByNumberAndName) {
  const char* names[] = {"UNKNOWN", "MESSAGE", "REASONING", "TOOL_CALL", "TOOL_RESULT",
                         "FILE_CHANGE", "TASK_STATUS", "ERROR", "SYSTEM", "SUMMARY"};
  for (int i = 0; i <= 9; ++i) {
    EXPECT_EQ(*unit_type_from_json(json(i), "type"), api::WorkUnitType(i));
    EXPECT_EQ(*unit_type_from_json(json(names[i]), "type"), api::WorkUnitType(i));
    EXPECT_EQ(*unit_type_from_json(json(std::string("work_unit_type_") + names[i]), "type"),
              api::WorkUnitType(i));
  }
  EXPECT_FALSE(unit_type_from_json(json(10), "type"));
  EXPECT_FALSE(unit_type_from_json(json(-1), "type"));
  EXPECT_FALSE(unit_type_from_json(json("NOPE"), "type"));
  EXPECT_FALSE(unit_type_from_json(json(1.5), "type"));
  EXPECT_NE(unit_type_from_json(json("NOPE"), "type").error().message.find("MESSAGE"), std::string::npos);
}

TEST(Codec, RejectsWrongTypesWithFieldNames) {
  struct bad_case {
    const char* body;
    const char* mentions;
  } cases[] = {
      {R"({"agent_id":"a"})", "context_id"},
      {R"({"context_id":"c"})", "agent_id"},
      {R"({"context_id":5,"agent_id":"a"})", "context_id"},
      {R"({"context_id":"c","agent_id":["a"]})", "agent_id"},
      {R"({"context_id":"c","agent_id":"a","type":{}})", "type"},
      {R"({"context_id":"c","agent_id":"a","meta":{"k":1}})", "meta.k"},
      {R"({"context_id":"c","agent_id":"a","meta":[]})", "meta"},
      {R"({"context_id":"c","agent_id":"a","payload":"!!"})", "base64"},
      {R"({"context_id":"c","agent_id":"a","payload":1})", "payload"},
      {R"({"context_id":"c","agent_id":"a","payload":"aGk=","text":"x"})", "not both"},
      {R"({"context_id":"c","agent_id":"a","relationships":{}})", "relationships"},
      {R"({"context_id":"c","agent_id":"a","relationships":[{"type":1}]})", "target_id"},
      {R"({"context_id":"c","agent_id":"a","relationships":[{"target_id":"x","type":99}]})", "relationships[].type"},
      {R"([1,2])", "object"},
  };
  for (const auto& c : cases) {
    auto r = unit_from_json(json::parse(c.body), {});
    ASSERT_FALSE(r) << c.body;
    EXPECT_EQ(r.error().code, errc::invalid_argument);
    EXPECT_NE(r.error().message.find(c.mentions), std::string::npos) << r.error().message;
  }
}

TEST(Codec, DefaultsFillContextAndAgent) {
  auto r = unit_from_json(json::parse(R"({"text":"x"})"), {"ctx", "header-agent"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->context_id(), "ctx");
  EXPECT_EQ(r->agent_id(), "header-agent");
  auto body_wins = unit_from_json(json::parse(R"({"agent_id":"body"})"), {"ctx", "header-agent"});
  EXPECT_EQ(body_wins->agent_id(), "body");
}

TEST(Codec, PatchAppliesAsSetsInAnyCombination) {
  api::Context ctx;
  ctx.set_id("c");
  auto p = patch_from_json(json::parse(R"({"display_name":"D","add_agents":["a","b","a"],
      "remove_agents":["b","zz"],"pin_units":["u1","u1"],"unpin_units":["u2"],
      "meta":{"k":"v","gone":null}})"));
  ASSERT_TRUE(p) << p.error().message;
  (*ctx.mutable_meta())["gone"] = "x";
  apply_patch(ctx, *p);
  apply_patch(ctx, *p);  // applying twice changes nothing more
  EXPECT_EQ(ctx.display_name(), "D");
  ASSERT_EQ(ctx.agent_ids_size(), 1);
  EXPECT_EQ(ctx.agent_ids(0), "a");
  ASSERT_EQ(ctx.pinned_units_size(), 1);
  EXPECT_EQ(ctx.meta().at("k"), "v");
  EXPECT_FALSE(ctx.meta().contains("gone"));
  // Same id added and removed in one patch ends up removed.
  auto both = patch_from_json(json::parse(R"({"add_agents":["x"],"remove_agents":["x"]})"));
  apply_patch(ctx, *both);
  EXPECT_EQ(ctx.agent_ids_size(), 1);
}

TEST(Codec, PatchRejectsWrongTypes) {
  for (const char* body : {R"({"display_name":1})", R"({"add_agents":"a"})", R"({"add_agents":[1]})",
                           R"({"pin_units":[""]})", R"({"meta":{"k":1}})", R"({"meta":"x"})", R"([])"}) {
    auto r = patch_from_json(json::parse(body));
    EXPECT_FALSE(r) << body;
  }
  EXPECT_TRUE(patch_from_json(json::parse("{}")));
}

TEST(Codec, TimestampsKeepNanosNonNegative) {
  EXPECT_EQ(timestamp_json(-1)["seconds"], -1);
  EXPECT_EQ(timestamp_json(-1)["nanos"], 999'999'999);
  EXPECT_EQ(timestamp_json(1'500'000'000)["seconds"], 1);
}

// Found by fuzz_query: GET /search?type=%BB answered 500 (dumping the bad name threw).
TEST(Codec, UnknownEnumNamesWithInvalidUtf8AreA400) {
  auto r = unit_type_from_json(json(std::string("\xBB")), "type");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, errc::invalid_argument);
  EXPECT_TRUE(r.error().message.starts_with("type \"")) << r.error().message;
}

// parse_json parses with simdjson and leaves to nlohmann what that fast path
// turns down; either way it must accept and reject what nlohmann does, and give
// the same values and number kinds, including where the two libraries differ.
TEST(ParseJson, AgreesWithNlohmann) {
  std::vector<std::string> texts = {
      R"({"context_id":"c","agent_id":"a","type":1,"text":"hello"})",
      "{}", "[]", " \t\n{ } ", "null", "true", "false", "0", "-0", "-0.0", "[0,-0]", "[0, -0 ]",
      R"({"a":0,"d":"2026-01-01"})",
      R"({"type":0,"ts":"2026-01-01","x":-0.5,"y":-0e1})", R"({"a":0,"s":"x:-0"})", "[-0]", " -0", "\t-0\n",
      "[1,\r\n-0]", "{\"a\":[{\"b\":\n-0}]}", "[0,1,-1,2.5]",
      "5", "-1", "1.5e10", "-1.5E-10", "0.1", "1e308", "5e-324", "1e400", "0.1e-400", "9223372036854775807",
      "9223372036854775808", "18446744073709551615", "18446744073709551616", "-9223372036854775808",
      "-9223372036854775809", "123456789012345678901234567890", "01", "1.", ".5", "+1", "NaN", "Infinity",
      R"("\u0000")", R"("\ud83d\ude00")", R"("\ud800")", R"("\udc00")", R"("\ud800\u0041")",
      R"("\"\\\/\b\f\n\r\t")", R"("\x")", "\"\x01\"", "\"caf\xc3\xa9\"", "\"\xff\"", "\"\xc3\"",
      "{\"\xff\":1}", "\xEF\xBB\xBF{}", "\xEF\xBB\xBF", R"({"a":1,"a":2})", R"({"b":{"a":[1,{"c":null}]}})",
      "[1,]", "{\"a\":1,}", "{} x", "{}{}", "", " ", "tru", "nul", "[1 2]", "{\"a\" 1}", "{'a':1}",
      "[1,2,3", "\"abc", "{\"a\":[1,2,{\"b\":3.25,\"c\":[true,false,null]}],\"d\":\"\"}",
      std::string("{}\0junk", 7)};
  texts.push_back("[\"" + std::string(70 * 1024, 'x') + "\",1]");     // beyond the kept parser
  texts.push_back("[\"" + std::string(1100 * 1024, 'x') + "\",1]");   // beyond the fast path
  texts.push_back(std::string(2000, '[') + std::string(2000, ']'));  // deeper than simdjson goes
  texts.push_back(std::string(2000, '[') + std::string(1999, ']'));
  for (const auto& text : texts) {
    const auto expected = json::parse(text, nullptr, /*allow_exceptions=*/false);
    const auto got = parse_json(text);
    ASSERT_EQ(got.has_value(), !expected.is_discarded()) << text.substr(0, 80);
    if (!got) continue;
    EXPECT_EQ(got->dump(), expected.dump()) << text.substr(0, 80);
    EXPECT_TRUE(test::same_json(*got, expected)) << "number kinds differ: " << text.substr(0, 80);
  }
  // The fast path is what parses ordinary bodies (so the cases above test it),
  // and it turns down what only nlohmann reads as nlohmann does.
  for (const char* text : {R"({"context_id":"c","agent_id":"a","type":1,"text":"hello"})", "{}", "[0,1,-1,2.5]",
                           R"({"type":0,"ts":"2026-01-01","x":-0.5,"y":-0e1})"})
    EXPECT_TRUE(detail::parse_json_fast(text)) << text;
  // A zero with what may be a -0 (even inside a string) goes to nlohmann:
  // slower, never different.
  for (const char* text : {"-0", "[0,-0]", "[0, -0 ]", R"({"a":0,"b":-0})", R"({"a":0,"s":"x:-0"})", "[-0]", " -0",
                           "\t-0\n", "[1,\r\n-0]", "{\"a\":[{\"b\":\n-0}]}",
                           "18446744073709551616", "\xEF\xBB\xBF{}"})
    EXPECT_FALSE(detail::parse_json_fast(text)) << text;
  EXPECT_TRUE(detail::parse_json_fast("[\"" + std::string(70 * 1024, 'x') + "\",1]"));
  EXPECT_FALSE(detail::parse_json_fast("[\"" + std::string(1100 * 1024, 'x') + "\",1]"));
}

TEST(LogScope, NestsAndAnInnerCompleteScopeHidesTheOuterFields) {
  auto keys = [] {
    std::string out;
    log_scope::for_each([&](const log_field& f) { out.append(f.key).append("=").append(f.value).append(" "); });
    return out;
  };
  EXPECT_EQ(keys(), "");
  std::string id = "r1";  // the scope views it: it must outlive the scope
  const log_field request_fields[] = {{"request_id", id}};
  log_scope request(request_fields);
  {
    const log_field inner_fields[] = {{"step", "2"}};
    log_scope inner(inner_fields);
    EXPECT_EQ(keys(), "request_id=r1 step=2 ");
  }
  {
    // An access-log line carries its own request_id: written once, not twice.
    const log_field access_fields[] = {{"request_id", "r1"}, {"status", "200", false}};
    log_scope access(access_fields, log_scope::outer_fields::hide);
    EXPECT_EQ(keys(), "request_id=r1 status=200 ");
  }
  EXPECT_EQ(keys(), "request_id=r1 ");
}

}  // namespace
}  // namespace engram::model
