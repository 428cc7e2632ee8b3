// Semantic and hybrid search over real HTTP against the real server (RocksDB,
// Xapian, the HNSW index in a temp dir): client-supplied vectors, validation,
// filters checked against a brute-force ranking, hybrid fusion, and embeddings
// computed by an OpenAI-compatible endpoint (a loopback fake the test starts and
// stops), including degradation while it is down and the backfill after.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sstream>

#include "support/fake_embedder.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

std::vector<float> random_vector(std::mt19937& rng, size_t dim) {
  std::normal_distribution<float> n;
  std::vector<float> v(dim);
  for (auto& x : v) x = n(rng);
  return v;
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += double(a[i]) * b[i];
    na += double(a[i]) * a[i];
    nb += double(b[i]) * b[i];
  }
  return dot / std::sqrt(na * nb);
}

class SemanticTest : public ::testing::Test {
 protected:
  void start(const std::function<void(config::config&)>& tweak = {}) {
    http_.reset();
    server_.reset();
    auto cfg = test_config(dir_.str() + "/data");
    if (tweak) tweak(cfg);
    server_ = std::make_unique<test_server>(cfg);
    http_ = std::make_unique<client::http_connection>(server_->connect());
  }
  void SetUp() override { start(); }

  reply put(const json& unit) { return call(*http_, "POST", "/workunit", unit.dump()); }
  std::string put_ok(const json& unit) {
    auto r = put(unit);
    EXPECT_EQ(r.status, 201u) << r.raw;
    return r.body["work_unit"].value("id", "");
  }
  reply search(const json& body) { return call(*http_, "POST", "/search", body.dump()); }

  // Keyword index and vector index have caught up with every write, at this
  // machine's pace: only a status that stops changing is a hang.
  void wait_indexed() {
    json status;
    ASSERT_TRUE(wait_readyz(
        *http_,
        [](const json& r) {
          if (!r.contains("search") || !r["search"].contains("vectors")) return false;
          const auto& s = r["search"];
          return s.value("lag", -1) == 0 && s["vectors"].value("lag", -1) == 0 && s["vectors"].value("state", "") == "ready";
        },
        &status))
        << "the indexes stopped catching up (a hang?): " << status.dump();
  }

  json embedding_of(const std::string& id) {
    auto r = call(*http_, "GET", "/workunit/" + id + "?include=embedding");
    EXPECT_EQ(r.status, 200u) << r.raw;
    return r.body["work_unit"]["embedding"];
  }

  temp_dir dir_;
  std::unique_ptr<test_server> server_;
  std::unique_ptr<client::http_connection> http_;
};

TEST_F(SemanticTest, EmbeddingIsStoredAndReturnedOnlyWhenAsked) {
  const std::vector<float> v = {0.25f, -1.5f, 3.0f, 1e-7f};
  const auto id = put_ok({{"context_id", "c"}, {"agent_id", "a"}, {"text", "hello"}, {"embedding", v},
                          {"embedding_model", "mini"}});
  const auto plain = put_ok({{"context_id", "c"}, {"agent_id", "a"}, {"text", "no vector"}});

  auto r = call(*http_, "GET", "/workunit/" + id);
  EXPECT_FALSE(r.body["work_unit"].contains("embedding")) << r.raw;
  r = call(*http_, "GET", "/workunit/" + id + "?include=embedding");
  EXPECT_EQ(r.body["work_unit"]["embedding"].get<std::vector<float>>(), v) << r.raw;  // exact round trip
  EXPECT_EQ(r.body["work_unit"]["embedding_model"], "mini");
  r = call(*http_, "GET", "/workunit/" + plain + "?include=embedding");
  EXPECT_TRUE(r.body["work_unit"]["embedding"].is_null()) << r.raw;
  EXPECT_EQ(call(*http_, "GET", "/workunit/" + id + "?include=vectors").status, 400u);

  // Nor do the list endpoint and the append response carry it.
  r = call(*http_, "GET", "/workunits/c");
  EXPECT_FALSE(r.body["work_units"][0].contains("embedding")) << r.raw;
}

TEST_F(SemanticTest, BadEmbeddingsAreRefusedAndNothingIsWritten) {
  put_ok({{"context_id", "c"}, {"agent_id", "a"}, {"text", "x"}, {"embedding", {1, 2, 3}}});
  struct bad_case {
    json unit;
    std::string expect;
  };
  const std::vector<bad_case> cases = {
      {{{"embedding", {1, 2}}}, "dimension 2 but model 'default' has dimension 3"},
      {{{"embedding", json::array()}}, "1 to 4096"},
      {{{"embedding", std::vector<int>(4097, 1)}}, "1 to 4096"},
      {{{"embedding", {0, 0, 0}}}, "all zeros"},
      {{{"embedding", {1, "2", 3}}}, "only numbers"},
      {{{"embedding", "1,2,3"}}, "array of numbers"},
      {{{"embedding", {1e39, 1, 1}}}, "finite"},
      {{{"embedding", {1, 2, 3}}, {"embedding_model", 7}}, "embedding_model must be a string"},
      {{{"embedding", {1, 2, 3}}, {"embedding_model", ""}}, "embedding_model"},
      {{{"embedding_model", "m"}}, "without an embedding"},
  };
  for (const auto& c : cases) {
    json unit = {{"context_id", "c"}, {"agent_id", "a"}, {"text", "x"}};
    unit.update(c.unit);
    auto r = put(unit);
    EXPECT_EQ(r.status, 400u) << unit.dump().substr(0, 200) << " → " << r.raw;
    EXPECT_NE(r.body.value("error", "").find(c.expect), std::string::npos) << r.raw;
  }
  // A batch with one wrong dimension is refused as a whole.
  json batch = {{"context_id", "c"},
                {"agent_id", "a"},
                {"work_units", json::array({{{"text", "ok"}, {"embedding", {1, 1, 1}}},
                                            {{"text", "bad"}, {"embedding", {1, 1}}}})}};
  auto refused = call(*http_, "POST", "/workunits", batch.dump());
  EXPECT_EQ(refused.status, 400u);
  EXPECT_NE(refused.body.value("error", "").find("dimension 2"), std::string::npos) << refused.raw;
  // Another model is another space with its own dimension.
  put_ok({{"context_id", "c"}, {"agent_id", "a"}, {"text", "y"}, {"embedding", {1, 1}}, {"embedding_model", "two"}});
  auto r = call(*http_, "GET", "/workunits/c");
  EXPECT_EQ(r.body["work_units"].size(), 2u) << r.raw;
  // The dimensions survive a restart.
  server_->restart();
  http_ = std::make_unique<client::http_connection>(server_->connect());
  EXPECT_EQ(put({{"context_id", "c"}, {"agent_id", "a"}, {"text", "z"}, {"embedding", {1, 1, 1, 1}}}).status, 400u);
  EXPECT_EQ(put({{"context_id", "c"}, {"agent_id", "a"}, {"text", "z"}, {"embedding", {1, 1, 1}}}).status, 201u);
}

// Filters with semantic search: every hit passes the filter, and the ranking is
// the brute-force one over the units that pass (exactly, for a selective filter;
// with high recall through the graph for a broad one).
TEST_F(SemanticTest, FiltersReturnOnlyMatchingUnitsInBruteForceOrder) {
  start([](config::config& c) { c.search.exact_filter_limit = 150; });  // both strategies run
  // Sanitizer builds halve the corpus (inserts run there without SIMD and several
  // times slower) and so stay within the graph's first allocation (search/vectors.cpp),
  // as the vector unit tests do; each filter below still takes the same strategy.
  constexpr size_t dim = 16, n = sanitized_build ? 600 : 1200;
  std::mt19937 rng(7);
  struct unit {
    std::string id, context, agent;
    int type;
    std::vector<float> v;
  };
  std::vector<unit> units;
  std::vector<json> batch;
  for (size_t i = 0; i < n; ++i) {
    unit u{"", "ctx-" + std::to_string(i % 10), "agent-" + std::to_string(i % 3), i % 4 == 0 ? 8 : 1,
           random_vector(rng, dim)};
    batch.push_back({{"agent_id", u.agent}, {"type", u.type}, {"text", "unit"}, {"embedding", u.v}});
    units.push_back(std::move(u));
  }
  for (size_t i = 0; i < n; i += 100) {
    // One context per request: a batch appends to one context.
    for (size_t c = 0; c < 10; ++c) {
      json items = json::array();
      for (size_t j = i; j < i + 100; ++j)
        if (j % 10 == c) items.push_back(batch[j]);
      auto r = call(*http_, "POST", "/workunits",
                    json{{"context_id", "ctx-" + std::to_string(c)}, {"work_units", items}}.dump());
      ASSERT_EQ(r.status, 201u) << r.raw;
      size_t k = 0;
      for (size_t j = i; j < i + 100; ++j)
        if (j % 10 == c) units[j].id = r.body["work_units"][k++]["id"];
    }
  }
  wait_indexed();

  struct filter_case {
    json filter;
    std::function<bool(const unit&)> pass;
    bool exact;  // selective: ranked exactly
  };
  const std::vector<filter_case> cases = {
      {{{"context_id", "ctx-3"}}, [](const unit& u) { return u.context == "ctx-3"; }, true},  // n/10 match
      {{{"context_id", "ctx-4"}, {"types", {8}}}, [](const unit& u) { return u.context == "ctx-4" && u.type == 8; }, true},
      {{{"agent_ids", {"agent-1"}}}, [](const unit& u) { return u.agent == "agent-1"; }, false},  // n/3: broad
      {{{"types", {"MESSAGE"}}}, [](const unit& u) { return u.type == 1; }, false},               // 3n/4
      {{{"context_id", "ctx-*"}, {"agent_ids", {"agent-2"}}, {"types", {8}}},
       [](const unit& u) { return u.agent == "agent-2" && u.type == 8; }, true},
  };
  size_t checked = 0, found = 0;
  for (const auto& c : cases) {
    for (int q = 0; q < 5; ++q) {
      const auto qv = random_vector(rng, dim);
      json body = {{"vector", qv}, {"limit", 10}, {"mode", "semantic"}};
      body.update(c.filter);
      auto r = search(body);
      ASSERT_EQ(r.status, 200u) << r.raw;
      EXPECT_EQ(r.body["mode"], "semantic");
      std::vector<std::pair<double, std::string>> truth;
      std::map<std::string, const unit*> by_id;
      for (const auto& u : units) {
        by_id[u.id] = &u;
        if (c.pass(u)) truth.emplace_back(cosine(qv, u.v), u.id);
      }
      std::sort(truth.rbegin(), truth.rend());
      truth.resize(std::min<size_t>(10, truth.size()));
      std::vector<std::string> got = r.body["results"];
      ASSERT_EQ(got.size(), truth.size()) << c.filter.dump();
      for (const auto& id : got) EXPECT_TRUE(c.pass(*by_id.at(id))) << c.filter.dump() << " let " << id << " through";
      if (c.exact) {
        for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], truth[i].second) << c.filter.dump() << " rank " << i;
      }
      std::set<std::string> want;
      for (const auto& t : truth) want.insert(t.second);
      for (const auto& id : got) found += want.count(id);
      checked += truth.size();
      // Scores are the cosine similarities, best first, with vector ranks 1..k.
      for (size_t i = 0; i < got.size(); ++i) {
        const auto& h = r.body["hits"][i];
        EXPECT_EQ(h["vector_rank"], i + 1);
        EXPECT_TRUE(h["keyword_rank"].is_null());
        EXPECT_NEAR(h["score"].get<double>(), cosine(qv, by_id.at(got[i])->v), 1e-4);
      }
    }
  }
  EXPECT_GE(double(found) / double(checked), 0.95) << found << " of " << checked;
}

TEST_F(SemanticTest, HybridRanksUnitsMatchingBothSignalsFirst) {
  const std::vector<float> near = {1, 0.05f, 0, 0}, far = {0, 0, 1, 0}, query = {1, 0, 0, 0};
  const auto both = put_ok({{"context_id", "h"}, {"agent_id", "a"}, {"text", "the kubernetes rollout stalled"},
                            {"embedding", near}});
  const auto keyword_only = put_ok({{"context_id", "h"}, {"agent_id", "a"},
                                    {"text", "kubernetes kubernetes kubernetes docs"}, {"embedding", far}});
  const auto vector_only = put_ok({{"context_id", "h"}, {"agent_id", "a"}, {"text", "deployment froze midway"},
                                   {"embedding", std::vector<float>{1, 0.1f, 0.05f, 0}}});
  for (int i = 0; i < 20; ++i)
    put_ok({{"context_id", "h"}, {"agent_id", "a"}, {"text", "noise " + std::to_string(i)},
            {"embedding", std::vector<float>{0, 1, float(i), 1}}});
  wait_indexed();

  auto r = search({{"query", "kubernetes"}, {"vector", query}});  // mode defaults to hybrid
  ASSERT_EQ(r.status, 200u) << r.raw;
  EXPECT_EQ(r.body["mode"], "hybrid");
  const json hits = r.body["hits"];  // a copy: r is reused below
  ASSERT_GE(hits.size(), 3u) << r.raw;
  EXPECT_EQ(hits[0]["id"], both) << r.raw;
  EXPECT_FALSE(hits[0]["keyword_rank"].is_null());
  EXPECT_FALSE(hits[0]["vector_rank"].is_null());
  std::set<std::string> next = {hits[1]["id"], hits[2]["id"]};
  EXPECT_EQ(next, (std::set<std::string>{keyword_only, vector_only})) << r.raw;
  for (size_t i = 1; i < hits.size(); ++i)
    EXPECT_LT(hits[i]["score"].get<double>(), hits[0]["score"].get<double>());
  // The v3 id list is the hits' ids in order.
  for (size_t i = 0; i < hits.size(); ++i) EXPECT_EQ(r.body["results"][i], hits[i]["id"]);

  // Keyword mode ignores the vector; semantic ignores the text.
  r = search({{"query", "kubernetes"}, {"vector", query}, {"mode", "keyword"}});
  EXPECT_EQ(r.body["mode"], "keyword");
  EXPECT_EQ(r.body["results"].size(), 2u) << r.raw;
  EXPECT_FALSE(r.body["hits"][0].contains("vector_rank"));
  r = search({{"query", "kubernetes"}, {"vector", query}, {"mode", "semantic"}, {"limit", 2}});
  EXPECT_EQ(r.body["results"], json::array({both, vector_only})) << r.raw;
  // Without a vector and without an embedder, the default is keyword search.
  r = search({{"query", "kubernetes"}});
  EXPECT_EQ(r.body["mode"], "keyword");
  // Paging through fused results.
  auto page1 = search({{"query", "kubernetes"}, {"vector", query}, {"limit", 2}});
  auto page2 = search({{"query", "kubernetes"}, {"vector", query}, {"limit", 2}, {"offset", 2}});
  EXPECT_EQ(page1.body["results"][0], both);
  EXPECT_EQ(page2.body["results"][0], hits[2]["id"]);
  EXPECT_EQ(search({{"vector", query}, {"limit", 100}, {"offset", 9950}}).status, 400u);
  EXPECT_FALSE(page1.body.contains("degraded")) << page1.raw;
}

// A vector searched in a space that has none (here: a model name left out) answers
// the keyword hits with a reason, not zero vector hits in silence.
TEST_F(SemanticTest, VectorSearchInAModelWithNoVectorsSaysSo) {
  const std::vector<float> v = {1, 0, 0};
  const auto id = put_ok({{"context_id", "m"}, {"agent_id", "a"}, {"text", "rollout stalled"}, {"embedding", v},
                          {"embedding_model", "mini"}});
  wait_indexed();
  auto named = search({{"query", "rollout"}, {"vector", v}, {"embedding_model", "mini"}});
  ASSERT_EQ(named.status, 200u) << named.raw;
  EXPECT_FALSE(named.body.contains("degraded")) << named.raw;
  EXPECT_FALSE(named.body["hits"][0]["vector_rank"].is_null()) << named.raw;

  auto unnamed = search({{"query", "rollout"}, {"vector", v}});
  ASSERT_EQ(unnamed.status, 200u) << unnamed.raw;
  EXPECT_NE(unnamed.body.value("degraded", "").find("no vectors are stored for embedding model 'default'"),
            std::string::npos) << unnamed.raw;
  ASSERT_EQ(unnamed.body["results"], json::array({id})) << unnamed.raw;  // the keyword hit still comes back
  auto semantic = call(*http_, "GET", "/search?mode=semantic&vector=1,0,0&model=nope");
  ASSERT_EQ(semantic.status, 200u) << semantic.raw;
  EXPECT_NE(semantic.body.value("degraded", "").find("'nope'"), std::string::npos) << semantic.raw;
}

TEST_F(SemanticTest, EndpointEmbedsUnitsDegradesWhenDownAndFillsTheGapAfter) {
  fake_embedder endpoint(32);
  start([&](config::config& c) {
    c.search.embeddings.url = endpoint.url();
    c.search.embeddings.model = "bow";
    c.search.embeddings.batch_size = 4;
    c.search.embeddings.max_backoff = 200ms;
  });
  const auto flaky = put_ok({{"context_id", "ci"}, {"agent_id", "a"}, {"text", "integration tests are flaky again"}});
  const auto lunch = put_ok({{"context_id", "ci"}, {"agent_id", "a"}, {"text", "what is for lunch today"}});
  const auto binary = put_ok({{"context_id", "ci"}, {"agent_id", "a"}, {"payload", "AAECAw=="}});  // no text
  const auto own = put_ok({{"context_id", "ci"}, {"agent_id", "a"}, {"text", "client vector"},
                           {"embedding", std::vector<float>(8, 1.f)}, {"embedding_model", "other"}});

  // Vectors arrive without client help, equal to what the endpoint computes.
  ASSERT_TRUE(wait_until([&] { return !embedding_of(lunch).is_null() && !embedding_of(flaky).is_null(); }, 30s));
  EXPECT_EQ(embedding_of(flaky).get<std::vector<float>>(), fake_embedder::embed("integration tests are flaky again", 32));
  EXPECT_EQ(call(*http_, "GET", "/workunit/" + flaky + "?include=embedding").body["work_unit"]["embedding_model"], "bow");
  EXPECT_TRUE(embedding_of(binary).is_null());
  EXPECT_EQ(embedding_of(own).size(), 8u);  // the client's vector is kept, not replaced
  wait_indexed();

  // Query text is embedded too: "flaky tests" finds the unit by meaning (shared words
  // here), and the default mode is hybrid.
  auto r = search({{"query", "flaky tests"}, {"context_id", "ci"}});
  ASSERT_EQ(r.status, 200u) << r.raw;
  EXPECT_EQ(r.body["mode"], "hybrid") << r.raw;
  EXPECT_EQ(r.body["results"][0], flaky) << r.raw;
  r = search({{"query", "lunch today"}, {"mode", "semantic"}, {"limit", 1}});
  EXPECT_EQ(r.body["results"], json::array({lunch})) << r.raw;

  // The endpoint goes away: writes still succeed, search degrades to keyword.
  endpoint.stop();
  std::vector<std::string> written_while_down;
  for (int i = 0; i < 6; ++i)
    written_while_down.push_back(put_ok({{"context_id", "ci"}, {"agent_id", "a"},
                                         {"text", "outage note " + std::to_string(i) + " about flaky builds"}}));
  ASSERT_TRUE(wait_until([&] {
    auto s = call(*http_, "GET", "/readyz");
    return s.body["search"]["embedder"]["up"] == false;
  }, 30s)) << call(*http_, "GET", "/readyz").raw;
  EXPECT_EQ(call(*http_, "GET", "/readyz").status, 200u);  // degraded, not down
  EXPECT_EQ(metric(*http_, "engram_search_embedder_up"), 0);
  ASSERT_TRUE(wait_until([&] {
    auto s = search({{"query", "outage"}});
    return s.status == 200 && s.body["results"].size() == 6;
  }, 30s));
  r = search({{"query", "outage"}});
  EXPECT_EQ(r.body["mode"], "keyword");
  EXPECT_NE(r.body.value("degraded", "").find("embedding endpoint"), std::string::npos) << r.raw;
  r = search({{"query", "outage"}, {"mode", "semantic"}});
  EXPECT_EQ(r.status, 200u);
  EXPECT_EQ(r.body["mode"], "keyword") << r.raw;
  for (const auto& id : written_while_down) EXPECT_TRUE(embedding_of(id).is_null());

  // Back again: the units written meanwhile get their vectors.
  endpoint.start();
  ASSERT_TRUE(wait_until([&] {
    return std::all_of(written_while_down.begin(), written_while_down.end(),
                       [&](const std::string& id) { return !embedding_of(id).is_null(); });
  }, 30s));
  ASSERT_TRUE(wait_until([&] { return call(*http_, "GET", "/readyz").body["search"]["embedder"]["up"] == true; }, 30s));
  wait_indexed();
  ASSERT_TRUE(wait_until([&] {
    auto s = search({{"query", "outage flaky builds"}});
    return s.status == 200 && s.body["mode"] == "hybrid";
  }, 30s));

  // Nothing is embedded twice, across a restart too.
  const size_t inputs = endpoint.inputs;
  server_->restart();
  http_ = std::make_unique<client::http_connection>(server_->connect());
  const auto late = put_ok({{"context_id", "ci"}, {"agent_id", "a"}, {"text", "after restart"}});
  ASSERT_TRUE(wait_until([&] { return !embedding_of(late).is_null(); }, 30s));
  EXPECT_EQ(endpoint.inputs, inputs + 1);
}

// An endpoint that starts answering with vectors of another dimension (a model swapped
// behind the URL) is treated as down: searches degrade to keyword with a reason,
// /readyz and the metric show it, and the log says so once, not at every retry.
TEST(SemanticEndpoint, VectorsOfTheWrongDimensionCountAsTheEndpointBeingDown) {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  spdlog::default_logger()->sinks().push_back(sink);  // no server runs yet
  struct remove_sink {
    ~remove_sink() { spdlog::default_logger()->sinks().pop_back(); }
  } remove;
  fake_embedder endpoint(16);
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.search.embeddings.url = endpoint.url();
  cfg.search.embeddings.model = "bow";
  cfg.search.embeddings.min_backoff = 10ms;
  cfg.search.embeddings.max_backoff = 50ms;
  {
    test_server server(cfg);
    auto http = server.connect();
    auto put = [&](const std::string& text) {
      auto r = call(http, "POST", "/workunit", json({{"context_id", "dim"}, {"agent_id", "a"}, {"text", text}}).dump());
      EXPECT_EQ(r.status, 201u) << r.raw;
      return r.body["work_unit"].value("id", "");
    };
    const auto first = put("flaky integration tests");
    ASSERT_TRUE(wait_until([&] {
      return !call(http, "GET", "/workunit/" + first + "?include=embedding").body["work_unit"]["embedding"].is_null();
    }, 30s));
    // Stored is not yet searchable: "auto" looks at the vector index, which the
    // insert threads fill after the store (an empty space means keyword, silently).
    ASSERT_TRUE(wait_until([&] { return call(http, "GET", "/readyz").body["search"]["vectors"]["count"] == 1; }, 30s));

    endpoint.set_dim(24);
    const auto later = put("flaky builds after the swap");
    ASSERT_TRUE(wait_until([&] { return call(http, "GET", "/readyz").body["search"]["embedder"]["up"] == false; }, 30s))
        << call(http, "GET", "/readyz").raw;
    auto ready = call(http, "GET", "/readyz");
    EXPECT_EQ(ready.status, 200u);  // degraded, not down
    EXPECT_NE(ready.body["search"]["embedder"].value("error", "").find("dimension 24"), std::string::npos) << ready.raw;
    EXPECT_EQ(metric(http, "engram_search_embedder_up"), 0);
    for (const char* mode : {"auto", "semantic", "hybrid"}) {
      auto r = call(http, "POST", "/search", json({{"query", "flaky"}, {"mode", mode}}).dump());
      EXPECT_EQ(r.status, 200u) << mode << ": " << r.raw;  // not a 400 blaming the client
      EXPECT_EQ(r.body["mode"], "keyword") << r.raw;
      EXPECT_NE(r.body.value("degraded", "").find("dimension"), std::string::npos) << r.raw;
    }
    EXPECT_TRUE(call(http, "GET", "/workunit/" + later + "?include=embedding").body["work_unit"]["embedding"].is_null());
    const double failed = metric(http, "engram_search_embedder_requests_total{outcome=\"error\"}");
    ASSERT_TRUE(wait_until([&] {  // several retries happen while it stays down
      return metric(http, "engram_search_embedder_requests_total{outcome=\"error\"}") >= failed + 3;
    }, 30s));

    // The right model again: the unit written meanwhile gets its vector.
    endpoint.set_dim(16);
    ASSERT_TRUE(wait_until([&] {
      return !call(http, "GET", "/workunit/" + later + "?include=embedding").body["work_unit"]["embedding"].is_null();
    }, 30s));
    EXPECT_EQ(call(http, "GET", "/readyz").body["search"]["embedder"]["up"], true);
  }
  const auto text = log.str();
  size_t said = 0;
  for (size_t at = text.find("embedding endpoint failing"); at != std::string::npos;
       at = text.find("embedding endpoint failing", at + 1))
    ++said;
  EXPECT_EQ(said, 1u) << text;
  EXPECT_NE(text.find("answers again"), std::string::npos);
}

}  // namespace
}  // namespace engram::test
