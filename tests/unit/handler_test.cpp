// The REST handler without a socket: the route table (404, 405 with Allow,
// OPTIONS, public routes, subjects and grants, rate-limit classes) and the one
// error writer, through api_handler::handle and error_response. A real store in a
// temp dir serves the routes that read or write.
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <future>
#include <map>
#include <nlohmann/json.hpp>

#include "auth/auth.hpp"
#include "engine/engine.hpp"
#include "gateway/errors.hpp"
#include "gateway/fields.hpp"
#include "gateway/handler.hpp"
#include "storage/store.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using gateway::request;
using gateway::response;
using namespace std::chrono_literals;

const std::string secret = "handler-test-secret-handler-test-secret-0123";

std::string header(const response& r, std::string_view name) {
  for (const auto& [k, v] : r.headers)
    if (k == name) return v;
  return {};
}

json body(const response& r) { return json::parse(r.body); }

class HandlerTest : public ::testing::Test {
 protected:
  // `auth_on`: HS256 tokens required; `writes_per_second`: the writes limiter.
  void start(bool auth_on = false, double writes_per_second = 0, bool with_store = true) {
    opts_.cors_origins = {};
    opts_.access_log = false;
    opts_.auth.enabled = auth_on;
    opts_.auth.secret = secret;
    opts_.limits.writes = {writes_per_second, 1};
    eng_ = std::make_unique<engine::engine>(engine::options{}, nullptr, nullptr, nullptr);
    if (with_store) {
      auto s = open_test_store(dir_);
      ASSERT_TRUE(s) << s.error().message;
      store_ = std::move(*s);
      eng_->attach(store_.get());
    }
    auto authn = gateway::authenticator::create(opts_.auth);
    ASSERT_TRUE(authn);
    handler_ = std::make_unique<gateway::api_handler>(
        *eng_, opts_, registry_,
        std::make_shared<const gateway::authenticator>(std::move(*authn)));
  }
  void TearDown() override {
    handler_.reset();
    if (eng_) {
      eng_->attach(nullptr);
      eng_->drain_reads();
    }
    store_.reset();
  }

  response send(std::string method, std::string target, std::string body_text = "",
                std::vector<std::pair<std::string, std::string>> headers = {}) {
    request req;
    req.method = std::move(method);
    req.target = std::move(target);
    req.body = std::move(body_text);
    req.headers = std::move(headers);
    req.remote_ip = "127.0.0.1";
    req.request_id = "test";
    std::promise<response> answered;
    auto got = answered.get_future();
    handler_->handle(std::move(req), [&answered](response r) { answered.set_value(std::move(r)); });
    EXPECT_EQ(got.wait_for(hang_guard), std::future_status::ready);
    return got.get();
  }

  std::string token(const std::string& agent, std::vector<auth::grant> grants) {
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
    auto t = auth::issue(auth::token_request{agent, std::move(grants), 1h, now}, auth::algorithm::hs256, secret);
    EXPECT_TRUE(t);
    return "Bearer " + t.value_or("");
  }

  temp_dir dir_;
  gateway::options opts_;
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  std::unique_ptr<engine::engine> eng_;
  std::unique_ptr<storage::store> store_;
  std::unique_ptr<gateway::api_handler> handler_;
};

TEST(ErrorResponse, MapsCodesAndEscapesMessages) {
  auto r = gateway::error_response({model::errc::not_found, "no \"x\"\n\\ here"});
  EXPECT_EQ(r.status, 404u);
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(json::parse(r.body), (json{{"error", "no \"x\"\n\\ here"}}));
  EXPECT_EQ(header(r, "Retry-After"), "");

  // Invalid UTF-8 from client input still makes valid JSON.
  auto bad = gateway::error_response({model::errc::invalid_argument, std::string("got '\xBB'")});
  EXPECT_EQ(bad.status, 400u);
  EXPECT_EQ(json::parse(bad.body)["error"], "got '?'");

  EXPECT_EQ(gateway::error_response({model::errc::unavailable, "later"}).headers,
            (std::vector<std::pair<std::string, std::string>>{{"Retry-After", "1"}}));
  auto limited = gateway::error_response({model::errc::rate_limited, "slow down"}, 7s);
  EXPECT_EQ(limited.status, 429u);
  EXPECT_EQ(header(limited, "Retry-After"), "7");
  auto busy = gateway::error_response({model::errc::in_progress, "running"});
  EXPECT_EQ(busy.status, 409u);
  EXPECT_EQ(header(busy, "Retry-After"), "1");
  EXPECT_EQ(gateway::error_response({model::errc::conflict, "held"}).headers.size(), 0u);
  EXPECT_EQ(header(gateway::error_response({model::errc::unauthenticated, "who"}), "WWW-Authenticate"),
            "Bearer realm=\"engram\"");
  auto custom = gateway::error_response(431, "header too large");
  EXPECT_EQ(custom.status, 431u);
  EXPECT_EQ(json::parse(custom.body)["error"], "header too large");

  for (auto code : {model::errc::invalid_argument, model::errc::not_found, model::errc::conflict,
                    model::errc::in_progress, model::errc::unauthenticated, model::errc::forbidden,
                    model::errc::rate_limited, model::errc::unprocessable, model::errc::payload_too_large,
                    model::errc::unavailable, model::errc::internal})
    EXPECT_EQ(gateway::error_response({code, "m"}).status, gateway::http_status(code));
}

TEST_F(HandlerTest, UnknownPathIs404AndWrongMethodIs405WithAllow) {
  start();
  auto none = send("GET", "/nope");
  EXPECT_EQ(none.status, 404u);
  EXPECT_EQ(body(none)["error"], "no route for GET /nope");
  EXPECT_EQ(send("GET", "/workunit/").status, 404u);  // a parameter is never empty

  auto wrong = send("DELETE", "/search");
  EXPECT_EQ(wrong.status, 405u);
  EXPECT_EQ(header(wrong, "Allow"), "GET, POST, OPTIONS");
  EXPECT_EQ(send("PUT", "/contexts/a").status, 405u);
  EXPECT_EQ(header(send("PUT", "/contexts/a"), "Allow"), "GET, PATCH, DELETE, OPTIONS");
  // Both the renew pattern and the resource patterns match this path.
  EXPECT_EQ(header(send("PUT", "/locks/a/renew"), "Allow"), "POST, GET, DELETE, OPTIONS");
  // A wildcard spans segments but leaves the ones the rest of the pattern needs:
  // "renew" alone is a resource, and a suffix after the wildcard must be there.
  EXPECT_EQ(header(send("PUT", "/locks/a/b/c/renew"), "Allow"), "POST, GET, DELETE, OPTIONS");
  EXPECT_EQ(header(send("PUT", "/locks/renew"), "Allow"), "GET, DELETE, OPTIONS");
  EXPECT_EQ(header(send("PUT", "/workunit/a/b"), "Allow"), "GET, OPTIONS");
  EXPECT_EQ(header(send("PUT", "/contexts/a//b"), "Allow"), "GET, PATCH, DELETE, OPTIONS");
  // One segment too many for the draft routes leaves only the context's own.
  EXPECT_EQ(header(send("POST", "/contexts/a/b/drafts/d1/commit/x"), "Allow"), "GET, PATCH, DELETE, OPTIONS");
  EXPECT_NE(send("GET", "/locks").status, 404u);  // matched (no lock manager here: 503)
  EXPECT_EQ(send("GET", "/locks/").status, 404u);
  EXPECT_EQ(send("GET", "/search/x").status, 404u);  // no pattern has a segment more

  auto options = send("OPTIONS", "/locks/x");
  EXPECT_EQ(options.status, 204u);
  EXPECT_EQ(header(options, "Allow"), "GET, DELETE, OPTIONS");
}

TEST_F(HandlerTest, MalformedTargetAndBadParametersAre400) {
  start();
  EXPECT_EQ(send("GET", "no-slash").status, 400u);
  auto enc = send("GET", "/contexts/a%ZZ");
  EXPECT_EQ(enc.status, 400u);
  EXPECT_EQ(body(enc)["error"], "malformed request target");
  auto control = send("GET", "/contexts/a%01b");  // decodes to a control character
  EXPECT_EQ(control.status, 400u);
  EXPECT_NE(body(control)["error"].get<std::string>().find("context id"), std::string::npos) << control.body;
  EXPECT_EQ(send("GET", "/workunits/c?limit=ten").status, 400u);
  EXPECT_EQ(send("GET", "/workunits/c?reverse=maybe").status, 400u);
  EXPECT_EQ(send("POST", "/workunit", "{not json").status, 400u);
  EXPECT_EQ(send("POST", "/workunit", "[]").status, 400u);
  EXPECT_EQ(send("POST", "/workunit", "").status, 400u);
}

TEST_F(HandlerTest, RoutesServeThroughTheEngine) {
  start();
  auto created = send("POST", "/workunit", R"({"context_id":"docs/a","agent_id":"ann","type":"MESSAGE","text":"hi"})");
  ASSERT_EQ(created.status, 201u) << created.body;
  const auto unit = body(created)["work_unit"];
  EXPECT_EQ(unit["seq"], 1);

  auto got = send("GET", "/workunit/" + unit["id"].get<std::string>());
  ASSERT_EQ(got.status, 200u);
  EXPECT_EQ(body(got)["work_unit"], unit);
  auto with_vector = send("GET", "/workunit/" + unit["id"].get<std::string>() + "?include=embedding");
  ASSERT_EQ(with_vector.status, 200u);
  EXPECT_TRUE(body(with_vector)["work_unit"]["embedding"].is_null());

  // A context id with '/' (the rest of the path), percent-decoded once.
  auto page = send("GET", "/workunits/docs%2Fa");
  ASSERT_EQ(page.status, 200u);
  EXPECT_EQ(body(page)["work_units"].size(), 1u);
  EXPECT_EQ(body(page)["next_cursor"], "");
  EXPECT_EQ(body(send("GET", "/workunits/docs/a"))["work_units"].size(), 1u);
  EXPECT_EQ(body(send("GET", "/contexts/docs/a"))["context"]["head_seq"], 1);
  EXPECT_EQ(send("GET", "/contexts/missing").status, 404u);
  EXPECT_EQ(send("GET", "/healthz").body, "OK");
  EXPECT_EQ(send("GET", "/readyz").status, 200u);
  // No lock manager attached: the engine says so.
  EXPECT_EQ(send("GET", "/locks/x").status, 503u);
}

TEST_F(HandlerTest, RecoveringServerAnswers503WithRetryAfter) {
  start(false, 0, false);
  auto r = send("GET", "/workunits/c");
  EXPECT_EQ(r.status, 503u);
  EXPECT_EQ(header(r, "Retry-After"), "1");
  EXPECT_EQ(send("GET", "/readyz").status, 503u);
  EXPECT_EQ(send("GET", "/healthz").status, 200u);
}

TEST_F(HandlerTest, PublicRoutesSkipAuthAndSubjectsNeedTheirGrant) {
  start(true);
  EXPECT_EQ(send("GET", "/healthz").status, 200u);
  EXPECT_EQ(send("GET", "/ui/live").status, 200u);
  EXPECT_EQ(send("GET", "/metrics").status, 401u);
  auto anonymous = send("GET", "/contexts/a");
  EXPECT_EQ(anonymous.status, 401u);
  EXPECT_EQ(header(anonymous, "WWW-Authenticate"), "Bearer realm=\"engram\"");

  const auto reader = token("ann", {{"docs/*", auth::read}});
  auto denied = send("GET", "/contexts/other", "", {{"authorization", reader}});
  EXPECT_EQ(denied.status, 403u);
  EXPECT_EQ(body(denied)["error"], "not allowed to read context 'other'");
  EXPECT_EQ(send("GET", "/contexts/docs/a", "", {{"authorization", reader}}).status, 404u);  // allowed; absent
  auto patch = send("PATCH", "/contexts/docs/a", R"({"display_name":"A"})", {{"authorization", reader}});
  EXPECT_EQ(patch.status, 403u);
  EXPECT_EQ(body(patch)["error"], "not allowed to write to context 'docs/a'");
  auto lock = send("GET", "/locks/docs/r", "", {{"authorization", reader}});
  EXPECT_EQ(lock.status, 403u);
  EXPECT_EQ(body(lock)["error"], "not allowed to lock 'docs/r'");
}

TEST_F(HandlerTest, WriteRoutesShareTheWritesLimiter) {
  start(false, 0.001);  // a burst of one, refilled in ~17 minutes
  EXPECT_EQ(send("PATCH", "/contexts/a", R"({"display_name":"A"})").status, 200u);
  auto limited = send("POST", "/workunit", R"({"context_id":"a","agent_id":"x","text":"t"})");
  EXPECT_EQ(limited.status, 429u);
  EXPECT_GE(std::stoi(header(limited, "Retry-After")), 1);
  // Reads and searches are other classes.
  EXPECT_EQ(send("GET", "/workunits/a").status, 200u);
}

// Each route, method and status counts its own requests and latencies (the
// handler keeps the metrics it has looked up); unknown methods count as "other".
TEST_F(HandlerTest, CountsRequestsByRouteMethodAndStatus) {
  start();
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(send("POST", "/workunit", R"({"context_id":"m","agent_id":"ann","text":"t"})").status, 201u);
  ASSERT_EQ(send("POST", "/workunit", "{").status, 400u);
  ASSERT_EQ(send("GET", "/nope").status, 404u);
  ASSERT_EQ(send("GET", "/nope/either").status, 404u);
  ASSERT_EQ(send("POST", "/nope").status, 404u);
  ASSERT_EQ(send("BREW", "/nope").status, 404u);  // made-up methods share one label
  ASSERT_EQ(send("X-1", "/search").status, 405u);
  ASSERT_EQ(send("X-2", "/search").status, 405u);
  ASSERT_EQ(send("DELETE", "/search").status, 405u);

  std::map<std::string, double> counted, observed;
  auto labels = [](const prometheus::ClientMetric& m) {
    std::string out;
    for (const auto& l : m.label) out += l.name + "=" + l.value + " ";
    return out;
  };
  for (const auto& family : registry_->Collect()) {
    for (const auto& m : family.metric) {
      if (family.name == "engram_http_requests_total") counted[labels(m)] = m.counter.value;
      if (family.name == "engram_http_request_duration_seconds") observed[labels(m)] = double(m.histogram.sample_count);
    }
  }
  EXPECT_EQ(counted, (std::map<std::string, double>{
                         {"method=POST route=/workunit status=201 ", 3},
                         {"method=POST route=/workunit status=400 ", 1},
                         {"method=GET route=unmatched status=404 ", 2},
                         {"method=POST route=unmatched status=404 ", 1},
                         {"method=other route=unmatched status=404 ", 1},
                         {"method=other route=/search status=405 ", 2},
                         {"method=DELETE route=/search status=405 ", 1},
                     }));
  EXPECT_EQ(observed, (std::map<std::string, double>{
                          {"route=/workunit status=201 ", 3},
                          {"route=/workunit status=400 ", 1},
                          {"route=unmatched status=404 ", 4},
                          {"route=/search status=405 ", 3},
                      }));
}

TEST(FieldCheck, SuggestsTheNameATypoMeant) {
  using gateway::closest_field;
  namespace f = gateway::fields;
  EXPECT_EQ(closest_field("txt", f::unit), "text");
  EXPECT_EQ(closest_field("paylaod", f::unit), "payload");           // swapped neighbours: one edit
  EXPECT_EQ(closest_field("context", f::unit), "context_id");        // truncated
  EXPECT_EQ(closest_field("embedding_models", f::unit), "embedding_model");
  EXPECT_EQ(closest_field("ttl", f::renew), "ttl_ms");               // the prefix nearest in length
  EXPECT_EQ(closest_field("zzzz", f::unit), "");                     // nothing near: no guess
  EXPECT_EQ(closest_field("", f::unit), "");
  EXPECT_EQ(closest_field(std::string(300, 'a'), f::unit), "");

  const auto object = nlohmann::json::parse(R"({"text":"x","contxt_id":"c"})");
  auto bad = gateway::check_fields(object, f::unit, "the work unit");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message, "unknown field 'contxt_id' in the work unit; did you mean 'context_id'?");
  EXPECT_TRUE(gateway::check_fields(nlohmann::json::parse(R"({"text":"x"})"), f::unit, "the work unit"));
  EXPECT_TRUE(gateway::check_fields(nlohmann::json::array(), f::unit, "the work unit"));  // not an object: not ours
  // A long unknown key is echoed bounded.
  auto long_key = gateway::check_fields(nlohmann::json{{std::string(1000, 'k'), 1}}, f::unit, "the work unit");
  ASSERT_FALSE(long_key);
  EXPECT_LT(long_key.error().message.size(), 400u);
}

}  // namespace
}  // namespace engram::test
