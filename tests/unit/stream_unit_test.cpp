// engine::stream against a real RocksDB store and the real router: the catch-up /
// live hand-over, byte bounds and duplicates, step by step.
#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <thread>

#include "engine/drafts.hpp"
#include "engine/stream.hpp"
#include "gateway/handler.hpp"
#include "gateway/stream_params.hpp"
#include "model/ids.hpp"
#include "router/router.hpp"
#include "storage/store.hpp"
#include "support/manual_clock.hpp"
#include "support/test_support.hpp"

namespace engram::engine {
namespace {

class to_router final : public storage::publisher {
 public:
  explicit to_router(router::router& r) : r_(r) {}
  void publish(const std::vector<std::shared_ptr<const api::Event>>& events) override { r_.publish(events); }

 private:
  router::router& r_;
};

class StreamUnitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    storage::options o;
    o.data_dir = dir_.str() + "/db";
    o.block_cache_bytes = 8 << 20;
    o.write_buffer_bytes = 4 << 20;
    auto s = storage::store::open(o, nullptr, nullptr, nullptr);
    ASSERT_TRUE(s);
    store_ = std::move(*s);
    store_->set_publisher(&pub_);
  }
  void TearDown() override { store_.reset(); }

  // Appends and waits until the router has offered the events to every sink.
  void append(const std::string& ctx, int n) {
    storage::append_request req{ctx, {}, {}, {}};
    for (int i = 0; i < n; ++i) {
      api::WorkUnit u;
      u.set_id(ids_.next(1).to_string());
      u.set_agent_id("a");
      u.set_payload(std::string(100, 'x'));
      req.units.push_back(u);
    }
    std::promise<bool> done;
    store_->append(std::move(req), [&](auto r) { done.set_value(bool(r)); });
    ASSERT_TRUE(done.get_future().get());
    router_.flush();
  }

  std::vector<uint64_t> drain(stream& s, size_t max_bytes = 1 << 20) {
    std::vector<uint64_t> out;
    for (int rounds = 0; rounds < 1000; ++rounds) {
      auto got = s.poll(max_bytes);
      EXPECT_TRUE(got);
      if (got->empty()) break;
      for (const auto& e : *got) out.push_back(e->seq);
    }
    return out;
  }

  static std::vector<uint64_t> range(uint64_t a, uint64_t b) {
    std::vector<uint64_t> v;
    for (auto s = a; s <= b; ++s) v.push_back(s);
    return v;
  }

  test::temp_dir dir_;
  router::router router_;
  to_router pub_{router_};
  std::unique_ptr<storage::store> store_;
  model::uuid_v7_generator ids_;
};

TEST_F(StreamUnitTest, ReplayThenLiveWithoutGapOrDuplicate) {
  append("c", 3);
  int notified = 0;
  auto s = stream::open(*store_, router_, {.contexts = {"c"}, .since = 1}, {}, [&] { ++notified; });
  ASSERT_TRUE(s);
  EXPECT_EQ((*s)->positions().front().from_seq, 2u);
  EXPECT_EQ((*s)->positions().front().head_seq, 3u);
  EXPECT_GE(notified, 1);
  EXPECT_EQ(drain(**s), range(2, 3));  // replay from storage
  append("c", 2);
  EXPECT_EQ(drain(**s), range(4, 5));  // live
  EXPECT_EQ((*s)->cursors().at("c"), 5u);
}

// The hand-over race: an event committed while catch-up is reading storage must not
// be lost when the stream switches to live.
TEST_F(StreamUnitTest, EventArrivingDuringCatchUpReadIsNotLost) {
  append("c", 3);
  stream_options opts;
  bool injected = false;
  opts.after_catch_up_read = [&] {
    if (injected) return;
    injected = true;
    append("c", 1);  // seq 4 commits and is delivered mid-read
  };
  auto s = stream::open(*store_, router_, {.contexts = {"c"}, .since = 0}, opts, [] {});
  ASSERT_TRUE(s);
  EXPECT_EQ(drain(**s), range(1, 4));
  EXPECT_TRUE(injected);
}

TEST_F(StreamUnitTest, FullQueueFallsBackToStorageAndLosesNothing) {
  stream_options opts;
  opts.queue_bytes = 2000;  // about 6 units
  auto s = stream::open(*store_, router_, {.contexts = {"c"}}, opts, [] {});
  ASSERT_TRUE(s);
  EXPECT_TRUE(drain(**s).empty());
  append("c", 50);  // far more than the queue holds
  EXPECT_EQ(drain(**s, 1500), range(1, 50));
  append("c", 1);
  EXPECT_EQ(drain(**s), range(51, 51));  // live again
}

TEST_F(StreamUnitTest, LagBeyondTheLimitIsReported) {
  stream_options opts;
  opts.queue_bytes = 4096;
  opts.max_lag = 20;
  auto s = stream::open(*store_, router_, {.contexts = {"c"}}, opts, [] {});
  ASSERT_TRUE(s);
  append("c", 100);  // never polled
  EXPECT_TRUE((*s)->lagging());
}

TEST_F(StreamUnitTest, PrefixPatternsAndClosedStreams) {
  append("p/a", 2);
  auto s = stream::open(*store_, router_, {.prefixes = {"p/"}}, {}, [] {});
  ASSERT_TRUE(s);
  EXPECT_TRUE(drain(**s).empty());  // no cursor: live from the head
  append("p/b", 2);                 // a context created later: delivered from seq 1
  append("q/c", 1);                 // not matched
  EXPECT_EQ(drain(**s), range(1, 2));
  (*s)->close();
  append("p/b", 1);
  EXPECT_TRUE(drain(**s).empty());
}

TEST_F(StreamUnitTest, TooBroadPatternIsRefused) {
  append("w/1", 1);
  append("w/2", 1);
  stream_options opts;
  opts.max_pattern_contexts = 1;
  auto s = stream::open(*store_, router_, {.prefixes = {"w/"}}, opts, [] {});
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, model::errc::invalid_argument);
}

// ---- drafts: partial output delivered through the same stream -------------------

class DraftStreamTest : public StreamUnitTest {
 protected:
  // A text delta of `draft` in context "d" by agent "a".
  model::result<bool> delta(const std::string& draft, uint64_t index, std::string text) {
    auto r = drafts_.add({"d", draft, "a", "ws:1", index, std::move(text), false});
    router_.flush();
    return r;
  }
  // What a poll returns, as "<type>:<index or reason>:<text>" lines.
  static std::vector<std::string> describe(const std::vector<router::event_ptr>& events) {
    std::vector<std::string> out;
    for (const auto& e : events) {
      auto j = model::json::parse(e->json);
      const std::string type = j["type"];
      out.push_back(type + ":" + (type == "draft_end" ? j["reason"].get<std::string>() : std::to_string(j["index"].get<uint64_t>())) +
                    ":" + j.value("text", ""));
    }
    return out;
  }
  std::vector<std::string> take(stream& s, size_t max_bytes = 1 << 20) {
    auto got = s.poll(max_bytes);
    EXPECT_TRUE(got);
    return got ? describe(*got) : std::vector<std::string>{};
  }

  drafts drafts_{draft_options{}, router_, model::default_clock()};
};

TEST_F(DraftStreamTest, LateJoinerGetsTheDraftSoFarThenOnlyLaterDeltas) {
  ASSERT_TRUE(delta("x", 0, "Hel"));
  ASSERT_TRUE(delta("x", 1, "lo"));
  auto s = stream::open(*store_, router_, {.contexts = {"d"}}, {}, [] {}, nullptr, &drafts_);
  ASSERT_TRUE(s);
  EXPECT_EQ(take(**s), (std::vector<std::string>{"draft:1:Hello"}));
  ASSERT_TRUE(delta("x", 2, ", world"));
  EXPECT_EQ(take(**s), (std::vector<std::string>{"delta:2:, world"}));
  // A retried delta is a duplicate: accepted, not shown again.
  auto again = delta("x", 2, ", world");
  ASSERT_TRUE(again);
  EXPECT_FALSE(*again);
  EXPECT_TRUE(take(**s).empty());
  ASSERT_TRUE(drafts_.end("d", "x", "a", draft_end::committed, 7, "u1"));
  router_.flush();
  EXPECT_EQ(take(**s), (std::vector<std::string>{"draft_end:committed:"}));
  // Drafts are never stored: a stream opened now sees nothing of it.
  auto late = stream::open(*store_, router_, {.contexts = {"d"}, .since = 0}, {}, [] {}, nullptr, &drafts_);
  ASSERT_TRUE(late);
  EXPECT_TRUE(take(**late).empty());
}

TEST_F(DraftStreamTest, ASubscriberWithAFullQueueGetsTheDraftWholeInstead) {
  stream_options opts;
  opts.queue_bytes = 4096;
  auto s = stream::open(*store_, router_, {.contexts = {"d"}}, opts, [] {}, nullptr, &drafts_);
  ASSERT_TRUE(s);
  std::string expected;
  for (uint64_t i = 0; i < 40; ++i) {  // ~40 x 250 bytes: far more than the queue holds
    std::string text(200, char('a' + i % 26));
    expected += text;
    ASSERT_TRUE(delta("big", i, text));
  }
  auto got = (*s)->poll(1 << 20);
  ASSERT_TRUE(got);
  // The draft as it stands, covering every delta (the ones that had fitted are
  // dropped from the queue: the snapshot holds them).
  std::string seen;
  uint64_t last = 0;
  for (const auto& e : *got) {
    auto j = model::json::parse(e->json);
    if (j["type"] == "draft") seen = j["text"];  // whole so far: replaces what came before
    else seen += j["text"].get<std::string>();
    last = j["index"];
  }
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(last, 39u);
  EXPECT_EQ(describe(*got).back().substr(0, 8), "draft:39");
  ASSERT_TRUE(delta("big", 40, "!"));
  EXPECT_EQ(take(**s), (std::vector<std::string>{"delta:40:!"}));
  // The end is queued even when nothing else fits.
  for (uint64_t i = 41; i < 80; ++i) ASSERT_TRUE(delta("big", i, std::string(200, 'z')));
  ASSERT_TRUE(drafts_.end("d", "big", "", draft_end::aborted));
  router_.flush();
  auto rest = take(**s);
  ASSERT_FALSE(rest.empty());
  EXPECT_EQ(rest.back(), "draft_end:aborted:");
}

TEST_F(DraftStreamTest, RulesAndLimits) {
  draft_options o;
  o.max_delta_bytes = 10;
  o.max_bytes = 15;
  o.max_per_owner = 2;
  o.max_total_bytes = 24;
  drafts small(o, router_, model::default_clock());
  auto add = [&](std::string id, uint64_t index, std::string text, std::string agent = "a", bool binary = false) {
    return small.add({"d", std::move(id), std::move(agent), "ws:1", index, std::move(text), binary});
  };
  auto code = [](const model::result<bool>& r) { return r ? std::optional<model::errc>() : r.error().code; };
  EXPECT_EQ(code(add("a", 1, "x")), model::errc::conflict);  // must start at 0
  ASSERT_TRUE(add("a", 0, "0123456789"));
  EXPECT_EQ(code(add("a", 1, "0123456789A")), model::errc::payload_too_large);  // one delta
  EXPECT_EQ(code(add("a", 1, "0123456789")), model::errc::payload_too_large);   // the draft
  EXPECT_EQ(code(add("a", 2, "x")), model::errc::conflict);                      // a gap
  EXPECT_EQ(code(add("a", 1, "x", "b")), model::errc::conflict);                 // another agent's
  EXPECT_EQ(code(add("a", 1, "x", "a", true)), model::errc::conflict);           // payload into text
  ASSERT_TRUE(add("b", 0, "0123456789"));
  EXPECT_EQ(code(add("c", 0, "x")), model::errc::rate_limited);  // two per owner
  EXPECT_EQ(code(small.add({"d", "c", "a", "ws:2", 0, "01234", false})), model::errc::rate_limited);  // total bytes
  ASSERT_TRUE(small.end("d", "b", "a", draft_end::aborted));
  EXPECT_TRUE(add("c", 0, "x"));
  auto other = small.end("d", "c", "someone-else", draft_end::aborted);
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, model::errc::conflict);
  EXPECT_EQ(small.in_context("d").size(), 2u);
}

TEST_F(DraftStreamTest, IdleDraftsExpireAndSubscribersAreTold) {
  auto clock = std::make_shared<test::manual_clock>();
  draft_options o;
  o.idle = std::chrono::milliseconds(1000);
  drafts timed(o, router_, clock);
  auto s = stream::open(*store_, router_, {.contexts = {"d"}}, {}, [] {}, nullptr, &timed);
  ASSERT_TRUE(s);
  ASSERT_TRUE(timed.add({"d", "slow", "a", "ws:1", 0, "thinking", false}));
  clock->advance(std::chrono::milliseconds(900));
  ASSERT_TRUE(timed.add({"d", "slow", "a", "ws:1", 1, "…", false}));  // a delta keeps it open
  clock->advance(std::chrono::milliseconds(900));
  EXPECT_TRUE(timed.get("d", "slow"));
  clock->advance(std::chrono::milliseconds(200));
  ASSERT_TRUE(test::wait_until([&] { return !timed.get("d", "slow"); }));
  router_.flush();
  EXPECT_EQ(take(**s), (std::vector<std::string>{"delta:0:thinking", "delta:1:…", "draft_end:expired:"}));
}

// Records what a router offers it, and on which thread.
class recording_sink final : public router::sink {
 public:
  void deliver(const router::event_ptr& ev) override {
    std::lock_guard lock(mu_);
    seqs_.push_back(ev->seq);
    threads_.push_back(std::this_thread::get_id());
  }
  std::vector<uint64_t> seqs() {
    std::lock_guard lock(mu_);
    return seqs_;
  }
  std::vector<std::thread::id> threads() {
    std::lock_guard lock(mu_);
    return threads_;
  }

 private:
  std::mutex mu_;
  std::vector<uint64_t> seqs_;
  std::vector<std::thread::id> threads_;
};

std::vector<std::shared_ptr<const api::Event>> unit_event(const std::string& ctx, uint64_t seq) {
  auto ev = std::make_shared<api::Event>();
  ev->set_context_id(ctx);
  ev->set_seq(seq);
  ev->mutable_work_unit()->set_context_id(ctx);
  ev->mutable_work_unit()->set_seq(seq);
  return {ev};
}

// A quiet router offers a batch with few subscribers on the publishing thread,
// before publish returns (no hand-off to its dispatch thread); a batch with more
// goes to the dispatch thread.
TEST(RouterTest, FewSubscribersAreOfferedOnThePublishingThread) {
  router::router r;
  auto first = std::make_shared<recording_sink>();
  r.subscribe(first, {{"c"}, {}, nullptr});
  r.publish(unit_event("c", 1));
  ASSERT_EQ(first->seqs(), std::vector<uint64_t>{1}) << "not offered before publish returned";
  EXPECT_EQ(first->threads().front(), std::this_thread::get_id());

  std::vector<std::shared_ptr<recording_sink>> more;
  for (size_t i = 0; i < router::router::inline_max_sinks; ++i) {
    more.push_back(std::make_shared<recording_sink>());
    r.subscribe(more.back(), {{"c"}, {}, nullptr});
  }
  r.publish(unit_event("c", 2));
  r.flush();
  ASSERT_EQ(first->seqs(), (std::vector<uint64_t>{1, 2}));
  EXPECT_NE(first->threads().back(), std::this_thread::get_id()) << "a batch for many sinks ran on the committer";
  for (const auto& s : more) EXPECT_EQ(s->seqs(), std::vector<uint64_t>{2});
}

// Batches alternate between the two paths as subscribers come and go (phases of
// 50 events: one with 8 more subscribers, queued for the dispatch thread, then one
// without, offered inline once the queue has drained, which every other time it
// is made to be first); a subscriber that stays gets every event once, in
// publish order.
TEST(RouterTest, InlineAndQueuedBatchesKeepPublishOrder) {
  router::router r;
  auto watcher = std::make_shared<recording_sink>();
  r.subscribe(watcher, {{"c"}, {}, nullptr});
  constexpr uint64_t events = 20'000;
  std::vector<std::shared_ptr<recording_sink>> crowd;
  std::vector<router::router::subscription_id> crowd_ids;
  for (uint64_t seq = 1; seq <= events; ++seq) {
    if (seq % 100 == 1) {  // a queued phase begins
      for (size_t i = 0; i < router::router::inline_max_sinks; ++i) {
        crowd.push_back(std::make_shared<recording_sink>());
        crowd_ids.push_back(r.subscribe(crowd.back(), {{"c"}, {}, nullptr}));
      }
    } else if (seq % 100 == 51) {  // an inline phase begins; the queue may still hold the last batches
      for (auto id : crowd_ids) r.unsubscribe(id);
      crowd_ids.clear();
      crowd.clear();
      if (seq % 200 == 51) r.flush();  // every other time, drained: the next batch goes inline
    }
    r.publish(unit_event("c", seq));
  }
  r.flush();
  const auto got = watcher->seqs();
  ASSERT_EQ(got.size(), events);
  for (uint64_t i = 0; i < events; ++i) ASSERT_EQ(got[i], i + 1) << "at " << i;
  const auto threads = watcher->threads();
  for (uint64_t i = 0; i < events; ++i) {
    if (i % 100 < 50) {
      ASSERT_NE(threads[i], std::this_thread::get_id()) << "seq " << i + 1 << " was offered inline";
    }
  }
  const auto here = std::count(threads.begin(), threads.end(), std::this_thread::get_id());
  EXPECT_GT(here, 0) << "no batch went inline";
}

// A resuming subscriber (the SDK) sends per-context cursors next to a numeric since.
TEST(StreamParamsTest, SubscribeMessageTakesCursorsBesideSince) {
  auto req = gateway::parse_subscribe_message(
      model::json::parse(R"({"type":"subscribe","contexts":["p/*","x"],"since":0,"cursors":{"p/a":7,"x":3}})"));
  ASSERT_TRUE(req) << req.error().message;
  EXPECT_EQ(req->since, 0u);
  EXPECT_EQ(req->since_by_context, (std::map<std::string, uint64_t>{{"p/a", 7}, {"x", 3}}));
  EXPECT_EQ(req->prefixes, std::vector<std::string>{"p/"});
  for (const char* bad : {R"({"contexts":["a"],"cursors":[1]})", R"({"contexts":["a"],"cursors":{"a":-1}})",
                          R"({"contexts":["a"],"cursors":{"a":"7"}})"}) {
    auto r = gateway::parse_subscribe_message(model::json::parse(bad));
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find("cursors"), std::string::npos) << r.error().message;
  }
}

// The one error mapping: an idempotent request still running is a 409 that says
// when to retry, which is how clients tell it from a lock conflict.
TEST(StreamParamsTest, InProgressIsA409WithRetryAfter) {
  auto busy = gateway::error_response({model::errc::in_progress, "still in progress"});
  EXPECT_EQ(busy.status, 409u);
  auto has_retry_after = [](const gateway::response& r) {
    for (const auto& [k, v] : r.headers)
      if (k == "Retry-After") return true;
    return false;
  };
  EXPECT_TRUE(has_retry_after(busy));
  auto conflict = gateway::error_response({model::errc::conflict, "held"});
  EXPECT_EQ(conflict.status, 409u);
  EXPECT_FALSE(has_retry_after(conflict));
}

}  // namespace
}  // namespace engram::engine
