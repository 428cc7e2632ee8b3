// The wire core shared by the server and the SDK (api/wire), and the proof that the
// two sides write the same wire JSON through it.
#include <gtest/gtest.h>

#include <climits>
#include <nlohmann/json.hpp>

#include "engram.pb.h"
#include "engram/types.hpp"
#include "model/codec.hpp"
#include "wire/base64.hpp"
#include "wire/enums.hpp"
#include "wire/timestamp.hpp"

namespace engram::wire {
namespace {

using json = nlohmann::json;

TEST(WireEnums, NamesAreTheProtoEnumsWithoutPrefixAndTheSdksNames) {
  for (size_t i = 0; i < unit_type_names.size(); ++i) {
    EXPECT_EQ(api::WorkUnitType_Name(api::WorkUnitType(i)), std::string(unit_type_prefix) + std::string(unit_type_names[i]));
    EXPECT_EQ(client::to_string(client::unit_type(i)), unit_type_names[i]);
    EXPECT_EQ(client::parse_unit_type(unit_type_names[i]), client::unit_type(i));
  }
  for (size_t i = 0; i < relationship_type_names.size(); ++i)
    EXPECT_EQ(api::RelationshipType_Name(api::RelationshipType(i)),
              std::string(relationship_type_prefix) + std::string(relationship_type_names[i]));
}

TEST(WireEnums, NamesMatchInAnyCaseAndThePrefixOnlyWhereAllowed) {
  EXPECT_EQ(enum_from_name(unit_type_names, "tool_call"), 3);
  EXPECT_EQ(enum_from_name(unit_type_names, "Message", unit_type_prefix), 1);
  EXPECT_EQ(enum_from_name(unit_type_names, "work_unit_type_system", unit_type_prefix), 8);
  EXPECT_EQ(enum_from_name(relationship_type_names, "RELATIONSHIP_TYPE_REPLACES", relationship_type_prefix), 7);
  EXPECT_FALSE(enum_from_name(unit_type_names, "WORK_UNIT_TYPE_MESSAGE"));  // no prefix given
  EXPECT_FALSE(enum_from_name(unit_type_names, "WORK_UNIT_TYPE_", unit_type_prefix));
  EXPECT_FALSE(enum_from_name(unit_type_names, ""));
  EXPECT_FALSE(enum_from_name(unit_type_names, "MESSAGES"));
  EXPECT_EQ(enum_name(relationship_type_names, 2), "CAUSES");
  EXPECT_EQ(enum_name(unit_type_names, 9), "SUMMARY");
  EXPECT_EQ(enum_name(unit_type_names, 10), "");  // a newer peer's value
  EXPECT_EQ(enum_name(unit_type_names, -1), "");
}

TEST(WireBase64, EncodesTheRfc4648Vectors) {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},           {"f", "Zg=="},         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},    {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(base64_encode(plain), encoded);
    EXPECT_EQ(base64_decode(encoded), plain);
  }
  std::string out = "x";
  base64_encode_append(out, "fo");
  EXPECT_EQ(out, "xZm8=");
  // The two alphabets differ in the last two symbols; the URL form has no padding.
  EXPECT_EQ(base64_encode("\xfb\xff"), "+/8=");
  EXPECT_EQ(base64url_encode("\xfb\xff"), "-_8");
  EXPECT_EQ(base64url_decode("-_8"), "\xfb\xff");
  EXPECT_FALSE(base64url_decode("+/8"));
  EXPECT_FALSE(base64url_decode("-_8="));
}

TEST(WireTimestamp, NanosStayNonNegativeAndBothWritersAgree) {
  static_assert(split_timestamp(-1).seconds == -1 && split_timestamp(-1).nanos == 999'999'999);
  for (const int64_t ns : {int64_t(0), int64_t(-1), int64_t(1'500'000'000), int64_t(-1'000'000'000),
                           int64_t(1'700'000'000'123'456'789), INT64_MIN, INT64_MAX}) {
    const auto t = split_timestamp(ns);
    EXPECT_GE(t.nanos, 0);
    EXPECT_LT(t.nanos, 1'000'000'000);
    std::string text;
    append_timestamp_json(text, ns);
    EXPECT_EQ(text, "{\"seconds\":" + std::to_string(t.seconds) + ",\"nanos\":" + std::to_string(t.nanos) + "}");
    EXPECT_EQ(json::parse(text), timestamp_json(ns)) << ns;
  }
}

// The server's direct writer, byte for byte (clients and tests compare these bytes).
TEST(WireUnit, ServerWritesTheV3BytesAndTheSdkTheSameValue) {
  api::WorkUnit u;
  u.set_id("u");
  u.set_context_id("c");
  u.set_seq(3);
  u.set_agent_id("a");
  u.set_type(api::WORK_UNIT_TYPE_MESSAGE);
  u.set_ts_ns(-1);
  (*u.mutable_meta())["k"] = "v";
  u.set_payload(std::string("h\0i\xff", 4));
  auto* r = u.add_relationships();
  r->set_target_id("t");
  r->set_type(api::RELATIONSHIP_TYPE_CAUSES);
  (*r->mutable_meta())["m"] = "n";
  u.set_idempotency_key("key");
  const std::string text = model::unit_json(u);
  EXPECT_EQ(text,
            R"({"id":"u","context_id":"c","seq":3,"agent_id":"a","type":1,"ts":{"seconds":-1,"nanos":999999999},)"
            R"("meta":{"k":"v"},"payload":"aABp/w==","relationships":[{"target_id":"t","type":2,"meta":{"m":"n"}}],)"
            R"("idempotency_key":"key","tokens":1})");  // 4 bytes, not UTF-8: ⌈4 / 4⌉

  client::work_unit cu{.id = "u",
                       .context_id = "c",
                       .seq = 3,
                       .agent_id = "a",
                       .type = client::unit_type::message,
                       .ts = client::timestamp(std::chrono::nanoseconds(-1)),
                       .meta = {{"k", "v"}},
                       .payload = std::string("h\0i\xff", 4),
                       .relationships = {{"t", client::relationship_type::causes, {{"m", "n"}}}},
                       .idempotency_key = "key",
                       .tokens = 1};
  EXPECT_EQ(json::parse(client::to_json(cu)), json::parse(text));
}

}  // namespace
}  // namespace engram::wire
