// The real server on 127.0.0.1:0 with a real HTTP client: every route and error.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <thread>

#include <yaml-cpp/yaml.h>

#include "model/text.hpp"
#include "storage/store.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

class ServerTest : public ::testing::Test {
 protected:
  ServerTest() : server_(dir_), http_(server_.connect()) {}

  reply post_unit(const json& body, const client::header_list& headers = {}) {
    return call(http_, "POST", "/workunit", body.dump(), headers);
  }
  reply get(const std::string& target) { return call(http_, "GET", target); }

  // All units of a context, via forward paging.
  std::vector<json> all_units(const std::string& ctx) {
    std::vector<json> out;
    std::string cursor;
    do {
      auto r = get("/workunits/" + ctx + "?limit=1000&cursor=" + cursor);
      EXPECT_EQ(r.status, 200u) << r.raw;
      for (auto& u : r.body["work_units"]) out.push_back(u);
      cursor = r.body["next_cursor"];
    } while (!cursor.empty());
    return out;
  }

  temp_dir dir_;
  test_server server_;
  client::http_connection http_;
};

TEST_F(ServerTest, HealthReadyAndMetrics) {
  auto h = get("/healthz");
  EXPECT_EQ(h.status, 200u);
  EXPECT_EQ(h.raw, "OK");
  auto r = get("/readyz");
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.body["status"], "ready");
  ASSERT_EQ(post_unit({{"context_id", "m"}, {"agent_id", "a"}, {"text", "x"}}).status, 201u);
  auto m = get("/metrics");
  EXPECT_EQ(m.status, 200u);
  EXPECT_NE(m.http.header("content-type").find("text/plain"), std::string::npos);
  for (const char* name : {"engram_http_requests_total{", "engram_http_request_duration_seconds_bucket{",
                           "engram_storage_units_written_total 1", "engram_storage_commit_group_units_bucket",
                           "engram_storage_wal_write_seconds_count", "engram_http_connections_active"})
    EXPECT_NE(m.raw.find(name), std::string::npos) << name;
}

TEST_F(ServerTest, RootRedirectsToThePageAndTheApiDescriptionIsServed) {
  auto root = get("/");
  EXPECT_EQ(root.status, 302u);
  EXPECT_EQ(root.http.header("location"), "/ui/");
  auto spec = get("/openapi.yaml");
  ASSERT_EQ(spec.status, 200u);
  EXPECT_NE(spec.http.header("content-type").find("yaml"), std::string::npos);
  // The served description is the repository's file, byte for byte.
  std::ifstream file(std::string(ENGRAM_SOURCE_DIR) + "/api/openapi.yaml", std::ios::binary);
  const std::string expected((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(spec.raw, expected);
  EXPECT_EQ(get("/nope").status, 404u);
}

TEST_F(ServerTest, TheDashboardsFilesAreServedFromTheBinary) {
  auto index = get("/ui/");
  ASSERT_EQ(index.status, 200u);
  EXPECT_EQ(index.http.header("content-type"), "text/html; charset=utf-8");
  std::ifstream file(std::string(ENGRAM_SOURCE_DIR) + "/web/ui/index.html", std::ios::binary);
  const std::string expected((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  EXPECT_EQ(index.raw, expected);
  // Nothing may be loaded from elsewhere.
  EXPECT_NE(index.http.header("content-security-policy").find("default-src 'none'; script-src 'self'"), std::string::npos);
  auto app = get("/ui/app.js");
  ASSERT_EQ(app.status, 200u);
  EXPECT_EQ(app.http.header("content-type"), "text/javascript; charset=utf-8");
  const std::string etag(app.http.header("etag"));
  ASSERT_FALSE(etag.empty());
  EXPECT_EQ(call(http_, "GET", "/ui/app.js", "", {{"If-None-Match", etag}}).status, 304u);
  EXPECT_EQ(get("/ui/style.css").http.header("content-type"), "text/css; charset=utf-8");
  EXPECT_EQ(get("/ui/missing.js").status, 404u);
  EXPECT_EQ(get("/ui/../openapi.yaml").status, 404u);
  auto bare = get("/ui");
  EXPECT_EQ(bare.status, 301u);
  EXPECT_EQ(bare.http.header("location"), "/ui/");
}

// A misspelt field is a 400 that names it and suggests the closest known one, and
// nothing is written; every field an Engram v3 client sends is still accepted.
TEST_F(ServerTest, UnknownBodyFieldsAreRefusedWithTheClosestKnownName) {
  struct bad_case {
    const char* method;
    const char* target;
    const char* body;
    const char* says;
  };
  for (const auto& c : std::vector<bad_case>{
           {"POST", "/workunit", R"({"context_id":"typo","agent_id":"a","txt":"hi"})",
            "unknown field 'txt' in the work unit; did you mean 'text'?"},
           {"POST", "/workunit", R"({"context_id":"typo","agent_id":"a","text":"x","relationships":[{"target":"u"}]})",
            "unknown field 'target' in the work unit relationships[]; did you mean 'target_id'?"},
           {"POST", "/workunit",
            R"({"context_id":"typo","agent_id":"a","text":"x","fence":{"resource":"r","tokn":1}})",
            "did you mean 'token'?"},
           {"POST", "/workunits", R"({"context_id":"typo","agent_id":"a","work_unit":[{"text":"x"}]})",
            "unknown field 'work_unit' in the batch; did you mean 'work_units'?"},
           {"POST", "/workunits", R"({"context_id":"typo","agent_id":"a","work_units":[{"text":"x"},{"paylod":"eA=="}]})",
            "work_units[1]: unknown field 'paylod' in the work unit; did you mean 'payload'?"},
           {"PATCH", "/contexts/typo", R"({"display":"x"})", "unknown field 'display' in the context patch"},
           {"POST", "/search", R"({"qeury":"x"})", "did you mean 'query'?"},
           {"POST", "/locks", R"({"resource_path":"r","agent_id":"a","zzz":1})",
            "unknown field 'zzz' in the lock request (known: resource_path, "},
       }) {
    auto r = call(http_, c.method, c.target, c.body);
    EXPECT_EQ(r.status, 400u) << c.body << " -> " << r.raw;
    EXPECT_NE(r.body.value("error", "").find(c.says), std::string::npos) << c.body << " -> " << r.raw;
  }
  EXPECT_EQ(get("/workunits/typo").body["context_exists"], false);  // nothing was written
  EXPECT_EQ(get("/locks/r").status, 404u);

  // What a v3 client sends: server-assigned unit fields echoed back, the context's id
  // in a PATCH body.
  auto v3 = post_unit({{"id", "ignored"}, {"context_id", "v3"}, {"seq", 9}, {"agent_id", "a"}, {"type", 1},
                       {"ts", {{"seconds", 1}, {"nanos", 0}}}, {"meta", json::object()}, {"payload", "eA=="},
                       {"relationships", json::array()}, {"idempotency_key", ""}});
  EXPECT_EQ(v3.status, 201u) << v3.raw;
  EXPECT_EQ(call(http_, "PATCH", "/contexts/v3", R"({"id":"v3","display_name":"V3"})").status, 200u);
  // A v3 client sends display_name "" when it does not mean to rename: the name stays.
  auto kept = call(http_, "PATCH", "/contexts/v3", R"({"id":"v3","display_name":"","meta":{"k":"v"}})");
  EXPECT_EQ(kept.status, 200u) << kept.raw;
  EXPECT_EQ(kept.body["context"]["display_name"], "V3");
  EXPECT_EQ(kept.body["context"]["meta"]["k"], "v");
}

TEST(ServerConfig, UnknownBodyFieldsCanBeAcceptedByConfiguration) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.server.reject_unknown_fields = false;
  test_server server(cfg);
  auto http = server.connect();
  auto r = call(http, "POST", "/workunit", R"({"context_id":"c","agent_id":"a","text":"x","extra":{"k":1}})");
  EXPECT_EQ(r.status, 201u) << r.raw;
}

// Errors found only when the server starts (a secret too short, an address in use,
// a certificate that does not load) name the key and where its value came from.
TEST(ServerConfig, ErrorsFoundAtStartNameWhereTheValueCameFrom) {
  temp_dir dir;
  auto start_with = [&](config::sources src) -> std::string {
    src.flags.insert(src.flags.begin(), {"storage.data_dir", dir.str() + "/data"});
    src.env.emplace("ENGRAM_SERVER_ADDR", "127.0.0.1:0");  // unless the case sets it
    auto cfg = config::load(src);
    if (!cfg) return cfg.error().message;
    auto started = app::app::start(*cfg);
    return started ? std::string("started") : started.error().message;
  };
  auto short_secret = start_with({.env = {{"ENGRAM_AUTH_SECRET", "too-short"}}, .flags = {{"auth.enabled", "true"}}});
  EXPECT_NE(short_secret.find("config key 'auth.secret' (environment ENGRAM_AUTH_SECRET): must be at least 32 bytes"),
            std::string::npos) << short_secret;
  EXPECT_EQ(short_secret.find("too-short"), std::string::npos) << "a secret was echoed: " << short_secret;

  const std::string secret_file = dir.str() + "/secret";
  std::ofstream(secret_file) << "short\n";
  auto from_file = start_with({.flags = {{"auth.enabled", "true"}, {"auth.secret_file", secret_file}}});
  EXPECT_NE(from_file.find("config key 'auth.secret' (read from auth.secret_file, command line)"), std::string::npos)
      << from_file;

  auto no_secret = start_with({.flags = {{"auth.enabled", "true"}}});
  EXPECT_NE(no_secret.find("config key 'auth.secret' (default)"), std::string::npos) << no_secret;

  test_server running(test_config(dir.str() + "/other"));
  const std::string taken = "127.0.0.1:" + std::to_string(running.port());
  auto in_use = start_with({.env = {{"ENGRAM_SERVER_ADDR", taken}}});
  EXPECT_NE(in_use.find("config key 'server.addr' (environment ENGRAM_SERVER_ADDR): cannot listen on " + taken),
            std::string::npos) << in_use;

  const std::string yaml = dir.str() + "/engram.yaml";
  std::ofstream(yaml) << "server:\n  tls:\n    cert: " << dir.str() << "/missing.pem\n    key: " << dir.str()
                      << "/missing.key\n";
  auto bad_cert = start_with({.file = yaml});
  EXPECT_NE(bad_cert.find("config key 'server.tls.cert' (" + yaml + ")"), std::string::npos) << bad_cert;
  std::ofstream(dir.str() + "/c.pem") << "not checked before the pair is\n";
  auto half_tls = start_with({.flags = {{"server.tls.cert", dir.str() + "/c.pem"}}});
  EXPECT_NE(half_tls.find("config key 'server.tls.cert' (command line): is set without server.tls.key"),
            std::string::npos) << half_tls;
}

// ?text=1 on unit reads adds the payload as "text" (null when it is not UTF-8);
// without it, units are exactly v3's.
TEST_F(ServerTest, TextParameterAddsThePayloadAsText) {
  auto utf8 = post_unit({{"context_id", "txt"}, {"agent_id", "a"}, {"text", "héllo \"agents\"\n"}});
  auto binary = post_unit({{"context_id", "txt"}, {"agent_id", "a"}, {"payload", "//79"}});  // ff fe fd
  ASSERT_EQ(utf8.status, 201u);
  ASSERT_EQ(binary.status, 201u);
  const std::string id = utf8.body["work_unit"]["id"];
  auto one = get("/workunit/" + id + "?text=1");
  EXPECT_EQ(one.body["work_unit"]["text"], "héllo \"agents\"\n") << one.raw;
  EXPECT_EQ(one.body["work_unit"]["payload"], utf8.body["work_unit"]["payload"]);
  EXPECT_FALSE(get("/workunit/" + id).body["work_unit"].contains("text"));
  auto both = get("/workunit/" + id + "?text=true&include=embedding");
  EXPECT_EQ(both.body["work_unit"]["text"], "héllo \"agents\"\n");
  EXPECT_TRUE(both.body["work_unit"]["embedding"].is_null());
  auto page = get("/workunits/txt?text=1");
  ASSERT_EQ(page.body["work_units"].size(), 2u);
  EXPECT_EQ(page.body["work_units"][0]["text"], "héllo \"agents\"\n");
  EXPECT_TRUE(page.body["work_units"][1]["text"].is_null()) << page.raw;
  EXPECT_FALSE(get("/workunits/txt").body["work_units"][0].contains("text"));
  EXPECT_EQ(get("/workunits/txt?text=maybe").status, 400u);
}

// GET /contexts/{id}/events: the whole log (units, context updates, lease events)
// as the streams deliver it, paged by seq; 404 for a context that does not exist.
TEST_F(ServerTest, ContextEventsListEveryKindOfEventAndRefuseUnknownContexts) {
  ASSERT_EQ(post_unit({{"context_id", "ev/a"}, {"agent_id", "a"}, {"text", "one"}}).status, 201u);
  ASSERT_EQ(call(http_, "PATCH", "/contexts/ev/a", R"({"display_name":"Events"})").status, 200u);
  auto lock = call(http_, "POST", "/locks", R"({"resource_path":"f","agent_id":"a","context_id":"ev/a"})");
  ASSERT_EQ(lock.status, 200u) << lock.raw;
  ASSERT_EQ(post_unit({{"context_id", "ev/a"}, {"agent_id", "b"}, {"text", "two"}}).status, 201u);

  auto all = get("/contexts/ev/a/events?text=1");
  ASSERT_EQ(all.status, 200u) << all.raw;
  std::vector<std::string> kinds;
  uint64_t seq = 0;
  for (const auto& e : all.body["events"]) {
    EXPECT_EQ(e["seq"], ++seq) << all.raw;
    kinds.push_back(e["type"].is_string() ? e["type"].get<std::string>() : "unit:" + e.value("text", ""));
  }
  EXPECT_EQ(kinds, (std::vector<std::string>{"unit:one", "context_updated", "lock_acquired", "unit:two"}));
  EXPECT_EQ(all.body["head_seq"], 4);
  EXPECT_EQ(all.body["more"], false);
  EXPECT_EQ(all.body["next_after_seq"], 4);

  auto first = get("/contexts/ev/a/events?limit=2");
  ASSERT_EQ(first.body["events"].size(), 2u);
  EXPECT_FALSE(first.body["events"][0].contains("text"));  // v3's unit form unless asked
  EXPECT_EQ(first.body["more"], true);
  auto rest = get("/contexts/ev%2Fa/events?after_seq=" + std::to_string(first.body["next_after_seq"].get<int>()));
  ASSERT_EQ(rest.body["events"].size(), 2u);
  EXPECT_EQ(rest.body["events"][0]["seq"], 3);
  EXPECT_EQ(rest.body["more"], false);
  EXPECT_EQ(get("/contexts/ev/a/events?after_seq=4").body["events"], json::array());

  auto missing = get("/contexts/ev/typo/events");
  EXPECT_EQ(missing.status, 404u);
  EXPECT_EQ(missing.body["error"], "Context not found");
  EXPECT_EQ(get("/contexts/ev/a/events?after_seq=x").status, 400u);
  EXPECT_EQ(get("/contexts/ev/a/events?limit=-1").status, 400u);
  EXPECT_EQ(call(http_, "POST", "/contexts/ev/a/events", "{}").status, 405u);
  EXPECT_EQ(get("/contexts/ev/a").body["context"]["display_name"], "Events");  // still the context
}

TEST_F(ServerTest, AppendThenFetchInV3Format) {
  auto r = post_unit({{"context_id", "ctx-1"}, {"agent_id", "alice"}, {"type", "MESSAGE"},
                      {"payload", model::base64_encode("hello")}, {"meta", {{"lang", "en"}}},
                      {"relationships", {{{"target_id", "t"}, {"type", 5}}}}});
  ASSERT_EQ(r.status, 201u) << r.raw;
  const auto& u = r.body["work_unit"];
  EXPECT_EQ(u["context_id"], "ctx-1");
  EXPECT_EQ(u["agent_id"], "alice");
  EXPECT_EQ(u["type"], 1);
  EXPECT_EQ(u["seq"], 1);
  EXPECT_EQ(u["payload"], model::base64_encode("hello"));
  EXPECT_TRUE(u["ts"]["seconds"].is_number_integer());
  EXPECT_TRUE(u["ts"]["nanos"].is_number_integer());
  EXPECT_EQ(u["relationships"][0]["type"], 5);
  const std::string id = u["id"];
  EXPECT_EQ(id.size(), 36u);
  EXPECT_EQ(id[14], '7');  // UUIDv7

  auto g = get("/workunit/" + id);
  ASSERT_EQ(g.status, 200u);
  EXPECT_EQ(g.body["work_unit"], u);

  auto missing = get("/workunit/01900000-0000-7000-8000-000000000000");
  EXPECT_EQ(missing.status, 404u);
  EXPECT_EQ(missing.body, json({{"error", "Work unit not found"}}));
  EXPECT_EQ(get("/workunit/not-a-uuid").status, 404u);
}

TEST_F(ServerTest, TextAndAgentHeaderAndEveryType) {
  for (int t = 0; t <= 8; ++t) {
    auto r = post_unit({{"context_id", "types"}, {"type", t}, {"text", "héllo"}}, {{"X-Agent-ID", "hdr"}});
    ASSERT_EQ(r.status, 201u) << r.raw;
    EXPECT_EQ(r.body["work_unit"]["type"], t);
    EXPECT_EQ(r.body["work_unit"]["agent_id"], "hdr");
    EXPECT_EQ(*model::base64_decode(r.body["work_unit"]["payload"].get<std::string>()), "héllo");
  }
}

TEST_F(ServerTest, BadInputGetsClear400s) {
  struct bad_case {
    std::string body;
    std::string mentions;
  } cases[] = {
      {R"({"agent_id":"a","text":"x"})", "context_id"},
      {R"({"context_id":"c","text":"x"})", "agent_id"},
      {R"({"context_id":"c","agent_id":"a","type":"BOGUS"})", "type"},
      {R"({"context_id":"c","agent_id":"a","type":12})", "type"},
      {R"({"context_id":"c","agent_id":"a","payload":"%%%"})", "base64"},
      {R"({"context_id":["c"],"agent_id":"a"})", "context_id"},
      {R"({"context_id":"c","agent_id":"a","meta":{"k":{"nested":1}}})", "meta.k"},
      {R"({"context_id":"","agent_id":"a"})", "context_id"},
      {"{\"context_id\":\"c\",\"agent_id\":\"a\",\"text\":\"\xff\xfe\"}", "JSON"},
      {R"({"context_id":"c", )", "JSON"},
      {"", "empty"},
      {"[]", "object"},
      {"null", "object"},
  };
  for (const auto& c : cases) {
    auto r = call(http_, "POST", "/workunit", c.body);
    EXPECT_EQ(r.status, 400u) << c.body << " → " << r.raw;
    ASSERT_TRUE(r.body.contains("error")) << r.raw;
    EXPECT_NE(r.body["error"].get<std::string>().find(c.mentions), std::string::npos) << r.raw;
  }
  // Nothing above was stored, and the server is fine.
  EXPECT_EQ(get("/contexts/c").status, 404u);
  EXPECT_EQ(get("/healthz").status, 200u);
}

TEST_F(ServerTest, InvalidIdsInPathsAre400) {
  for (const char* target : {"/workunits/%FF%FE", "/workunits/a%00b", "/contexts/%C3", "/workunit/%FF"}) {
    auto r = get(target);
    EXPECT_EQ(r.status, 400u) << target << " " << r.raw;
  }
  auto long_id = get("/contexts/" + std::string(300, 'x'));
  EXPECT_EQ(long_id.status, 400u);
}

TEST_F(ServerTest, PagesThrough2500UnitsBothDirections) {
  for (int b = 0; b < 5; ++b) {
    json units = json::array();
    for (int i = 0; i < 500; ++i) units.push_back({{"text", std::to_string(b * 500 + i)}});
    auto r = call(http_, "POST", "/workunits",
                  json({{"context_id", "big"}, {"agent_id", "a"}, {"work_units", units}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
  }
  // Forward with the default limit (100).
  std::vector<uint64_t> forward;
  std::string cursor;
  int pages = 0;
  do {
    auto r = get("/workunits/big" + (cursor.empty() ? std::string() : "?cursor=" + cursor));
    ASSERT_EQ(r.status, 200u) << r.raw;
    EXPECT_LE(r.body["work_units"].size(), 100u);
    for (auto& u : r.body["work_units"]) forward.push_back(u["seq"]);
    cursor = r.body["next_cursor"];
    for (char c : cursor) EXPECT_TRUE(std::isalnum(uint8_t(c)) || c == '-' || c == '_') << cursor;
    ++pages;
  } while (!cursor.empty());
  EXPECT_EQ(pages, 25);
  ASSERT_EQ(forward.size(), 2500u);
  for (size_t i = 0; i < forward.size(); ++i) ASSERT_EQ(forward[i], i + 1);

  // Backward, newest first, with an odd page size.
  std::vector<uint64_t> backward;
  cursor.clear();
  do {
    auto r = get("/workunits/big?reverse=true&limit=333" + (cursor.empty() ? std::string() : "&cursor=" + cursor));
    ASSERT_EQ(r.status, 200u) << r.raw;
    for (auto& u : r.body["work_units"]) backward.push_back(u["seq"]);
    cursor = r.body["next_cursor"];
  } while (!cursor.empty());
  ASSERT_EQ(backward.size(), 2500u);
  for (size_t i = 0; i < backward.size(); ++i) ASSERT_EQ(backward[i], 2500 - i);

  auto after = get("/workunits/big?after_seq=2497");
  ASSERT_EQ(after.body["work_units"].size(), 3u);
  EXPECT_EQ(after.body["work_units"][0]["seq"], 2498);
  EXPECT_EQ(after.body["next_cursor"], "");
  auto clamped = get("/workunits/big?limit=5000");
  EXPECT_EQ(clamped.body["work_units"].size(), 1000u);
  // v3's 200 and empty page for a context that does not exist, with an additive marker
  // that tells it from a context with nothing (more) to show.
  EXPECT_EQ(get("/workunits/empty-context").body,
            json({{"work_units", json::array()}, {"next_cursor", ""}, {"context_exists", false}}));
  EXPECT_EQ(get("/workunits/big?after_seq=2500").body["context_exists"], true);
  EXPECT_EQ(after.body["context_exists"], true);
  ASSERT_EQ(call(http_, "PATCH", "/contexts/only-named", R"({"display_name":"no units yet"})").status, 200u);
  EXPECT_EQ(get("/workunits/only-named").body["context_exists"], true);
}

TEST_F(ServerTest, ListParametersAreValidated) {
  for (const char* q : {"?limit=abc", "?limit=-1", "?reverse=maybe", "?cursor=%%%", "?cursor=bm9wZQ", "?after_seq=x"}) {
    auto r = get(std::string("/workunits/x") + q);
    EXPECT_EQ(r.status, 400u) << q << " " << r.raw;
  }
}

TEST_F(ServerTest, ConcurrentAppendsFrom16ConnectionsAreGapFree) {
  constexpr int clients = 16, per_client = 40;
  std::vector<std::thread> threads;
  std::mutex mu;
  std::vector<uint64_t> acked;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto conn = server_.connect();
      for (int i = 0; i < per_client; ++i) {
        auto r = call(conn, "POST", "/workunit",
                      json({{"context_id", "race"}, {"agent_id", "a" + std::to_string(c)},
                            {"text", std::to_string(c) + ":" + std::to_string(i)}}).dump());
        ASSERT_EQ(r.status, 201u) << r.raw;
        std::lock_guard lock(mu);
        acked.push_back(r.body["work_unit"]["seq"]);
      }
    });
  }
  for (auto& t : threads) t.join();
  std::sort(acked.begin(), acked.end());
  ASSERT_EQ(acked.size(), size_t(clients * per_client));
  for (size_t i = 0; i < acked.size(); ++i) ASSERT_EQ(acked[i], i + 1);
  auto units = all_units("race");
  ASSERT_EQ(units.size(), acked.size());
  std::set<std::string> texts;
  for (auto& u : units) texts.insert(u["payload"].get<std::string>());
  EXPECT_EQ(texts.size(), acked.size());
}

TEST_F(ServerTest, BatchIsAllOrNothing) {
  auto ok = call(http_, "POST", "/workunits",
                 json({{"context_id", "batch"}, {"agent_id", "a"},
                       {"work_units", {{{"text", "1"}}, {{"text", "2"}, {"type", "REASONING"}}, {{"text", "3"}}}}}).dump());
  ASSERT_EQ(ok.status, 201u) << ok.raw;
  ASSERT_EQ(ok.body["work_units"].size(), 3u);
  EXPECT_EQ(ok.body["work_units"][0]["seq"], 1);
  EXPECT_EQ(ok.body["work_units"][2]["seq"], 3);
  EXPECT_EQ(ok.body["work_units"][1]["type"], 2);

  auto bad = call(http_, "POST", "/workunits",
                  json({{"context_id", "batch"}, {"agent_id", "a"},
                        {"work_units", {{{"text", "4"}}, {{"text", "5"}, {"type", "NOPE"}}}}}).dump());
  EXPECT_EQ(bad.status, 400u);
  EXPECT_NE(bad.body["error"].get<std::string>().find("work_units[1]"), std::string::npos) << bad.raw;
  auto other_ctx = call(http_, "POST", "/workunits",
                        json({{"context_id", "batch"}, {"agent_id", "a"},
                              {"work_units", {{{"text", "4"}}, {{"context_id", "elsewhere"}, {"text", "5"}}}}}).dump());
  EXPECT_EQ(other_ctx.status, 400u);
  json too_many = json::array();
  for (int i = 0; i < 1001; ++i) too_many.push_back({{"text", "x"}});
  EXPECT_EQ(call(http_, "POST", "/workunits",
                 json({{"context_id", "batch"}, {"agent_id", "a"}, {"work_units", too_many}}).dump()).status, 400u);
  EXPECT_EQ(call(http_, "POST", "/workunits", R"({"context_id":"batch","work_units":[]})").status, 400u);
  EXPECT_EQ(call(http_, "POST", "/workunits", R"({"work_units":[{"text":"x"}]})").status, 400u);
  // Only the first batch is there.
  EXPECT_EQ(all_units("batch").size(), 3u);
  EXPECT_EQ(get("/contexts/batch").body["context"]["head_seq"], 3);
}

TEST_F(ServerTest, IdempotencyKeySemantics) {
  const auto body = json({{"context_id", "idem"}, {"agent_id", "a"}, {"text", "once"}}).dump();
  auto first = call(http_, "POST", "/workunit", body, {{"Idempotency-Key", "op-1"}});
  ASSERT_EQ(first.status, 201u);
  auto retry = call(http_, "POST", "/workunit", body, {{"Idempotency-Key", "op-1"}});
  ASSERT_EQ(retry.status, 201u);
  EXPECT_EQ(retry.body, first.body);
  EXPECT_EQ(retry.http.header("idempotent-replayed"), "true");
  auto changed = call(http_, "POST", "/workunit",
                      json({{"context_id", "idem"}, {"agent_id", "a"}, {"text", "twice"}}).dump(),
                      {{"Idempotency-Key", "op-1"}});
  EXPECT_EQ(changed.status, 422u);
  EXPECT_EQ(call(http_, "POST", "/workunit", body, {{"Idempotency-Key", std::string(300, 'k')}}).status, 400u);

  const auto batch = json({{"context_id", "idem"}, {"agent_id", "a"},
                           {"work_units", {{{"text", "b1"}}, {{"text", "b2"}}}}}).dump();
  auto b1 = call(http_, "POST", "/workunits", batch, {{"Idempotency-Key", "op-2"}});
  auto b2 = call(http_, "POST", "/workunits", batch, {{"Idempotency-Key", "op-2"}});
  ASSERT_EQ(b1.status, 201u);
  EXPECT_EQ(b2.body, b1.body);
  EXPECT_EQ(all_units("idem").size(), 3u);  // "once", "b1", "b2"
  // Remembered across a restart.
  server_.restart();
  auto conn = server_.connect();
  auto after = call(conn, "POST", "/workunit", body, {{"Idempotency-Key", "op-1"}});
  EXPECT_EQ(after.body, first.body);
}

TEST_F(ServerTest, ContextsGetPatchList) {
  auto missing = get("/contexts/nope");
  EXPECT_EQ(missing.status, 404u);
  EXPECT_EQ(missing.body, json({{"error", "Context not found"}}));

  auto created = call(http_, "PATCH", "/contexts/team/alpha",
                      R"({"display_name":"Alpha","add_agents":["a","b","a"],"pin_units":["u1"],"meta":{"k":"v"}})");
  ASSERT_EQ(created.status, 200u) << created.raw;
  EXPECT_EQ(created.body["context"]["id"], "team/alpha");
  EXPECT_EQ(created.body["context"]["agent_ids"], json({"a", "b"}));
  EXPECT_EQ(created.body["context"]["head_seq"], 1);  // the update is an event in the log

  auto combo = call(http_, "PATCH", "/contexts/team%2Falpha",
                    R"({"add_agents":["c"],"remove_agents":["a","zz"],"unpin_units":["u1","u9"],"meta":{"k":null,"n":"1"}})");
  ASSERT_EQ(combo.status, 200u) << combo.raw;
  EXPECT_EQ(combo.body["context"]["agent_ids"], json({"b", "c"}));
  EXPECT_EQ(combo.body["context"]["pinned_units"], json::array());
  EXPECT_EQ(combo.body["context"]["meta"], json({{"n", "1"}}));
  EXPECT_EQ(combo.body["context"]["display_name"], "Alpha");
  EXPECT_EQ(call(http_, "PATCH", "/contexts/team/alpha", "{}").status, 200u);
  for (const char* bad : {R"({"add_agents":"a"})", R"({"meta":{"k":1}})", "nope", R"({"display_name":7})"})
    EXPECT_EQ(call(http_, "PATCH", "/contexts/team/alpha", bad).status, 400u) << bad;

  auto got = get("/contexts/team/alpha");
  ASSERT_EQ(got.status, 200u);
  EXPECT_EQ(got.body["context"]["head_seq"], 3);
  EXPECT_TRUE(got.body["context"]["created_at"]["seconds"].is_number_integer());

  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(post_unit({{"context_id", "list-" + std::to_string(i)}, {"agent_id", "a"}}).status, 201u);
  std::vector<std::string> ids;
  std::string cursor;
  do {
    auto r = get("/contexts?limit=2" + (cursor.empty() ? std::string() : "&cursor=" + cursor));
    ASSERT_EQ(r.status, 200u);
    for (auto& c : r.body["contexts"]) ids.push_back(c["id"]);
    cursor = r.body["next_cursor"];
  } while (!cursor.empty());
  EXPECT_EQ(ids, (std::vector<std::string>{"list-0", "list-1", "list-2", "list-3", "list-4", "team/alpha"}));
}

TEST_F(ServerTest, RoutingErrorsAndCors) {
  auto unknown = get("/nope");
  EXPECT_EQ(unknown.status, 404u);
  EXPECT_TRUE(unknown.body.contains("error"));
  auto wrong = call(http_, "DELETE", "/workunit");
  EXPECT_EQ(wrong.status, 405u);
  EXPECT_EQ(wrong.http.header("allow"), "POST, OPTIONS");
  EXPECT_EQ(call(http_, "PUT", "/contexts/x", "{}").status, 405u);

  auto pre = call(http_, "OPTIONS", "/workunit", "", {{"Origin", "https://app.example"},
                                                       {"Access-Control-Request-Method", "POST"}});
  EXPECT_EQ(pre.status, 204u);
  EXPECT_EQ(pre.http.header("access-control-allow-origin"), "*");
  EXPECT_NE(pre.http.header("access-control-allow-headers").find("Idempotency-Key"), std::string::npos);
  auto simple = call(http_, "GET", "/healthz", "", {{"Origin", "https://app.example"}});
  EXPECT_EQ(simple.http.header("access-control-allow-origin"), "*");
  EXPECT_EQ(simple.http.header("x-content-type-options"), "nosniff");
}

TEST_F(ServerTest, CorsHonoursConfiguredOrigins) {
  server_.cfg().server.cors_origins = {"https://good.example"};
  server_.restart();
  auto conn = server_.connect();
  auto good = call(conn, "GET", "/healthz", "", {{"Origin", "https://good.example"}});
  EXPECT_EQ(good.http.header("access-control-allow-origin"), "https://good.example");
  EXPECT_EQ(good.http.header("vary"), "Origin");
  auto evil = call(conn, "GET", "/healthz", "", {{"Origin", "https://evil.example"}});
  EXPECT_EQ(evil.http.header("access-control-allow-origin"), "");
}

TEST_F(ServerTest, OversizedBodyIs413) {
  const std::string huge(2 << 20, 'x');
  auto r = call(http_, "POST", "/workunit", huge);
  EXPECT_EQ(r.status, 413u);
  auto conn = server_.connect();
  EXPECT_EQ(call(conn, "GET", "/healthz").status, 200u);
}

// api/openapi.yaml stays true: every documented path and method reaches a route of
// the real server (no "no route" 404, no 405).
TEST_F(ServerTest, OpenApiDocumentsRoutesTheServerServes) {
  const auto doc = YAML::LoadFile(std::string(ENGRAM_SOURCE_DIR) + "/api/openapi.yaml");
  ASSERT_EQ(doc["openapi"].as<std::string>().substr(0, 2), "3.");
  size_t checked = 0;
  for (const auto& path : doc["paths"]) {
    std::string target = path.first.as<std::string>();
    for (const auto& [param, value] : std::vector<std::pair<std::string, std::string>>{
             {"{id}", "01900000-0000-7000-8000-000000000000"}, {"{contextId}", "docs/ctx"}, {"{resource}", "docs/res"}}) {
      if (auto pos = target.find(param); pos != std::string::npos) target.replace(pos, param.size(), value);
    }
    if (target == "/stream" || target == "/stream-sse") target += "?context=docs";
    for (const auto& op : path.second) {
      std::string method = op.first.as<std::string>();
      for (auto& ch : method) ch = char(std::toupper(static_cast<unsigned char>(ch)));
      if (target.starts_with("/stream-sse")) continue;  // a stream: covered by the stream tests
      auto r = call(http_, method, target, method == "GET" || method == "DELETE" ? "" : "{}");
      EXPECT_NE(r.status, 405u) << method << " " << target;
      if (r.status == 404) {
        EXPECT_EQ(r.raw.find("no route for"), std::string::npos) << method << " " << target;
      }
      ++checked;
    }
  }
  EXPECT_GE(checked, 21u);  // 22 documented operations, less the SSE stream
}

TEST(ServerRecovery, NotReadyUntilStorageOpens) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  // Hold the RocksDB lock so the server's recovery cannot finish.
  auto holder = storage::store::open(cfg.storage, nullptr, nullptr, nullptr);
  ASSERT_TRUE(holder);
  auto started = app::app::start(cfg);
  ASSERT_TRUE(started);
  auto& app = *started;
  EXPECT_FALSE(app->wait_ready(std::chrono::seconds(10)));  // recovery failed: lock held
  client::http_connection c("127.0.0.1", app->port());
  EXPECT_EQ(call(c, "GET", "/healthz").status, 200u);
  EXPECT_EQ(call(c, "GET", "/readyz").status, 503u);
  auto w = call(c, "POST", "/workunit", R"({"context_id":"c","agent_id":"a"})");
  EXPECT_EQ(w.status, 503u);
  EXPECT_EQ(w.http.header("retry-after"), "1");
  EXPECT_EQ(call(c, "GET", "/workunits/c").status, 503u);
}

}  // namespace
}  // namespace engram::test
