// The C++ SDK against the real server (in-process, real HTTP and WebSocket): every
// call, its error paths, retries through a fault-injecting proxy, subscriptions and
// the lease helper.
#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <map>
#include <mutex>
#include <set>

#include "engram/async.hpp"
#include "engram/client.hpp"
#include "support/fault_proxy.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

namespace sdk = engram::client;
using namespace std::chrono_literals;

sdk::client make_client(uint16_t port, std::string agent = "agent-a") {
  sdk::client_options opts;
  opts.url = "http://127.0.0.1:" + std::to_string(port);
  opts.agent_id = std::move(agent);
  opts.timeout = 10s;
  auto c = sdk::client::create(std::move(opts));
  if (!c) throw std::runtime_error(c.error().describe());
  return std::move(*c);
}

sdk::unit_input text_unit(std::string ctx, std::string text) {
  sdk::unit_input u;
  u.context_id = std::move(ctx);
  u.payload = std::move(text);
  return u;
}

// Collects a subscription's events under a mutex.
struct collector {
  std::mutex mu;
  std::vector<sdk::event> events;
  void operator()(const sdk::event& ev) {
    std::lock_guard lock(mu);
    events.push_back(ev);
  }
  size_t size() {
    std::lock_guard lock(mu);
    return events.size();
  }
  std::vector<sdk::event> snapshot() {
    std::lock_guard lock(mu);
    return events;
  }
};

class ClientTest : public ::testing::Test {
 protected:
  temp_dir dir_;
  test_server server_{dir_};
  sdk::client c_ = make_client(server_.port());
};

TEST_F(ClientTest, AppendGetAndPageThroughAContext) {
  sdk::unit_input first = text_unit("sdk/units", "hello");
  first.type = sdk::unit_type::tool_call;
  first.meta = {{"tool", "grep"}};
  first.relationships = {{"some-target", sdk::relationship_type::references, {{"why", "context"}}}};
  auto u = c_.append(first);
  ASSERT_TRUE(u) << u.error().describe();
  EXPECT_EQ(u->seq, 1u);
  EXPECT_EQ(u->agent_id, "agent-a");  // from X-Agent-ID
  EXPECT_EQ(u->type, sdk::unit_type::tool_call);
  EXPECT_EQ(u->payload, "hello");
  EXPECT_EQ(u->id.size(), 36u);
  EXPECT_GT(u->ts.time_since_epoch().count(), 0);

  // Binary payloads round-trip byte for byte.
  std::string binary;
  for (int i = 0; i < 256; ++i) binary.push_back(char(i));
  auto b = c_.append(text_unit("sdk/units", binary));
  ASSERT_TRUE(b);
  EXPECT_EQ(b->payload, binary);

  auto got = c_.get_unit(u->id);
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_EQ(got->payload, "hello");
  EXPECT_EQ(got->meta.at("tool"), "grep");
  ASSERT_EQ(got->relationships.size(), 1u);
  EXPECT_EQ(got->relationships[0].target_id, "some-target");
  EXPECT_EQ(got->relationships[0].type, sdk::relationship_type::references);
  EXPECT_EQ(got->relationships[0].meta.at("why"), "context");

  for (int i = 0; i < 23; ++i) ASSERT_TRUE(c_.append(text_unit("sdk/units", "n" + std::to_string(i))));
  std::vector<uint64_t> seqs;
  for (const auto& one : c_.units("sdk/units", {.limit = 7})) {
    ASSERT_TRUE(one) << one.error().describe();
    seqs.push_back(one->seq);
  }
  ASSERT_EQ(seqs.size(), 25u);
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], i + 1);

  std::vector<uint64_t> reversed;
  for (const auto& one : c_.units("sdk/units", {.limit = 10, .reverse = true})) reversed.push_back(one->seq);
  ASSERT_EQ(reversed.size(), 25u);
  EXPECT_EQ(reversed.front(), 25u);
  EXPECT_EQ(reversed.back(), 1u);

  auto page = c_.list_units_page("sdk/units", {.limit = 5, .after_seq = 20});
  ASSERT_TRUE(page);
  ASSERT_EQ(page->items.size(), 5u);
  EXPECT_EQ(page->items.front().seq, 21u);

  // A range stays valid when the client that made it is moved away.
  auto original = make_client(server_.port());
  auto range = original.units("sdk/units", {.limit = 10});
  sdk::client moved = std::move(original);
  size_t counted = 0;
  for (const auto& one : range) {
    ASSERT_TRUE(one) << one.error().describe();
    ++counted;
  }
  EXPECT_EQ(counted, 25u);

  // A context with '/' and other reserved characters in its id.
  ASSERT_TRUE(c_.append(text_unit("sdk/odd id?#&=%", "x")));
  auto odd = c_.list_units_page("sdk/odd id?#&=%");
  ASSERT_TRUE(odd) << odd.error().describe();
  ASSERT_EQ(odd->items.size(), 1u);
  EXPECT_EQ(odd->items[0].context_id, "sdk/odd id?#&=%");
}

TEST_F(ClientTest, CheckpointsAndToolCalls) {
  sdk::unit_input u;
  u.context_id = "sdk/cp";
  u.payload = "x";
  ASSERT_TRUE(c_.append(u));
  auto v1 = c_.save_checkpoint("sdk/cp", "agent-a", 1, R"({"step":1})", 0);
  ASSERT_TRUE(v1) << v1.error().describe();
  EXPECT_EQ(v1->version, 1u);
  auto stale = c_.save_checkpoint("sdk/cp", "agent-a", 1, R"({"step":2})", 0);
  ASSERT_FALSE(stale);
  EXPECT_EQ(stale.error().status, 412u);
  ASSERT_TRUE(c_.save_checkpoint("sdk/cp", "agent-a", 1, R"({"step":2})", 1));
  auto latest = c_.get_checkpoint("sdk/cp", "agent-a");
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->version, 2u);
  EXPECT_EQ(json::parse(latest->state_json), json({{"step", 2}}));
  EXPECT_EQ(c_.get_checkpoint("sdk/cp", "agent-a", 1)->state_json, R"({"step":1})");
  EXPECT_EQ(c_.get_checkpoint("sdk/cp", "nobody").error().status, 404u);

  u.type = sdk::unit_type::tool_call;
  u.call_id = "t1";
  ASSERT_TRUE(c_.append(u));
  EXPECT_FALSE(c_.get_tool_call("sdk/cp", "t1")->result);
  u.type = sdk::unit_type::tool_result;
  u.payload = "done";
  ASSERT_TRUE(c_.append(u));
  auto call = c_.get_tool_call("sdk/cp", "t1");
  ASSERT_TRUE(call && call->result);
  EXPECT_EQ(call->result->payload, "done");
  EXPECT_EQ(call->call.call_id, "t1");
}

TEST_F(ClientTest, ServerRefusalsAreServerErrorsWithTheServersMessage) {
  auto missing = c_.get_unit("01900000-0000-7000-8000-000000000000");
  ASSERT_FALSE(missing);
  EXPECT_TRUE(missing.error().is_server());
  EXPECT_TRUE(missing.error().is_not_found());
  EXPECT_EQ(missing.error().message, "Work unit not found");

  auto bad = c_.append(text_unit("", "no context"));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().status, 400u);
  EXPECT_NE(bad.error().message.find("context_id"), std::string::npos) << bad.error().message;

  auto no_ctx = c_.get_context("sdk/never-made");
  ASSERT_FALSE(no_ctx);
  EXPECT_TRUE(no_ctx.error().is_not_found());

  sdk::search_request broken;
  broken.query = "\"unclosed AND (";
  broken.mode = "no-such-mode";
  auto s = c_.search(broken);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().status, 400u);
}

TEST_F(ClientTest, NetworkFailuresAreDistinctFromRefusals) {
  // A port nothing listens on: bind one, learn its number, close it.
  uint16_t dead_port;
  {
    boost::asio::io_context io;
    boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
    dead_port = a.local_endpoint().port();
  }
  sdk::client_options opts;
  opts.url = "http://127.0.0.1:" + std::to_string(dead_port);
  opts.retry.max_attempts = 3;
  opts.retry.initial_backoff = 10ms;
  auto c = sdk::client::create(opts);
  ASSERT_TRUE(c);
  auto r = c->append(text_unit("sdk/x", "y"));
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.error().is_network());
  EXPECT_EQ(r.error().status, 0u);
  EXPECT_NE(r.error().describe().find("network"), std::string::npos);
  auto h = c->health();
  ASSERT_FALSE(h);
  EXPECT_TRUE(h.error().is_network());

  for (const char* url : {"ftp://127.0.0.1", "not a url", "http://", "http://127.0.0.1:0"}) {
    sdk::client_options bad;
    bad.url = url;
    EXPECT_FALSE(sdk::client::create(bad)) << url;
  }
}

TEST_F(ClientTest, BatchesAreAtomicAndFencesGuardWrites) {
  std::vector<sdk::unit_input> batch = {text_unit("", "a"), text_unit("", "b"), text_unit("", "c")};
  auto r = c_.append_batch("sdk/batch", batch);
  ASSERT_TRUE(r) << r.error().describe();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].seq, 1u);
  EXPECT_EQ((*r)[2].seq, 3u);
  EXPECT_EQ((*r)[1].payload, "b");

  // A batch with one invalid unit commits nothing.
  std::vector<sdk::unit_input> bad = {text_unit("", "ok"), text_unit("", "x")};
  bad[1].meta = {{"", "empty key"}};
  EXPECT_FALSE(c_.append_batch("sdk/batch", bad));
  EXPECT_EQ(c_.get_context("sdk/batch")->head_seq, 3u);

  // Fencing: the older token is refused once a newer grant exists.
  auto first = c_.acquire("sdk/fenced", 5s);
  ASSERT_TRUE(first) << first.error().describe();
  auto with_fence = text_unit("sdk/batch", "fenced write");
  with_fence.fence = first->fence();
  ASSERT_TRUE(c_.append(with_fence));
  ASSERT_TRUE(c_.release(*first));
  auto other = make_client(server_.port(), "agent-b");
  auto second = other.acquire("sdk/fenced", 5s);
  ASSERT_TRUE(second);
  EXPECT_GT(second->fencing_token, first->fencing_token);
  auto stale = c_.append(with_fence);
  ASSERT_FALSE(stale);
  EXPECT_TRUE(stale.error().is_conflict()) << stale.error().describe();
  auto stale_batch = c_.append_batch("sdk/batch", batch, {}, first->fence());
  ASSERT_FALSE(stale_batch);
  EXPECT_EQ(stale_batch.error().status, 409u);
}

TEST_F(ClientTest, AnIdempotencyKeyMakesRepeatsReturnTheSameUnit) {
  auto a = c_.append(text_unit("sdk/idem", "once"), {.idempotency_key = "key-1"});
  auto b = c_.append(text_unit("sdk/idem", "once"), {.idempotency_key = "key-1"});
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->id, b->id);
  EXPECT_EQ(a->idempotency_key, "key-1");
  auto reused = c_.append(text_unit("sdk/idem", "different"), {.idempotency_key = "key-1"});
  ASSERT_FALSE(reused);
  EXPECT_EQ(reused.error().status, 422u);
  // Without a key, each append is its own logical write.
  auto c1 = c_.append(text_unit("sdk/idem", "twice"));
  auto c2 = c_.append(text_unit("sdk/idem", "twice"));
  ASSERT_TRUE(c1 && c2);
  EXPECT_NE(c1->id, c2->id);
}

TEST_F(ClientTest, ADroppedResponseIsRetriedAndCommitsExactlyOnce) {
  fault_proxy proxy(server_.port());
  auto c = make_client(proxy.port());
  proxy.drop_next_responses(2);  // the first two answers are lost after the server committed
  auto u = c.append(text_unit("sdk/retry", "exactly once"));
  ASSERT_TRUE(u) << u.error().describe();
  EXPECT_EQ(proxy.dropped(), 2);
  auto all = c_.list_units_page("sdk/retry");
  ASSERT_TRUE(all);
  ASSERT_EQ(all->items.size(), 1u);
  EXPECT_EQ(all->items[0].id, u->id);

  // The same for a batch.
  proxy.drop_next_responses(1);
  std::vector<sdk::unit_input> batch = {text_unit("", "b1"), text_unit("", "b2")};
  auto b = c.append_batch("sdk/retry", batch);
  ASSERT_TRUE(b) << b.error().describe();
  EXPECT_EQ(proxy.dropped(), 3);
  EXPECT_EQ(c_.get_context("sdk/retry")->head_seq, 3u);

  // A lock request that may have reached the server is not repeated blindly.
  proxy.drop_next_responses(1);
  auto l = c.acquire("sdk/retry-lock", 5s);
  ASSERT_FALSE(l);
  EXPECT_TRUE(l.error().is_network());
}

TEST_F(ClientTest, ContextsGetPatchAndList) {
  sdk::context_patch p;
  p.display_name = "Planning";
  p.add_agents = {"agent-a", "agent-b"};
  p.meta = {{"owner", "alice"}, {"tmp", "x"}};
  auto c = c_.patch_context("sdk/ctx/1", p);
  ASSERT_TRUE(c) << c.error().describe();
  EXPECT_EQ(c->display_name, "Planning");
  EXPECT_EQ(c->agent_ids, (std::vector<std::string>{"agent-a", "agent-b"}));

  auto u = c_.append(text_unit("sdk/ctx/1", "pin me"));
  ASSERT_TRUE(u);
  sdk::context_patch q;
  q.remove_agents = {"agent-b"};
  q.pin_units = {u->id};
  q.meta = {{"tmp", std::nullopt}};
  c = c_.patch_context("sdk/ctx/1", q);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->agent_ids, std::vector<std::string>{"agent-a"});
  EXPECT_EQ(c->pinned_units, std::vector<std::string>{u->id});
  EXPECT_EQ(c->meta, (sdk::string_map{{"owner", "alice"}}));

  auto got = c_.get_context("sdk/ctx/1");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->head_seq, 3u);  // two context_updated events and one unit

  for (int i = 2; i <= 5; ++i) ASSERT_TRUE(c_.append(text_unit("sdk/ctx/" + std::to_string(i), "x")));
  std::vector<std::string> ids;
  for (const auto& one : c_.contexts(2)) {
    ASSERT_TRUE(one) << one.error().describe();
    if (one->id.starts_with("sdk/ctx/")) ids.push_back(one->id);
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"sdk/ctx/1", "sdk/ctx/2", "sdk/ctx/3", "sdk/ctx/4", "sdk/ctx/5"}));
}

TEST_F(ClientTest, LocksAcquireRenewReleaseListAndWait) {
  auto b = make_client(server_.port(), "agent-b");
  auto held = c_.acquire("sdk/res/a", 5s);
  ASSERT_TRUE(held) << held.error().describe();
  EXPECT_EQ(held->holder_agent, "agent-a");
  EXPECT_GT(held->fencing_token, 0u);

  auto conflict = b.acquire("sdk/res/a", 5s);
  ASSERT_FALSE(conflict);
  EXPECT_TRUE(conflict.error().is_conflict());
  EXPECT_NE(conflict.error().message.find("agent-a"), std::string::npos) << conflict.error().message;

  auto renewed = c_.renew(*held, 10s);
  ASSERT_TRUE(renewed) << renewed.error().describe();
  EXPECT_EQ(renewed->lock_id, held->lock_id);
  EXPECT_GT(renewed->expires_at, held->expires_at);

  auto got = b.get_lock("sdk/res/a");
  ASSERT_TRUE(got);
  EXPECT_EQ(got->lock_id, held->lock_id);

  // All or nothing: one of the two is held, so neither is granted.
  sdk::lock_request both;
  both.resources = {"sdk/res/a", "sdk/res/b"};
  both.ttl = 5s;
  ASSERT_FALSE(b.acquire(both));
  EXPECT_TRUE(b.get_lock("sdk/res/b").error().is_not_found());

  auto listed = b.list_locks("agent-a", "sdk/res/");
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ(listed->front().resource_path, "sdk/res/a");

  // A waiter gets the lease when it is released.
  std::optional<sdk::result<std::vector<sdk::lock>>> waited;
  std::thread waiter([&] {
    both.wait = 10s;
    waited = b.acquire(both);
  });
  auto probe = server_.connect();
  ASSERT_TRUE(wait_until([&] { return metric(probe, "engram_locks_waiting") >= 1; }));
  ASSERT_TRUE(c_.release(*held));
  waiter.join();
  ASSERT_TRUE(*waited) << (*waited).error().describe();
  EXPECT_EQ((**waited).size(), 2u);
  EXPECT_EQ((**waited)[0].holder_agent, "agent-b");

  // Releasing with the wrong lock id is refused.
  sdk::lock wrong = (**waited)[0];
  wrong.lock_id = "not-the-id";
  EXPECT_FALSE(b.release(wrong));
}

TEST_F(ClientTest, WithLockRenewsInTheBackgroundAndReleases) {
  uint64_t token = 0;
  // A TTL a loaded machine can renew within: with 300 ms, CI once saw the renewal
  // come too late and the lease flagged lost.
  auto r = c_.with_lock("sdk/lease", 1s, [&](sdk::lease& lease) {
    token = lease.fencing_token();
    // Outlive the TTL three times over: the renewer keeps it, so the lease must not
    // change hands or be flagged lost before the deadline.
    const bool changed = wait_until(
        [&] {
          auto now = c_.get_lock("sdk/lease");
          return !now || now->lock_id != lease.info().lock_id || lease.lost();
        },
        3s);
    if (!changed) return std::string("kept");
    return lease.lost() ? std::string("flagged lost") : std::string("lost the lease");
  });
  ASSERT_TRUE(r) << r.error().describe();
  EXPECT_EQ(*r, "kept");
  EXPECT_GT(token, 0u);
  EXPECT_TRUE(c_.get_lock("sdk/lease").error().is_not_found()) << "released after fn";

  // Held by someone else: the acquire error comes back and fn never runs.
  auto other = make_client(server_.port(), "agent-b");
  auto held = other.acquire("sdk/lease", 5s);
  ASSERT_TRUE(held);
  bool ran = false;
  auto refused = c_.with_lock("sdk/lease", 1s, [&](sdk::lease&) { ran = true; });
  ASSERT_FALSE(refused);
  EXPECT_TRUE(refused.error().is_conflict());
  EXPECT_FALSE(ran);
  ASSERT_TRUE(other.release(*held));

  // Lost: someone releases it from under us; fn learns through lost() and the stop token.
  auto lost = c_.with_lock("sdk/lease", 600ms, [&](sdk::lease& lease) {
    EXPECT_FALSE(lease.lost());
    EXPECT_TRUE(c_.release(lease.info()));  // as an operator would, out of band
    const bool flagged = wait_until([&] { return lease.lost(); }, 5s);
    return flagged && lease.stop_token().stop_requested();
  });
  ASSERT_TRUE(lost);
  EXPECT_TRUE(*lost);
}

TEST_F(ClientTest, KeywordAndSemanticSearchWithFilters) {
  sdk::unit_input a = text_unit("sdk/search/a", "the deployment pipeline failed on step three");
  a.embedding = {1, 0, 0, 0};
  sdk::unit_input b = text_unit("sdk/search/b", "pipeline succeeded");
  b.type = sdk::unit_type::tool_result;
  b.embedding = {0, 1, 0, 0};
  b.meta = {{"env", "prod"}};
  ASSERT_TRUE(c_.append(a));
  ASSERT_TRUE(c_.append(b));
  sdk::search_request req;
  req.query = "pipeline";
  ASSERT_TRUE(wait_until([&] {
    auto r = c_.search(req);
    return r && r->total_count == 2;
  }));
  req.types = {sdk::unit_type::tool_result};
  auto typed = c_.search(req);
  ASSERT_TRUE(typed);
  ASSERT_EQ(typed->ids.size(), 1u);
  EXPECT_EQ(typed->hits[0].context_id, "sdk/search/b");
  EXPECT_FALSE(typed->hits[0].snippet.empty());

  sdk::search_request scoped;
  scoped.query = "pipeline";
  scoped.context_id = "sdk/search/*";
  scoped.meta_filters = {{"env", "prod"}};
  auto meta = c_.search(scoped);
  ASSERT_TRUE(meta);
  ASSERT_EQ(meta->hits.size(), 1u);
  EXPECT_EQ(meta->mode, "keyword");

  sdk::search_request semantic;
  semantic.mode = "semantic";
  semantic.vector = {0.1f, 0.9f, 0, 0};
  ASSERT_TRUE(wait_until([&] {
    auto r = c_.search(semantic);
    return r && r->hits.size() == 2;
  }));
  auto sem = c_.search(semantic);
  EXPECT_EQ(sem->mode, "semantic");
  EXPECT_EQ(sem->hits[0].context_id, "sdk/search/b");
  ASSERT_TRUE(sem->hits[0].vector_rank);
  EXPECT_EQ(*sem->hits[0].vector_rank, 1u);

  sdk::search_request hybrid = semantic;
  hybrid.mode = "hybrid";
  hybrid.query = "failed";
  auto hy = c_.search(hybrid);
  ASSERT_TRUE(hy) << hy.error().describe();
  EXPECT_EQ(hy->mode, "hybrid");
  EXPECT_EQ(hy->hits.size(), 2u);
}

TEST_F(ClientTest, HealthReportsLivenessAndReadiness) {
  auto h = c_.health();
  ASSERT_TRUE(h) << h.error().describe();
  EXPECT_TRUE(h->live);
  EXPECT_TRUE(h->ready);
  EXPECT_EQ(h->status, "ready");
  EXPECT_FALSE(h->search_state.empty());
}

TEST_F(ClientTest, CallsRunFromAnAsioExecutor) {
  boost::asio::io_context io;
  std::optional<sdk::result<sdk::work_unit>> from_coroutine;
  std::thread::id completed_on;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        from_coroutine = co_await sdk::async_call(
            c_, [](sdk::client& c) { return c.append(text_unit("sdk/async", "from a coroutine")); },
            boost::asio::use_awaitable);
        completed_on = std::this_thread::get_id();
      },
      boost::asio::detached);
  io.run();
  ASSERT_TRUE(from_coroutine && *from_coroutine) << (*from_coroutine).error().describe();
  EXPECT_EQ((*from_coroutine)->seq, 1u);
  EXPECT_EQ(completed_on, std::this_thread::get_id()) << "completion runs on the caller's executor";

  auto fut = sdk::async_call(c_, [](sdk::client& c) { return c.get_context("sdk/async"); }, boost::asio::use_future);
  auto ctx = fut.get();
  ASSERT_TRUE(ctx);
  EXPECT_EQ(ctx->head_seq, 1u);
}

TEST_F(ClientTest, ConcurrentCallsShareTheClient) {
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i)
        if (c_.append(text_unit("sdk/concurrent", std::to_string(t) + "-" + std::to_string(i)))) ++ok;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 200);
  EXPECT_EQ(c_.get_context("sdk/concurrent")->head_seq, 200u);
}

TEST_F(ClientTest, SubscribeReplaysThenFollowsLiveExactlyOnce) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c_.append(text_unit("sdk/sub", "old " + std::to_string(i))));
  collector got;
  int connects = 0;
  sdk::subscribe_options opts;
  opts.on_connected = [&] { ++connects; };
  auto sub = c_.subscribe({"sdk/sub"}, 2, std::ref(got), opts);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c_.append(text_unit("sdk/sub", "new " + std::to_string(i))));
  ASSERT_TRUE(wait_until([&] { return got.size() >= 8; }));
  sub.stop();
  EXPECT_FALSE(sub.running());
  auto events = got.snapshot();
  ASSERT_EQ(events.size(), 8u);
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq, i + 3);
    ASSERT_TRUE(events[i].unit);
    EXPECT_EQ(events[i].type, "work_unit");
  }
  EXPECT_EQ(events[0].unit->payload, "old 2");
  EXPECT_EQ(events[7].unit->payload, "new 4");
  EXPECT_EQ(connects, 1);
  EXPECT_EQ(sub.cursors().at("sdk/sub"), 10u);

  // Non-unit events arrive typed.
  collector all;
  auto sub2 = c_.subscribe({"sdk/sub"}, 10, std::ref(all));
  sdk::context_patch p;
  p.display_name = "renamed";
  ASSERT_TRUE(c_.patch_context("sdk/sub", p));
  ASSERT_TRUE(wait_until([&] { return all.size() >= 1; }));
  auto ev = all.snapshot()[0];
  EXPECT_EQ(ev.type, "context_updated");
  ASSERT_TRUE(ev.context);
  EXPECT_EQ(ev.context->display_name, "renamed");
}

TEST_F(ClientTest, SubscribeResumesAfterDroppedConnectionsWithoutLossOrDuplicates) {
  fault_proxy proxy(server_.port());
  auto c = make_client(proxy.port());
  collector got;
  std::atomic<int> drops{0};
  sdk::subscribe_options opts;
  opts.min_backoff = 20ms;
  opts.max_backoff = 100ms;
  opts.on_disconnected = [&](const sdk::error&) { ++drops; };
  ASSERT_TRUE(c_.append(text_unit("sdk/pat/a", "before")));
  auto sub = c.subscribe({"sdk/pat/*"}, std::nullopt, std::ref(got), opts);
  ASSERT_TRUE(wait_until([&] { return sub.cursors().contains("sdk/pat/a"); }));

  ASSERT_TRUE(c_.append(text_unit("sdk/pat/a", "a2")));
  ASSERT_TRUE(wait_until([&] { return got.size() == 1; }));
  // Disconnected while units land in the known context and in one created meanwhile.
  proxy.set_refusing(true);
  proxy.drop_all();
  ASSERT_TRUE(wait_until([&] { return drops >= 1; }));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(c_.append(text_unit("sdk/pat/a", "a-away-" + std::to_string(i))));
    ASSERT_TRUE(c_.append(text_unit("sdk/pat/new", "new-" + std::to_string(i))));
  }
  proxy.set_refusing(false);
  ASSERT_TRUE(wait_until([&] { return got.size() == 7; }));
  // Once more, mid-traffic.
  std::thread writer([&] {
    for (int i = 0; i < 50; ++i) EXPECT_TRUE(c_.append(text_unit("sdk/pat/a", "w" + std::to_string(i))));
  });
  ASSERT_TRUE(wait_until([&] { return got.size() >= 20; }));
  proxy.drop_all();
  writer.join();
  ASSERT_TRUE(wait_until([&] { return got.size() >= 57; }));
  sub.stop();

  std::map<std::string, std::vector<uint64_t>> seqs;
  for (const auto& ev : got.snapshot()) seqs[ev.context_id].push_back(ev.seq);
  ASSERT_EQ(seqs["sdk/pat/a"].size(), 54u);
  for (size_t i = 0; i < 54; ++i) EXPECT_EQ(seqs["sdk/pat/a"][i], i + 2) << "no gap, no duplicate";
  EXPECT_EQ(seqs["sdk/pat/new"], (std::vector<uint64_t>{1, 2, 3})) << "a context created while away is replayed whole";
  EXPECT_GE(drops, 2);
}

// subscription::append: appends ride the subscription's own WebSocket, from
// several threads at once, and a connection dropped with appends unanswered sends
// them again with their keys: each is stored once and seen once by the handler.
TEST_F(ClientTest, SubscriptionAppendsOverItsOwnConnectionAndSurvivesDrops) {
  fault_proxy proxy(server_.port());
  auto c = make_client(proxy.port());
  collector got;
  sdk::subscribe_options opts;
  opts.min_backoff = 20ms;
  opts.max_backoff = 100ms;
  std::atomic<int> drops{0};
  opts.on_disconnected = [&](const sdk::error&) { ++drops; };
  auto sub = c.subscribe({"sdk/wsa"}, 0, std::ref(got), opts);
  ASSERT_TRUE(sub.wait_live());
  std::mutex mu;
  std::map<std::string, uint64_t> acked;  // unit id → seq
  auto writer = [&](int w) {
    for (int i = 0; i < 50; ++i) {
      auto u = sub.append(text_unit("sdk/wsa", "w" + std::to_string(w) + "-" + std::to_string(i)));
      ASSERT_TRUE(u) << u.error().describe();
      std::lock_guard lock(mu);
      EXPECT_TRUE(acked.emplace(u->id, u->seq).second);
    }
  };
  std::thread a(writer, 0), b(writer, 1);
  ASSERT_TRUE(wait_until([&] { return got.size() >= 20; }));
  proxy.drop_all();  // appends in flight now are sent again after the reconnect
  a.join();
  b.join();
  EXPECT_GE(drops, 1);
  ASSERT_EQ(acked.size(), 100u);
  ASSERT_TRUE(wait_until([&] { return got.size() >= 100; }));
  auto info = c_.get_context("sdk/wsa");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->head_seq, 100u) << "each append stored once";
  std::set<uint64_t> seqs;
  for (const auto& [id, seq] : acked) seqs.insert(seq);
  EXPECT_EQ(seqs.size(), 100u);
  EXPECT_EQ(*seqs.rbegin(), 100u);
  for (const auto& ev : got.snapshot()) {
    ASSERT_TRUE(ev.unit);
    EXPECT_TRUE(acked.contains(ev.unit->id)) << ev.unit->id;
  }

  auto refused = sub.append(text_unit("", "no context"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().what, sdk::error::kind::server);
  EXPECT_EQ(refused.error().status, 400u);
  sub.stop();
  auto after = sub.append(text_unit("sdk/wsa", "too late"));
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().what, sdk::error::kind::stopped);
}

// Draft messages share the socket with log events but are not events: a committed
// draft's draft_end (which names the unit's seq) must not count as the unit.
TEST_F(ClientTest, SubscriptionsSkipDraftMessagesAndMissNoCommittedUnit) {
  collector got;
  auto sub = c_.subscribe({"sdk/drafts"}, std::nullopt, std::ref(got));
  ASSERT_TRUE(sub.wait_live());
  auto http = server_.connect();
  for (int i = 0; i < 20; ++i) {
    const std::string path = "/contexts/sdk%2Fdrafts/drafts/d" + std::to_string(i);
    ASSERT_EQ(call(http, "POST", path + "/deltas", R"({"agent_id":"w","index":0,"text":"partial"})").status, 200u);
    ASSERT_EQ(call(http, "POST", path + "/commit", R"({"agent_id":"w","text":"final"})").status, 201u);
  }
  ASSERT_TRUE(wait_until([&] { return got.size() >= 20; }));
  sub.stop();
  const auto events = got.snapshot();
  ASSERT_EQ(events.size(), 20u);
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].type, "work_unit");
    EXPECT_EQ(events[i].seq, i + 1);
  }
}

TEST_F(ClientTest, ASubscriptionTheServerRefusesEndsWithTheReason) {
  auto sub = c_.subscribe({"bad*pattern*"}, 0, [](const sdk::event&) {});
  auto why = sub.wait();
  ASSERT_TRUE(why);
  EXPECT_EQ(why->status, 400u);
  EXPECT_NE(why->message.find("pattern"), std::string::npos) << why->message;
  EXPECT_FALSE(sub.running());

  // Stopping from inside the handler.
  ASSERT_TRUE(c_.append(text_unit("sdk/self-stop", "x")));
  sdk::subscription self;
  std::promise<void> assigned;
  auto ready = assigned.get_future().share();
  std::atomic<int> calls{0};
  self = c_.subscribe({"sdk/self-stop"}, 0, [&, ready](const sdk::event&) {
    ++calls;
    ready.wait();
    self.stop();
  });
  assigned.set_value();
  EXPECT_FALSE(self.wait());
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace engram::test
