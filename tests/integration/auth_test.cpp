// Authentication, authorization, rate limits and request ids against the real
// server over real HTTP, WebSocket and SSE.
#include <algorithm>
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "auth/auth.hpp"
#include "engram/stream_connections.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

const std::string secret = "auth-test-secret-auth-test-secret-0123456789";

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string token(const std::string& agent, std::vector<auth::grant> grants, std::chrono::seconds ttl = 1h,
                  int64_t issued = unix_now()) {
  auth::token_request req{agent, std::move(grants), ttl, issued};
  auto t = auth::issue(req, auth::algorithm::hs256, secret);
  EXPECT_TRUE(t);
  return t.value_or("");
}

client::header_list bearer(const std::string& t) { return {{"Authorization", "Bearer " + t}}; }

// Hands each JSON message to `on_message` until `done()` holds (10 s at most).
bool read_until(client::ws_connection& ws, const std::function<void(const json&)>& on_message,
                const std::function<bool()>& done) {
  return wait_until(
      [&] {
        auto m = ws.read(100ms);
        if (m && *m) on_message(json::parse(**m));
        return done();
      },
      10s);
}

class AuthTest : public ::testing::Test {
 protected:
  void start(const std::function<void(config::config&)>& tweak = {}) {
    auto cfg = test_config(dir_.str() + "/data");
    cfg.server.auth.enabled = true;
    cfg.server.auth.secret = secret;
    cfg.server.stream_heartbeat = 200ms;
    if (tweak) tweak(cfg);
    server_ = std::make_unique<test_server>(cfg);
    http_ = std::make_unique<client::http_connection>(server_->connect());
  }
  reply as(const std::string& t, std::string_view method, std::string_view target, const json& body = nullptr,
           client::header_list extra = {}) {
    auto headers = bearer(t);
    headers.insert(headers.end(), extra.begin(), extra.end());
    return call(*http_, method, target, body.is_null() ? "" : body.dump(), headers);
  }
  json append(const std::string& t, const std::string& ctx, const std::string& text) {
    auto r = as(t, "POST", "/workunit", {{"context_id", ctx}, {"text", text}});
    EXPECT_EQ(r.status, 201u) << r.raw;
    return r.body["work_unit"];
  }

  temp_dir dir_;
  std::unique_ptr<test_server> server_;
  std::unique_ptr<client::http_connection> http_;
  const std::string admin_ = token("admin", {{"*", auth::all_capabilities}});
};

TEST_F(AuthTest, RequestsWithoutAValidTokenGet401) {
  start();
  for (const auto& [method, target] : std::vector<std::pair<std::string, std::string>>{
           {"GET", "/contexts"}, {"GET", "/workunits/a"}, {"POST", "/workunit"}, {"GET", "/search?q=x"},
           {"GET", "/locks"}, {"GET", "/metrics"}, {"GET", "/workunit/x"}}) {
    auto r = call(*http_, method, target, method == "POST" ? R"({"context_id":"a","text":"x"})" : "");
    EXPECT_EQ(r.status, 401u) << method << " " << target << ": " << r.raw;
    EXPECT_TRUE(r.body.contains("error"));
    EXPECT_EQ(r.http.header("www-authenticate"), "Bearer realm=\"engram\"");
  }
  const auto expired = token("a", {{"*", auth::all_capabilities}}, 60s, unix_now() - 3600);
  const auto future = token("a", {{"*", auth::all_capabilities}}, 3600s, unix_now() + 600);
  for (const auto& [name, t] : std::vector<std::pair<std::string, std::string>>{
           {"expired", expired}, {"not yet valid", future}, {"garbage", "abc.def.ghi"}, {"empty", ""}}) {
    auto r = as(t, "GET", "/contexts");
    EXPECT_EQ(r.status, 401u) << name << ": " << r.raw;
  }
  auto basic = call(*http_, "GET", "/contexts", "", {{"Authorization", "Basic YTpi"}});
  EXPECT_EQ(basic.status, 401u);
  // Liveness, readiness and the page itself stay public; so do CORS preflights.
  EXPECT_EQ(call(*http_, "GET", "/healthz").status, 200u);
  EXPECT_EQ(call(*http_, "GET", "/readyz").status, 200u);
  EXPECT_EQ(call(*http_, "GET", "/ui/live").status, 200u);
  EXPECT_EQ(call(*http_, "OPTIONS", "/workunit", "", {{"Origin", "https://x.example"}}).status, 204u);
  EXPECT_EQ(as(admin_, "GET", "/contexts").status, 200u);
  EXPECT_EQ(as(admin_, "GET", "/metrics").status, 200u);
}

TEST_F(AuthTest, TheTokenSubjectIsTheAgent) {
  start();
  const auto alice = token("alice", {{"p/*", auth::all_capabilities}});
  // Filled in when the body has no agent_id.
  auto unit = append(alice, "p/1", "hello");
  EXPECT_EQ(unit["agent_id"], "alice");
  // The same id explicitly is fine; another agent is refused, in the body or header.
  auto same = as(alice, "POST", "/workunit", {{"context_id", "p/1"}, {"agent_id", "alice"}, {"text", "x"}});
  EXPECT_EQ(same.status, 201u) << same.raw;
  auto body = as(alice, "POST", "/workunit", {{"context_id", "p/1"}, {"agent_id", "bob"}, {"text", "x"}});
  EXPECT_EQ(body.status, 403u) << body.raw;
  EXPECT_NE(body.body["error"].get<std::string>().find("alice"), std::string::npos);
  auto header = as(alice, "POST", "/workunit", {{"context_id", "p/1"}, {"text", "x"}}, {{"X-Agent-ID", "bob"}});
  EXPECT_EQ(header.status, 403u) << header.raw;
  auto batch = as(alice, "POST", "/workunits",
                  {{"context_id", "p/1"}, {"agent_id", "bob"}, {"work_units", json::array({{{"text", "x"}}})}});
  EXPECT_EQ(batch.status, 403u) << batch.raw;
  auto inner = as(alice, "POST", "/workunits",
                  {{"context_id", "p/1"}, {"work_units", json::array({{{"text", "x"}, {"agent_id", "bob"}}})}});
  EXPECT_EQ(inner.status, 403u) << inner.raw;
  // Locks: acquired as alice; bob cannot release or renew it even knowing its id.
  auto lock = as(alice, "POST", "/locks", {{"resource_path", "p/file"}, {"ttl_seconds", 30}});
  ASSERT_EQ(lock.status, 200u) << lock.raw;
  EXPECT_EQ(lock.body["lock"]["holder_agent"], "alice");
  const std::string id = lock.body["lock"]["lock_id"];
  const auto bob = token("bob", {{"p/*", auth::all_capabilities}});
  EXPECT_EQ(as(bob, "DELETE", "/locks/p%2Ffile?agent_id=alice&lock_id=" + id).status, 403u);
  EXPECT_EQ(as(bob, "POST", "/locks/p%2Ffile/renew", {{"agent_id", "alice"}, {"lock_id", id}}).status, 403u);
  EXPECT_EQ(as(bob, "POST", "/locks", {{"resource_path", "p/other"}, {"agent_id", "alice"}}).status, 403u);
  EXPECT_EQ(as(alice, "DELETE", "/locks/p%2Ffile?lock_id=" + id).status, 200u);
}

TEST_F(AuthTest, PatternGrantsOnRestRoutes) {
  start();
  append(admin_, "team/a", "a1");
  append(admin_, "secret/x", "x1");
  const auto hidden = append(admin_, "secret/x", "x2");
  const auto reader = token("reader", {{"team/*", auth::read}});
  const auto writer = token("writer", {{"team/*", auth::read | auth::write}, {"locks/*", auth::lock}});

  EXPECT_EQ(as(reader, "GET", "/workunits/team%2Fa").status, 200u);
  EXPECT_EQ(as(reader, "GET", "/contexts/team%2Fa").status, 200u);
  EXPECT_EQ(as(reader, "POST", "/workunit", {{"context_id", "team/a"}, {"text", "no"}}).status, 403u);
  EXPECT_EQ(as(reader, "PATCH", "/contexts/team%2Fa", {{"display_name", "no"}}).status, 403u);
  EXPECT_EQ(as(writer, "PATCH", "/contexts/team%2Fa", {{"display_name", "yes"}}).status, 200u);
  EXPECT_EQ(as(writer, "POST", "/workunit", {{"context_id", "team/b"}, {"text", "ok"}}).status, 201u);
  EXPECT_EQ(as(writer, "POST", "/workunit", {{"context_id", "teamx"}, {"text", "no"}}).status, 403u);

  // A context the caller may not read: 403 whether or not it exists (no leak).
  auto exists = as(reader, "GET", "/workunits/secret%2Fx");
  auto missing = as(reader, "GET", "/workunits/secret%2Fnone");
  EXPECT_EQ(exists.status, 403u);
  EXPECT_EQ(missing.status, 403u);
  EXPECT_EQ(exists.body, json::parse(R"({"error":"not allowed to read context 'secret/x'"})"));
  EXPECT_EQ(as(reader, "GET", "/contexts/secret%2Fx").status, 403u);
  // A unit id in a hidden context answers exactly as an unknown id does.
  auto by_id = as(reader, "GET", "/workunit/" + hidden["id"].get<std::string>());
  auto unknown = as(reader, "GET", "/workunit/01ARZ3NDEKTSV4RRFFQ69G5FAV");
  EXPECT_EQ(by_id.status, 404u);
  EXPECT_EQ(by_id.raw, unknown.raw);
  EXPECT_EQ(as(admin_, "GET", "/workunit/" + hidden["id"].get<std::string>()).status, 200u);

  // Listings show only readable contexts.
  auto list = as(reader, "GET", "/contexts");
  ASSERT_EQ(list.status, 200u);
  std::set<std::string> ids;
  for (const auto& c : list.body["contexts"]) ids.insert(c["id"]);
  EXPECT_EQ(ids, (std::set<std::string>{"team/a", "team/b"}));

  // Search: only readable contexts' units, whatever the query asks.
  ASSERT_TRUE(wait_until([&] {
    auto r = as(admin_, "GET", "/search?q=a1%20OR%20x1%20OR%20x2");
    return r.status == 200 && r.body["total_count"] == 3;
  }));
  auto all = as(reader, "GET", "/search?q=a1%20OR%20x1%20OR%20x2");
  ASSERT_EQ(all.status, 200u) << all.raw;
  EXPECT_EQ(all.body["total_count"], 1);
  for (const auto& h : all.body["hits"]) EXPECT_EQ(h["context_id"], "team/a");
  EXPECT_EQ(as(reader, "GET", "/search?q=x1&context_id=secret/*").body["total_count"], 0);
  EXPECT_EQ(as(reader, "GET", "/search?q=x1&context_id=secret%2Fx").status, 403u);
  const auto nobody = token("nobody", {});
  EXPECT_EQ(as(nobody, "GET", "/search?q=a1").body["total_count"], 0);

  // Locks need `lock` on the resource, and `write` on a context they report to.
  EXPECT_EQ(as(reader, "POST", "/locks", {{"resource_path", "locks/r"}}).status, 403u);
  auto ok = as(writer, "POST", "/locks", {{"resource_path", "locks/r"}, {"context_id", "team/a"}});
  EXPECT_EQ(ok.status, 200u) << ok.raw;
  EXPECT_EQ(as(writer, "POST", "/locks", {{"resource_path", "locks/s"}, {"context_id", "secret/x"}}).status, 403u);
  EXPECT_EQ(as(writer, "POST", "/locks", {{"resource_paths", {"locks/t", "elsewhere"}}}).status, 403u);
  EXPECT_EQ(as(writer, "GET", "/locks/locks%2Fr").status, 200u);
  EXPECT_EQ(as(reader, "GET", "/locks/locks%2Fr").status, 403u);
  EXPECT_EQ(as(reader, "GET", "/locks").body["locks"].size(), 0u);
  EXPECT_EQ(as(writer, "GET", "/locks").body["locks"].size(), 1u);
}

TEST_F(AuthTest, StreamsEnforceReadGrants) {
  start();
  const auto reader = token("reader", {{"team/*", auth::read}});
  // No token, or an exact context outside the grants: refused before the upgrade.
  client::ws_connection anon;
  auto refused = anon.connect("127.0.0.1", server_->port(), "/stream?context=team/a");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().status, 401u);
  client::ws_connection forbidden;
  auto no = forbidden.connect("127.0.0.1", server_->port(), "/stream?context=secret/x", bearer(reader));
  ASSERT_FALSE(no);
  EXPECT_EQ(no.error().status, 403u);

  // A pattern covering both: only the permitted contexts arrive, replay and live.
  append(admin_, "team/a", "t1");
  append(admin_, "secret/x", "s1");
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server_->port(), "/stream?context=*&since=0", bearer(reader)));
  append(admin_, "secret/y", "s2");
  append(admin_, "team/b", "t2");
  std::vector<std::string> got;
  bool ack_clean = false;
  auto collect = [&](const json& j) {
    const auto type = j.value("type", json());  // not every message has one
    if (type.is_number_integer()) got.push_back(j["context_id"]);
    if (type == "subscribe_ack") {
      // team/a, and team/b too when the subscription opened after its append
      // (the session subscribes once the upgrade's answer is written, and the
      // append below may commit first); never a secret/ context.
      ack_clean = !j["contexts"].empty();
      for (const auto& c : j["contexts"])
        ack_clean = ack_clean && c["context_id"].get<std::string>().starts_with("team/");
    }
  };
  // Order is per context only: team/a's replay and team/b's live unit may arrive
  // either way round.
  auto sorted = [&] {
    auto copy = got;
    std::sort(copy.begin(), copy.end());
    return copy;
  };
  ASSERT_TRUE(read_until(ws, collect, [&] { return got.size() >= 2; }));
  EXPECT_TRUE(ack_clean) << "the ack lists only readable contexts";
  EXPECT_EQ(sorted(), (std::vector<std::string>{"team/a", "team/b"}));
  // A later subscribe message naming a hidden context is refused on the socket.
  ASSERT_TRUE(ws.send(R"({"type":"subscribe","contexts":["secret/x"],"since":0})"));
  bool refused_msg = false;
  ASSERT_TRUE(read_until(
      ws, [&](const json& j) { refused_msg = refused_msg || (j.value("type", "") == "error" && j.value("status", 0) == 403); },
      [&] { return refused_msg; }));
  // More secret units still never arrive on the original subscription.
  append(admin_, "secret/x", "s3");
  append(admin_, "team/a", "t3");
  ASSERT_TRUE(read_until(ws, collect, [&] { return got.size() >= 3; }));
  EXPECT_EQ(sorted(), (std::vector<std::string>{"team/a", "team/a", "team/b"}));
}

// Drafts need write on their context and act as the token's subject, over REST
// and on the socket (where the upgrade's token is the one that counts).
TEST_F(AuthTest, DraftsNeedWriteAndActAsTheTokensSubject) {
  start();
  const auto reader = token("reader", {{"team/*", auth::read}});
  const auto writer = token("writer", {{"team/*", auth::read | auth::write}});
  const json body{{"index", 0}, {"text", "hi"}};
  EXPECT_EQ(as(reader, "POST", "/contexts/team%2Fa/drafts/d/deltas", body).status, 403u);
  EXPECT_EQ(as(writer, "POST", "/contexts/team%2Fa/drafts/d/deltas", json{{"index", 0}, {"text", "hi"}, {"agent_id", "someone"}}).status, 403u);
  auto ok = as(writer, "POST", "/contexts/team%2Fa/drafts/d/deltas", body);
  ASSERT_EQ(ok.status, 200u) << ok.raw;
  auto listed = as(reader, "GET", "/contexts/team%2Fa/drafts");
  ASSERT_EQ(listed.status, 200u);
  EXPECT_EQ(listed.body["drafts"][0]["agent_id"], "writer");  // the token's subject
  EXPECT_EQ(as(reader, "DELETE", "/contexts/team%2Fa/drafts/d").status, 403u);
  EXPECT_EQ(as(reader, "POST", "/contexts/team%2Fa/drafts/d/commit", json{{"text", "x"}}).status, 403u);

  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server_->port(), "/stream?context=team/a", bearer(reader)));
  ASSERT_TRUE(ws.send(R"({"type":"delta","context_id":"team/a","draft_id":"r","index":0,"text":"x"})"));
  json refused;
  ASSERT_TRUE(read_until(ws, [&](const json& j) { if (j.value("type", json()) == "draft_error") refused = j; },
                         [&] { return !refused.is_null(); }));
  EXPECT_EQ(refused["status"], 403) << refused.dump();

  client::ws_connection as_writer;
  ASSERT_TRUE(as_writer.connect("127.0.0.1", server_->port(), "/stream?context=team/a", bearer(writer)));
  ASSERT_TRUE(as_writer.send(R"({"type":"draft_commit","request_id":"c","draft_id":"d","work_unit":{"context_id":"team/a","text":"done"}})"));
  json ack;
  ASSERT_TRUE(read_until(as_writer, [&](const json& j) { if (j.value("request_id", "") == "c") ack = j; },
                         [&] { return !ack.is_null(); }));
  EXPECT_EQ(ack["type"], "append_ack") << ack.dump();
  EXPECT_EQ(ack["draft_ended"], true) << ack.dump();
  EXPECT_EQ(ack["work_unit"]["agent_id"], "writer");
}

TEST_F(AuthTest, FactsNeedWriteToChangeAndReadToSee) {
  start();
  const auto reader = token("reader", {{"team/*", auth::read}});
  const auto writer = token("writer", {{"team/*", auth::read | auth::write}});
  append(admin_, "team/a", "x");
  EXPECT_EQ(as(reader, "PUT", "/contexts/team%2Fa/facts/repo.branch", json{{"value", "main"}}).status, 403u);
  EXPECT_EQ(as(writer, "PUT", "/contexts/team%2Fa/facts/repo.branch", json{{"value", "main"}, {"agent_id", "other"}}).status, 403u);
  auto ok = as(writer, "PUT", "/contexts/team%2Fa/facts/repo.branch", json{{"value", "main"}});
  ASSERT_EQ(ok.status, 200u) << ok.raw;
  EXPECT_EQ(ok.body["fact"]["agent_id"], "writer");
  EXPECT_EQ(as(reader, "GET", "/contexts/team%2Fa/facts").body["facts"].size(), 1u);
  EXPECT_EQ(as(reader, "DELETE", "/contexts/team%2Fa/facts/repo.branch").status, 403u);
  append(admin_, "secret/x", "y");
  EXPECT_EQ(as(reader, "GET", "/contexts/secret%2Fx/facts").status, 403u);
}

TEST_F(AuthTest, OnlyTheHolderOrAnAdminOfTheResourceReleasesALease) {
  start();
  const auto bob = token("bob", {{"deploy/*", auth::lock}});
  const auto carol = token("carol", {{"deploy/*", auth::lock}});
  const auto ops = token("ops", {{"deploy/*", auth::admin}});
  const auto other_ops = token("ops", {{"build/*", auth::admin}});
  auto held = as(bob, "POST", "/locks", json{{"resource_path", "deploy/prod"}, {"ttl_seconds", 600}});
  ASSERT_EQ(held.status, 200u) << held.raw;
  const std::string release = "/locks/deploy/prod?agent_id=bob&lock_id=" + held.body["lock"]["lock_id"].get<std::string>();
  EXPECT_EQ(as(carol, "DELETE", release).status, 403u);       // another agent
  EXPECT_EQ(as(other_ops, "DELETE", release).status, 403u);   // admin elsewhere
  EXPECT_EQ(as(bob, "GET", "/locks/deploy/prod").status, 200u);
  auto freed = as(ops, "DELETE", release);                      // an operator freeing a stuck lease
  ASSERT_EQ(freed.status, 200u) << freed.raw;
  EXPECT_EQ(as(bob, "GET", "/locks/deploy/prod").status, 404u);
  // The log says who freed it: the operator, not the holder.
  auto again = as(bob, "POST", "/locks", json{{"resource_path", "deploy/prod"}, {"ttl_seconds", 600}});
  ASSERT_EQ(again.status, 200u) << again.raw;
  ASSERT_EQ(as(bob, "DELETE", "/locks/deploy/prod?lock_id=" + again.body["lock"]["lock_id"].get<std::string>()).status,
            200u);
  auto log = as(admin_, "GET", "/contexts/_locks/events");
  ASSERT_EQ(log.status, 200u) << log.raw;
  std::vector<std::pair<std::string, std::string>> releases;  // (holder, released_by)
  for (const auto& ev : log.body["events"])
    if (ev["type"] == "lock_released") releases.emplace_back(ev["lock"]["holder_agent"], ev["released_by"]);
  EXPECT_EQ(releases, (std::vector<std::pair<std::string, std::string>>{{"bob", "ops"}, {"bob", "bob"}})) << log.raw;
}

TEST_F(AuthTest, APacketNeedsReadAndDefaultsToTheTokensSubject) {
  start();
  const auto reader = token("reader", {{"team/*", auth::read}});
  append(admin_, "team/a", "x");
  auto own = as(reader, "POST", "/contexts/team%2Fa/packet", json::object());
  ASSERT_EQ(own.status, 200u) << own.raw;
  EXPECT_EQ(own.body["agent_id"], "reader");
  // What another agent would be shown is readable too: a packet writes nothing.
  EXPECT_EQ(as(reader, "POST", "/contexts/team%2Fa/packet", json{{"agent_id", "someone"}}).body["agent_id"], "someone");
  append(admin_, "secret/x", "y");
  EXPECT_EQ(as(reader, "POST", "/contexts/secret%2Fx/packet", json::object()).status, 403u);
  EXPECT_EQ(call(*http_, "POST", "/contexts/team%2Fa/packet", "{}").status, 401u);
}

TEST_F(AuthTest, SseTakesTheTokenFromACookieButNotAcrossOrigins) {
  start([](config::config& c) { c.server.cors_origins = {"*"}; });
  const auto reader = token("reader", {{"team/*", auth::read}});
  append(admin_, "team/a", "t1");
  const std::string cookie = "theme=dark; engram_token=" + reader;
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", server_->port(), "/stream-sse?context=team/a&since=0", {{"Cookie", cookie}}));
  ASSERT_FALSE(sse.refused()) << sse.refused()->body;
  auto first = sse.next(5s);
  ASSERT_TRUE(first && *first);
  EXPECT_EQ((*first)->event, "subscribed");
  auto unit = sse.next(5s);
  ASSERT_TRUE(unit && *unit);
  EXPECT_EQ(json::parse((*unit)->data)["context_id"], "team/a");

  // A page on another origin cannot ride on the cookie (cors_origins "*" is not a
  // name); the same page with a bearer header could, by design.
  client::sse_connection cross;
  ASSERT_TRUE(cross.connect("127.0.0.1", server_->port(), "/stream-sse?context=team/a",
                            {{"Cookie", cookie}, {"Origin", "https://evil.example"}}));
  ASSERT_TRUE(cross.refused());
  EXPECT_EQ(cross.refused()->status, 401u);
  // The cookie is only for streams; REST needs the header.
  EXPECT_EQ(call(*http_, "GET", "/contexts", "", {{"Cookie", cookie}}).status, 401u);
  // Never in the URL.
  client::sse_connection in_url;
  ASSERT_TRUE(in_url.connect("127.0.0.1", server_->port(), "/stream-sse?context=team/a&access_token=" + reader));
  ASSERT_TRUE(in_url.refused());
}

TEST_F(AuthTest, ExpiredTokenEndsAStreamResumably) {
  start();
  const auto brief = token("brief", {{"*", auth::read}}, 2s);
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server_->port(), "/stream?context=a", bearer(brief)));
  // Leeway is 30 s by default: the stream ends after exp (not exp + leeway).
  ASSERT_TRUE(wait_until(
      [&] {
        auto m = ws.read(200ms);
        return !m || ws.closed().has_value();
      },
      15s));
  ASSERT_TRUE(ws.closed());
  EXPECT_EQ(ws.closed()->code, 4001);
}

TEST_F(AuthTest, RequestIdsAndSecurityHeaders) {
  start();
  auto generated = as(admin_, "GET", "/contexts");
  const auto id = generated.http.header("x-request-id");
  EXPECT_EQ(id.size(), 16u);
  auto again = as(admin_, "GET", "/contexts");
  EXPECT_NE(again.http.header("x-request-id"), id);
  auto honoured = as(admin_, "GET", "/contexts", nullptr, {{"X-Request-Id", "trace-42.a_b:c"}});
  EXPECT_EQ(honoured.http.header("x-request-id"), "trace-42.a_b:c");
  auto replaced = as(admin_, "GET", "/contexts", nullptr, {{"X-Request-Id", "bad id with spaces"}});
  EXPECT_EQ(replaced.http.header("x-request-id").size(), 16u);
  for (const auto& r : {generated, call(*http_, "GET", "/contexts"), as(admin_, "GET", "/nope"),
                        call(*http_, "GET", "/healthz")}) {
    EXPECT_EQ(r.http.header("x-content-type-options"), "nosniff") << r.raw;
    EXPECT_EQ(r.http.header("cache-control"), "no-store") << r.raw;
    EXPECT_FALSE(r.http.header("x-request-id").empty());
  }
}

TEST(RateLimitTest, WritesGet429AtTheConfiguredRateAndRecover) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.server.limits.writes = {5, 5};  // 5/s, burst 5
  cfg.server.limits.searches = {1, 2};
  cfg.server.limits.locks = {1, 1};
  test_server server(cfg);
  auto c = server.connect();
  auto write = [&] { return call(c, "POST", "/workunit", R"({"context_id":"r","agent_id":"a","text":"x"})"); };
  int accepted = 0;
  reply limited;
  for (int i = 0; i < 50; ++i) {
    auto r = write();
    if (r.status == 201) ++accepted;
    if (r.status == 429) {
      limited = r;
      break;
    }
  }
  // The burst, plus at most a token or two refilled while sending.
  EXPECT_GE(accepted, 5);
  EXPECT_LE(accepted, 7);
  ASSERT_EQ(limited.status, 429u);
  EXPECT_EQ(limited.http.header("retry-after"), "1");
  EXPECT_NE(limited.body["error"].get<std::string>().find("writes"), std::string::npos);
  // Reads are not limited; writes recover once the bucket refills.
  EXPECT_EQ(call(c, "GET", "/workunits/r").status, 200u);
  ASSERT_TRUE(wait_until([&] { return write().status == 201; }, 5s));
  // Searches and locks have their own buckets.
  int search_ok = 0;
  for (int i = 0; i < 4; ++i) search_ok += call(c, "GET", "/search?q=x").status == 200;
  EXPECT_EQ(search_ok, 2);
  EXPECT_EQ(call(c, "POST", "/locks", R"({"resource_path":"r1","agent_id":"a"})").status, 200u);
  EXPECT_EQ(call(c, "POST", "/locks", R"({"resource_path":"r2","agent_id":"a"})").status, 429u);
  EXPECT_GT(metric(c, "engram_http_refusals_total{reason=\"rate_limited\"}"), 0);
}

TEST(RateLimitTest, NewConnectionsPerAddress) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.server.limits.connections = {1, 3};
  test_server server(cfg);
  // Each connection sends one request; a refused one gets a 429 as it connects
  // (or a reset, if the refusal closes it before the request is written).
  int served = 0;
  for (int i = 0; i < 5; ++i) {
    auto c = server.connect();
    auto r = c.request("GET", "/healthz");
    served += r && r->status == 200;
  }
  EXPECT_EQ(served, 3) << "the burst of 3";
  // Recovers at 1/s.
  ASSERT_TRUE(wait_until([&] {
    auto c = server.connect();
    auto r = c.request("GET", "/healthz");
    return r && r->status == 200;
  }, 5s));
  // The refusals are counted (the scrape's own connection may need a token too).
  EXPECT_TRUE(wait_until([&] {
    auto c = server.connect();
    auto r = c.request("GET", "/metrics");
    const std::string line = "\nengram_http_connections_total{outcome=\"rejected_rate\"} ";
    const auto pos = r && r->status == 200 ? r->body.find(line) : std::string::npos;
    return pos != std::string::npos && std::stod(r->body.substr(pos + line.size())) >= 2;
  }, 5s));
}

TEST(RateLimitTest, StreamCapPerAgent) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.server.limits.max_streams_per_agent = 2;
  test_server server(cfg);
  client::ws_connection a, b, c;
  ASSERT_TRUE(a.connect("127.0.0.1", server.port(), "/stream?context=x"));
  ASSERT_TRUE(b.connect("127.0.0.1", server.port(), "/stream?context=x"));
  auto third = c.connect("127.0.0.1", server.port(), "/stream?context=x");
  ASSERT_FALSE(third);
  EXPECT_EQ(third.error().status, 429u);
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", server.port(), "/stream-sse?context=x"));
  ASSERT_TRUE(sse.refused());
  EXPECT_EQ(sse.refused()->status, 429u);
  // Closing one frees its slot.
  a.close();
  ASSERT_TRUE(wait_until([&] {
    client::ws_connection d;
    return bool(d.connect("127.0.0.1", server.port(), "/stream?context=x"));
  }, 5s));
}

// Backups write to the server's disk: only a token with "admin" on "*" may ask,
// and a plain pattern list (read, write, lock) never grants it.
TEST_F(AuthTest, BackupNeedsTheAdminCapability) {
  start([&](config::config& c) { c.storage.backup_dir = dir_.str() + "/backups"; });
  const auto everything = token("ops", {{"*", auth::all_capabilities}});
  auto r = as(everything, "POST", "/admin/backup", {{"dir", "b"}});
  EXPECT_EQ(r.status, 403u) << r.raw;
  EXPECT_NE(r.body.value("error", "").find("\"admin\""), std::string::npos) << r.raw;
  EXPECT_FALSE(std::filesystem::exists(dir_.str() + "/backups/b"));
  const auto narrow_admin = token("ops", {{"team/*", auth::admin}});
  EXPECT_EQ(as(narrow_admin, "POST", "/admin/backup", {{"dir", "b"}}).status, 403u);
  EXPECT_EQ(call(*http_, "POST", "/admin/backup", R"({"dir":"b"})").status, 401u);
  const auto admin = token("ops", {{"*", auth::admin}});
  r = as(admin, "POST", "/admin/backup", {{"dir", "b"}});
  EXPECT_EQ(r.status, 201u) << r.raw;
  EXPECT_TRUE(std::filesystem::exists(dir_.str() + "/backups/b/CURRENT"));
  // The claim's names: "delete" and "admin" parse, and are not in a plain list.
  auto grants = auth::parse_grants(json{{"*", {"admin", "delete"}}});
  ASSERT_TRUE(grants);
  EXPECT_EQ((*grants)[0].caps, auth::admin | auth::erase);
  EXPECT_EQ((*auth::parse_grants(json::array({"*"})))[0].caps & (auth::admin | auth::erase), 0);
}

// Deleting a context is its own grant: reading and writing everything is not enough.
TEST_F(AuthTest, DeletingAContextNeedsTheDeleteGrant) {
  start();
  const auto writer = token("alice", {{"*", auth::read | auth::write | auth::lock}});
  append(writer, "team/a", "x");
  auto r = as(writer, "DELETE", "/contexts/team/a");
  EXPECT_EQ(r.status, 403u) << r.raw;
  EXPECT_NE(r.body.value("error", "").find("\"delete\""), std::string::npos) << r.raw;
  const auto elsewhere = token("ops", {{"other/*", auth::erase}});
  EXPECT_EQ(as(elsewhere, "DELETE", "/contexts/team/a").status, 403u);
  EXPECT_EQ(call(*http_, "DELETE", "/contexts/team/a").status, 401u);
  EXPECT_EQ(as(writer, "GET", "/contexts/team/a").status, 200u);  // refusals touched nothing
  const auto deleter = token("ops", {{"team/*", auth::erase}});
  r = as(deleter, "DELETE", "/contexts/team/a");
  ASSERT_EQ(r.status, 200u) << r.raw;
  EXPECT_EQ(as(writer, "GET", "/contexts/team/a").status, 404u);
  // The event names who deleted it.
  auto events = as(writer, "GET", "/contexts/team/a/events").status;
  EXPECT_EQ(events, 404u);
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server_->port(), "/stream?context=team/a&since=0", bearer(writer), 10s));
  std::optional<json> deleted;
  for (int i = 0; i < 5 && !deleted; ++i) {
    auto m = ws.read(10s);
    if (!m || !*m) break;
    auto j = json::parse(**m);
    if (j["type"] == "context_deleted") deleted = j;
  }
  ASSERT_TRUE(deleted);
  EXPECT_EQ((*deleted)["deleted_by"], "ops");
}

// Who watches a context is visible to its readers, but where they connect from only
// to admins and to the agent itself; per-context gauges only to who reads everything.
TEST_F(AuthTest, SubscriberDetailsAndContextGaugesAreForOperators) {
  start();
  const auto alice = token("alice", {{"team/*", auth::read | auth::write}});
  const auto bob = token("bob", {{"team/*", auth::read}});
  append(alice, "team/a", "x");
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server_->port(), "/stream?context=team/a", bearer(alice), 10s));
  json subs;
  ASSERT_TRUE(wait_until([&] {
    subs = as(bob, "GET", "/contexts/team/a/subscribers").body;
    return subs["subscribers"].size() == 1;
  }, 10s)) << subs.dump();
  EXPECT_EQ(subs["subscribers"][0]["agent_id"], "alice");
  EXPECT_EQ(subs["subscribers"][0]["ip"], "") << "another agent's address";
  EXPECT_EQ(as(alice, "GET", "/contexts/team/a/subscribers").body["subscribers"][0]["ip"], "127.0.0.1");
  const auto ops = token("ops", {{"*", auth::read | auth::admin}});
  EXPECT_EQ(as(ops, "GET", "/contexts/team/a/subscribers").body["subscribers"][0]["ip"], "127.0.0.1");
  EXPECT_EQ(as(bob, "GET", "/metrics").raw.find("engram_stream_context_subscribers"), std::string::npos);
  EXPECT_NE(as(ops, "GET", "/metrics").raw.find("engram_stream_context_subscribers{context=\"team/a\"} 1"),
            std::string::npos);
  EXPECT_EQ(as(token("eve", {{"other/*", auth::read}}), "GET", "/contexts/team/a/subscribers").status, 403u);
}

}  // namespace
}  // namespace engram::test
