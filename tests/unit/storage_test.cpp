// internal/storage against a real RocksDB in a temp dir.
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <condition_variable>
#include <future>
#include <set>
#include <thread>
#include <utility>

#include "model/ids.hpp"
#include "model/io_thread.hpp"
#include "storage/store.hpp"
#include "support/test_support.hpp"

namespace engram::storage {
namespace {

struct fake_clock final : model::clock {
  std::atomic<int64_t> now{1'700'000'000'000'000'000};
  int64_t now_ns() const override { return now.load(); }
};

// Records published events; can hold the committer inside publish() so tests can
// line up several requests for the next commit group deterministically.
class gate_publisher final : public publisher {
 public:
  void publish(const std::vector<std::shared_ptr<const api::Event>>& events) override {
    std::unique_lock lock(mu_);
    for (const auto& e : events) events_.push_back(e);
    ++calls_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  void close_gate() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  void open_gate() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  void wait_calls(size_t n) {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(10), [&] { return calls_ >= n; }));
  }
  std::vector<std::shared_ptr<const api::Event>> events() {
    std::lock_guard lock(mu_);
    return events_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  size_t calls_ = 0;
  std::vector<std::shared_ptr<const api::Event>> events_;
};

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override { open(); }
  void TearDown() override { store_.reset(); }

  void open() {
    opts_.data_dir = dir_.str() + "/db";
    opts_.block_cache_bytes = 8 << 20;
    opts_.write_buffer_bytes = 4 << 20;
    registry_ = std::make_shared<prometheus::Registry>();
    auto s = store::open(opts_, registry_.get(), clock_, completions_);
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    store_->set_publisher(&pub_);
  }
  void reopen() {
    store_.reset();
    open();
  }

  api::WorkUnit unit(const std::string& text) {
    api::WorkUnit u;
    u.set_id(ids_.next(clock_->now_ns() / 1'000'000).to_string());
    u.set_agent_id("agent");
    u.set_type(api::WORK_UNIT_TYPE_MESSAGE);
    u.set_payload(text);
    return u;
  }

  std::future<model::result<append_result>> append_async(const std::string& ctx, std::vector<std::string> texts,
                                                         std::string key = {}, std::string fp = {}) {
    auto promise = std::make_shared<std::promise<model::result<append_result>>>();
    auto fut = promise->get_future();
    append_request req{ctx, {}, std::move(key), std::move(fp)};
    for (const auto& t : texts) req.units.push_back(unit(t));
    store_->append(std::move(req), [promise](model::result<append_result> r) { promise->set_value(std::move(r)); });
    return fut;
  }

  model::result<append_result> append(const std::string& ctx, std::vector<std::string> texts,
                                      std::string key = {}, std::string fp = {}) {
    return append_async(ctx, std::move(texts), std::move(key), std::move(fp)).get();
  }

  std::vector<uint64_t> seqs(const std::string& ctx, list_query q = {}) {
    q.limit = 100000;
    auto page = store_->list_units(ctx, q);
    EXPECT_TRUE(page) << page.error().message;
    std::vector<uint64_t> out;
    for (const auto& u : page->units) out.push_back(u.seq());
    return out;
  }

  double metric(const std::string& name) {
    for (const auto& fam : registry_->Collect()) {
      if (fam.name != name || fam.metric.empty()) continue;
      const auto& m = fam.metric.front();
      return fam.type == prometheus::MetricType::Counter ? m.counter.value : m.histogram.sample_count;
    }
    return -1;
  }

  test::temp_dir dir_;
  options opts_;
  store::executor completions_;  // null: completions run on the committer
  std::shared_ptr<fake_clock> clock_ = std::make_shared<fake_clock>();
  std::shared_ptr<prometheus::Registry> registry_;
  gate_publisher pub_;
  std::unique_ptr<store> store_;
  model::uuid_v7_generator ids_;
};

TEST_F(StoreTest, AppendsGetGapFreeSeqsPerContext) {
  auto a1 = append("a", {"one"});
  auto b1 = append("a:b", {"x", "y"});
  auto a2 = append("a", {"two", "three"});
  ASSERT_TRUE(a1 && b1 && a2);
  EXPECT_EQ(a1->units[0].seq(), 1u);
  EXPECT_EQ(b1->units[1].seq(), 2u);
  EXPECT_EQ(a2->units[0].seq(), 2u);
  EXPECT_EQ(a2->units[1].seq(), 3u);
  EXPECT_EQ(a2->units[1].context_id(), "a");
  EXPECT_EQ(seqs("a"), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(seqs("a:b"), (std::vector<uint64_t>{1, 2}));  // "a" and "a:b" never mix
  EXPECT_TRUE(seqs("nope").empty());

  auto got = store_->get_unit(a2->units[1].id());
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->payload(), "three");
  EXPECT_FALSE(*store_->get_unit(ids_.next(1).to_string()));
  EXPECT_FALSE(*store_->get_unit("not-a-uuid"));

  auto ctx = store_->get_context("a");
  ASSERT_TRUE(ctx && *ctx);
  EXPECT_EQ((*ctx)->head_seq(), 3u);
}

TEST_F(StoreTest, ListsWithBoundsBothDirections) {
  std::vector<std::string> texts;
  for (int i = 0; i < 50; ++i) texts.push_back(std::to_string(i));
  ASSERT_TRUE(append("c", texts));
  EXPECT_EQ(seqs("c", {.after_seq = 45}), (std::vector<uint64_t>{46, 47, 48, 49, 50}));
  EXPECT_EQ(seqs("c", {.before_seq = 4, .reverse = true}), (std::vector<uint64_t>{3, 2, 1}));
  EXPECT_EQ(seqs("c", {.after_seq = 10, .before_seq = 13}), (std::vector<uint64_t>{11, 12}));
  auto page = store_->list_units("c", {.limit = 10, .reverse = true});
  ASSERT_TRUE(page);
  EXPECT_EQ(page->units.front().seq(), 50u);
  EXPECT_TRUE(page->more);
  auto last = store_->list_units("c", {.after_seq = 40, .limit = 10});
  EXPECT_FALSE(last->more);
  EXPECT_EQ(last->units.size(), 10u);
}

// Newest-first pages are read forward in growing windows: check them against the
// log's truth across window edges, with other events (facts) between the units.
TEST_F(StoreTest, ReversePagesSkipOtherEventsAcrossWindows) {
  std::vector<uint64_t> unit_seqs;
  for (int round = 0; round < 30; ++round) {
    auto r = append("w", {"a", "b", "c"});
    ASSERT_TRUE(r) << r.error().message;
    for (const auto& u : r->units) unit_seqs.push_back(u.seq());
    for (int f = 0; f < (round % 7) * 20; ++f) {  // runs of 0–120 fact events
      std::promise<model::result<api::Event>> done;
      fact_change ch;
      ch.context_id = "w";
      ch.fact.set_key("k" + std::to_string(f));
      ch.fact.set_value_json("1");
      ch.fact.set_status("active");
      store_->change_fact(std::move(ch), [&](model::result<api::Event> e) { done.set_value(std::move(e)); });
      ASSERT_TRUE(done.get_future().get());
    }
  }
  const std::vector<uint64_t> newest_first(unit_seqs.rbegin(), unit_seqs.rend());
  for (size_t limit : {1, 3, 10, 64, 89, 90, 500}) {
    auto page = store_->list_units("w", {.limit = limit, .reverse = true});
    ASSERT_TRUE(page);
    std::vector<uint64_t> got;
    for (const auto& u : page->units) got.push_back(u.seq());
    const size_t n = std::min(limit, newest_first.size());
    EXPECT_EQ(got, std::vector<uint64_t>(newest_first.begin(), newest_first.begin() + long(n))) << limit;
    EXPECT_EQ(page->more, limit < newest_first.size()) << limit;
  }
  // Bounded on both sides: units strictly between.
  const uint64_t lo = unit_seqs[10], hi = unit_seqs[70];
  std::vector<uint64_t> want;
  for (auto seq : newest_first)
    if (seq > lo && seq < hi) want.push_back(seq);
  EXPECT_EQ(seqs("w", {.after_seq = lo, .before_seq = hi, .reverse = true}), want);
}

TEST_F(StoreTest, EverythingSurvivesReopen) {
  ASSERT_TRUE(append("a", {"1", "2"}));
  auto upd = std::promise<model::result<api::Context>>();
  store_->update_context({"a", [](api::Context& c) { c.set_display_name("A"); }},
                         [&](auto r) { upd.set_value(std::move(r)); });
  ASSERT_TRUE(upd.get_future().get());
  ASSERT_TRUE(append("b", {"x"}));
  reopen();
  EXPECT_EQ(seqs("a"), (std::vector<uint64_t>{1, 2}));  // seq 3 is the context update
  auto next = append("a", {"3"});
  ASSERT_TRUE(next);
  EXPECT_EQ(next->units[0].seq(), 4u);
  EXPECT_EQ((*store_->get_context("a"))->display_name(), "A");
  // A context created after reopen gets a fresh handle: no mixing with "a" or "b".
  ASSERT_TRUE(append("c", {"c1"}));
  EXPECT_EQ(seqs("c"), (std::vector<uint64_t>{1}));
  EXPECT_EQ(seqs("b"), (std::vector<uint64_t>{1}));
}

// get_unit_if_cached answers from memory only (the I/O threads serve GET
// /workunit/{id} with it). A unit just written is in the memtable; after a reopen
// it is in a table file the fresh block cache has not read, so the answer needs
// the disk (nullopt) until get_unit has read it once.
TEST_F(StoreTest, CachedUnitReadsAnswerFromMemoryOnly) {
  auto r = append("a", {"x"});
  ASSERT_TRUE(r) << r.error().message;
  const std::string id = r->units[0].id();
  auto fresh = store_->get_unit_if_cached(id, SIZE_MAX);
  ASSERT_TRUE(fresh && *fresh && **fresh);
  EXPECT_EQ((**fresh)->payload(), "x");
  reopen();
  EXPECT_FALSE(store_->get_unit_if_cached(id, SIZE_MAX).has_value()) << "answered from memory right after a reopen";
  auto disk = store_->get_unit(id);
  ASSERT_TRUE(disk && *disk) << "the disk read failed";
  auto cached = store_->get_unit_if_cached(id, SIZE_MAX);
  ASSERT_TRUE(cached && *cached && **cached) << "not in memory after a read";
  EXPECT_EQ((**cached)->payload(), "x");
  auto bad = store_->get_unit_if_cached("not-a-uuid", SIZE_MAX);  // answered without reading anything
  ASSERT_TRUE(bad && *bad);
  EXPECT_FALSE(**bad);
  EXPECT_FALSE(store_->get_unit_if_cached(id, 8).has_value()) << "a unit over max_bytes is left to get_unit";
}

// What the tail cache checks itself against (engine/tail_cache.hpp): the record's
// handle, first and head seq, and the deleted mark, from memory when it is there.
TEST_F(StoreTest, ContextPositionFollowsTheRecord) {
  auto none = store_->context_position("a", false);
  ASSERT_TRUE(none && *none);
  EXPECT_FALSE(**none);
  ASSERT_TRUE(append("a", {"x", "y", "z"}));
  auto pos = store_->context_position("a", false);
  ASSERT_TRUE(pos && *pos && **pos);
  const log_position first = ***pos;
  EXPECT_EQ(first.head_seq, 3u);
  EXPECT_EQ(first.first_seq, 1u);
  EXPECT_FALSE(first.deleted);
  auto removal = [&](auto start) {
    auto done = std::make_shared<std::promise<bool>>();
    auto f = done->get_future();
    start([done](model::result<trim_result> r) { done->set_value(r.has_value()); });
    return f.get();
  };
  ASSERT_TRUE(removal([&](auto cb) { store_->trim("a", 3, cb); }));
  pos = store_->context_position("a", false);
  ASSERT_TRUE(pos && *pos && **pos);
  EXPECT_EQ((***pos).first_seq, 3u);
  EXPECT_EQ((***pos).head_seq, 3u);
  EXPECT_EQ((***pos).handle, first.handle);
  reopen();
  ASSERT_TRUE(store_->context_position("a", false).has_value());  // read once: now in memory
  auto cached = store_->context_position("a", true);
  ASSERT_TRUE(cached && *cached && **cached) << "not in memory after a read";
  EXPECT_EQ((***cached).first_seq, 3u);
  ASSERT_TRUE(removal([&](auto cb) { store_->delete_context("a", "tester", cb); }));
  pos = store_->context_position("a", false);
  ASSERT_TRUE(pos && *pos && **pos);
  EXPECT_TRUE((***pos).deleted);
  EXPECT_EQ((***pos).head_seq, 4u);  // the context_deleted event
  EXPECT_EQ((***pos).first_seq, 4u);
  EXPECT_EQ((***pos).handle, first.handle);
}

// The second of get_unit's two reads can need the disk on its own: the id's entry
// is in memory (read beside another id's), the unit's log block is not.
TEST_F(StoreTest, CachedUnitReadsNeedTheDiskForAnUnreadLogBlock) {
  auto r = append("a", {std::string(20'000, 'a'), std::string(20'000, 'b')});  // one log block each
  ASSERT_TRUE(r) << r.error().message;
  const std::string first = r->units[0].id(), second = r->units[1].id();
  reopen();
  ASSERT_TRUE(store_->get_unit(first).has_value());  // caches the ids' block and the first unit's
  EXPECT_FALSE(store_->get_unit_if_cached(second, SIZE_MAX).has_value());
  auto again = store_->get_unit_if_cached(first, SIZE_MAX);
  ASSERT_TRUE(again && *again && **again);
  EXPECT_EQ((**again)->payload().size(), 20'000u);
}

TEST_F(StoreTest, ConcurrentWritersGetGapFreeSeqs) {
  constexpr int threads = 16, per_thread = 100;
  std::vector<std::thread> ts;
  std::mutex mu;
  std::vector<uint64_t> all;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        auto r = append("shared", {std::to_string(t) + "-" + std::to_string(i)});
        ASSERT_TRUE(r);
        std::lock_guard lock(mu);
        all.push_back(r->units[0].seq());
      }
    });
  }
  for (auto& t : ts) t.join();
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), size_t(threads * per_thread));
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], i + 1);
  EXPECT_EQ(seqs("shared").size(), all.size());
}

TEST_F(StoreTest, QueuedRequestsShareOneCommitGroup) {
  ASSERT_TRUE(append("g", {"first"}));  // publish call 1
  pub_.close_gate();
  auto held = append_async("g", {"held"});
  pub_.wait_calls(2);  // the committer is now parked inside publish()
  std::vector<std::future<model::result<append_result>>> futs;
  for (int i = 0; i < 10; ++i) futs.push_back(append_async("g", {"q" + std::to_string(i)}));
  const double groups_before = metric("engram_storage_commit_groups_total");
  pub_.open_gate();
  for (auto& f : futs) ASSERT_TRUE(f.get());
  ASSERT_TRUE(held.get());
  EXPECT_EQ(metric("engram_storage_commit_groups_total") - groups_before, 1.0);
  EXPECT_EQ(seqs("g").size(), 12u);
}

TEST_F(StoreTest, PublisherSeesCommittedEventsInSeqOrder) {
  ASSERT_TRUE(append("p", {"a", "b"}));
  std::promise<model::result<api::Context>> upd;
  store_->update_context({"p", [](api::Context& c) { c.add_agent_ids("z"); }}, [&](auto r) { upd.set_value(r); });
  auto ctx = upd.get_future().get();
  ASSERT_TRUE(ctx);
  EXPECT_EQ(ctx->head_seq(), 3u);
  ASSERT_TRUE(append("p", {"c"}));
  const auto events = pub_.events();
  ASSERT_EQ(events.size(), 4u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i]->seq(), i + 1);
  EXPECT_TRUE(events[2]->has_context_updated());
  EXPECT_EQ(events[2]->context_updated().context().head_seq(), 3u);
  EXPECT_EQ(events[3]->work_unit().payload(), "c");
}

TEST_F(StoreTest, IdempotentRetryReturnsTheOriginal) {
  auto first = append("i", {"a", "b"}, "key-1", "fp");
  ASSERT_TRUE(first);
  auto retry = append("i", {"a", "b"}, "key-1", "fp");
  ASSERT_TRUE(retry);
  EXPECT_TRUE(retry->replayed);
  ASSERT_EQ(retry->units.size(), 2u);
  EXPECT_EQ(retry->units[0].id(), first->units[0].id());
  EXPECT_EQ(retry->units[1].seq(), 2u);
  auto other = append("i", {"c"}, "key-1", "different");
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, model::errc::unprocessable);
  // Keys are per context.
  auto elsewhere = append("j", {"c"}, "key-1", "different");
  ASSERT_TRUE(elsewhere);
  EXPECT_FALSE(elsewhere->replayed);
  EXPECT_EQ(seqs("i").size(), 2u);
  reopen();  // remembered across restarts
  EXPECT_TRUE(append("i", {"a", "b"}, "key-1", "fp")->replayed);
}

TEST_F(StoreTest, IdempotencyKeyInFlightIsInProgress) {
  ASSERT_TRUE(append("f", {"x"}));
  pub_.close_gate();
  auto held = append_async("f", {"held"});
  pub_.wait_calls(2);
  auto a = append_async("f", {"a"}, "k", "fp");
  auto b = append_async("f", {"a"}, "k", "fp");
  pub_.open_gate();
  auto ra = a.get();
  auto rb = b.get();
  ASSERT_TRUE(ra);
  ASSERT_FALSE(rb);
  EXPECT_EQ(rb.error().code, model::errc::in_progress);
  ASSERT_TRUE(held.get());
}

TEST_F(StoreTest, IdempotencyKeysExpireAfterTtl) {
  ASSERT_TRUE(append("t", {"x"}, "k", "fp"));
  clock_->now += std::chrono::nanoseconds(opts_.idempotency_ttl).count() + 1;
  auto again = append("t", {"x"}, "k", "fp");
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->replayed);
  EXPECT_EQ(again->units[0].seq(), 2u);
}

TEST_F(StoreTest, FullQueueRefusesWithUnavailable) {
  reopen();
  store_.reset();
  opts_.commit_queue_limit = 2;
  open();
  ASSERT_TRUE(append("q", {"x"}));
  pub_.close_gate();
  auto held = append_async("q", {"held"});
  pub_.wait_calls(2);
  auto f1 = append_async("q", {"1"});
  auto f2 = append_async("q", {"2"});
  auto f3 = append_async("q", {"3"});
  auto r3 = f3.get();  // refused at once, while the committer is held
  ASSERT_FALSE(r3);
  EXPECT_EQ(r3.error().code, model::errc::unavailable);
  pub_.open_gate();
  EXPECT_TRUE(f1.get());
  EXPECT_TRUE(f2.get());
  EXPECT_TRUE(held.get());
}

TEST_F(StoreTest, CloseCommitsWhatIsQueued) {
  std::vector<std::future<model::result<append_result>>> futs;
  for (int i = 0; i < 200; ++i) futs.push_back(append_async("z", {std::to_string(i)}));
  store_->close();
  for (auto& f : futs) ASSERT_TRUE(f.get());
  reopen();
  EXPECT_EQ(seqs("z").size(), 200u);
}

TEST_F(StoreTest, RelaxedModeKeepsWritesAcrossReopen) {
  store_.reset();
  opts_.mode = durability::relaxed;
  open();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(append("r", {std::to_string(i)}));
  reopen();
  EXPECT_EQ(seqs("r").size(), 20u);
}

// Completions the committer hands over, held until the test runs them (as an I/O
// thread would run them later).
class held_completions {
 public:
  store::executor executor() {
    return [this](int, std::function<void()> f) {
      std::lock_guard lock(mu_);
      held_.push_back(std::move(f));
      cv_.notify_all();
    };
  }
  size_t size() {
    std::lock_guard lock(mu_);
    return held_.size();
  }
  // Waits (bounded) until `n` are held, then runs them all on this thread.
  void run(size_t n) {
    std::vector<std::function<void()>> now;
    {
      std::unique_lock lock(mu_);
      ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(10), [&] { return held_.size() >= n; }));
      now.swap(held_);
    }
    for (auto& f : now) f();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::function<void()>> held_;
};

TEST_F(StoreTest, RelaxedAppendWithNothingElseInFlightIsCommittedOnTheCallersThread) {
  held_completions held;
  store_.reset();
  opts_.mode = durability::relaxed;
  completions_ = held.executor();
  open();
  struct outcome {
    bool done = false;
    std::thread::id thread;
    uint64_t seq = 0;
  };
  auto send = [&](const std::string& ctx, const std::string& text, outcome& out, std::string key = {}) {
    store_->append(append_request{ctx, {unit(text)}, key, key.empty() ? "" : "fp"},
                   [&out](model::result<append_result> r) {
                     ASSERT_TRUE(r) << r.error().message;
                     out = {true, std::this_thread::get_id(), r->units.at(0).seq()};
                   });
  };
  // A context the store has not seen yet is looked up on disk: left to the committer.
  outcome first;
  send("r", "first", first);
  held.run(1);
  ASSERT_TRUE(first.done);
  // Known now, nothing else in flight: answered before append() returns, on this thread.
  outcome second;
  send("r", "second", second);
  EXPECT_TRUE(second.done);
  EXPECT_EQ(second.thread, std::this_thread::get_id());
  EXPECT_EQ(second.seq, 2u);
  EXPECT_EQ(held.size(), 0u);
  // While another append is in flight (its completion held), the next one queues.
  outcome other, third;
  send("q", "other", other);
  send("r", "third", third);
  EXPECT_FALSE(third.done);
  held.run(2);
  ASSERT_TRUE(other.done && third.done);
  EXPECT_EQ(third.seq, 3u);
  // An Idempotency-Key is read from disk: queued even when alone.
  outcome keyed;
  send("r", "keyed", keyed, "k1");
  EXPECT_FALSE(keyed.done);
  held.run(1);
  EXPECT_EQ(keyed.seq, 4u);
  reopen();
  EXPECT_EQ(seqs("r"), (std::vector<uint64_t>{1, 2, 3, 4}));
}

// The committer sleeps without a timeout once the WAL is synced; an inline commit
// that leaves it unsynced again must wake it, or nothing syncs until the next
// queued write.
TEST_F(StoreTest, RelaxedInlineAppendIsSyncedOnTheInterval) {
  store_.reset();
  opts_.mode = durability::relaxed;
  opts_.relaxed_sync_interval = std::chrono::milliseconds(20);
  open();
  ASSERT_TRUE(append("s", {"first"}));  // by the committer
  ASSERT_TRUE(test::wait_until([&] { return metric("engram_storage_wal_syncs_total") == 1; }));
  ASSERT_TRUE(append("s", {"inline"}));
  EXPECT_EQ(metric("engram_storage_inline_commits_total"), 1);
  EXPECT_TRUE(test::wait_until([&] { return metric("engram_storage_wal_syncs_total") == 2; }))
      << "the inline commit's write was not synced";
}

// An append that may fill the memtable is left to the committer thread: switching
// memtables (a new WAL file, a flush) is no work for an I/O thread.
TEST_F(StoreTest, RelaxedAppendNearAFullMemtableIsLeftToTheCommitter) {
  store_.reset();
  opts_.mode = durability::relaxed;
  open();
  store_.reset();
  opts_.write_buffer_bytes = 1 << 20;  // open() sets 4 MiB: reopen by hand with 1 MiB
  auto s = store::open(opts_, registry_.get(), clock_, nullptr);
  ASSERT_TRUE(s) << s.error().message;
  store_ = std::move(*s);
  store_->set_publisher(&pub_);
  ASSERT_TRUE(append("m", {"start"}));
  const std::string big(50 * 1024, 'm');
  constexpr int n = 40;  // ~2 MiB: the log's memtable fills about twice
  for (int i = 0; i < n; ++i) ASSERT_TRUE(append("m", {big}));
  const double inlined = metric("engram_storage_inline_commits_total");
  EXPECT_GT(inlined, 0);
  EXPECT_LT(inlined, n) << "every append was committed inline, the memtable's fill never checked";
  EXPECT_EQ(seqs("m").size(), size_t(n + 1));
}

// While the committer commits a group (held here inside publish(), commit_mu held),
// an append with nothing else in flight queues behind it: never committed beside it.
TEST_F(StoreTest, RelaxedAppendWaitsBehindAGroupBeingCommitted) {
  store_.reset();
  opts_.mode = durability::relaxed;
  open();
  ASSERT_TRUE(append("o", {"start"}));  // a new context: by the committer
  EXPECT_EQ(metric("engram_storage_inline_commits_total"), 0);
  ASSERT_TRUE(append("o", {"alone"}));  // cached, nothing in flight: inline
  EXPECT_EQ(metric("engram_storage_inline_commits_total"), 1);
  pub_.close_gate();
  std::atomic<bool> patched = false;
  store_->update_context({"o", [](api::Context& c) { c.set_display_name("O"); }},
                         [&](auto r) { patched = r.has_value(); });
  pub_.wait_calls(3);  // the committer is inside publish(), holding commit_mu
  std::atomic<uint64_t> seq = 0;
  store_->append(append_request{"o", {unit("behind")}}, [&](model::result<append_result> r) {
    ASSERT_TRUE(r) << r.error().message;
    seq = r->units.at(0).seq();
  });
  EXPECT_EQ(seq, 0u) << "committed beside a group in progress";
  pub_.open_gate();
  ASSERT_TRUE(test::wait_until([&] { return seq != 0 && patched; }, std::chrono::seconds(10)));
  EXPECT_EQ(seq, 4u);  // start 1, alone 2, the update's event 3
  EXPECT_EQ(metric("engram_storage_inline_commits_total"), 1);
  reopen();
  EXPECT_EQ(seqs("o"), (std::vector<uint64_t>{1, 2, 4}));  // 3 is the update event, not a unit
}

// An append made on an I/O thread is answered on that thread: the executor is told
// which one (model::this_io_thread), and one group's answers for one thread come in
// one hand-off. Requests from other threads go to any thread (-1), one by one.
TEST_F(StoreTest, AnswersGoBackToTheIOThreadThatAskedOneHandOffPerGroup) {
  struct record {
    std::mutex mu;
    std::vector<int> homes;  // one per hand-off
  };
  auto rec = std::make_shared<record>();  // the executor may outlive a failed assertion
  completions_ = [rec](int home, std::function<void()> f) {
    {
      std::lock_guard lock(rec->mu);
      rec->homes.push_back(home);
    }
    f();  // on the committer: where it runs is the server's business (server::post)
  };
  store_.reset();
  opts_.mode = durability::sync;  // every append queued for the committer
  open();
  auto homes = [&] {
    std::lock_guard lock(rec->mu);
    return std::exchange(rec->homes, {});
  };
  ASSERT_TRUE(append("h", {"start"}));  // from this thread: not an I/O thread
  EXPECT_EQ(homes(), std::vector<int>{-1});
  pub_.close_gate();
  auto held = append_async("h", {"held"});  // the committer waits inside publish()
  pub_.wait_calls(2);
  constexpr int n = 3;
  std::vector<std::future<model::result<append_result>>> queued;
  for (const int io : {1, 2}) {  // threads calling themselves I/O threads 1 and 2 queue n appends each
    std::thread([&, io] {
      model::this_io_thread = io;
      for (int i = 0; i < n; ++i) queued.push_back(append_async("h", {"q" + std::to_string(io) + std::to_string(i)}));
    }).join();
  }
  pub_.open_gate();
  ASSERT_TRUE(held.get());
  for (auto& f : queued) ASSERT_TRUE(f.get());
  // "held" on its own, then the group of 2n: one hand-off per thread.
  EXPECT_EQ(homes(), (std::vector<int>{-1, 1, 2}));
  EXPECT_EQ(seqs("h").size(), size_t(2 * n + 2));
  store_.reset();
}

TEST_F(StoreTest, ListsContextsInIdOrderWithPaging) {
  for (const auto* id : {"b", "a", "c", "a/b"}) ASSERT_TRUE(append(id, {"x"}));
  auto page = store_->list_contexts("", 2);
  ASSERT_TRUE(page);
  ASSERT_EQ(page->contexts.size(), 2u);
  EXPECT_EQ(page->contexts[0].id(), "a");
  EXPECT_EQ(page->contexts[1].id(), "a/b");
  EXPECT_TRUE(page->more);
  auto rest = store_->list_contexts("a/b", 10);
  ASSERT_EQ(rest->contexts.size(), 2u);
  EXPECT_EQ(rest->contexts[1].id(), "c");
  EXPECT_FALSE(rest->more);
}

TEST_F(StoreTest, ListsContextsByPrefixWithPaging) {
  for (const auto* id : {"team/b", "team", "teams", "team/a", "tea", "u"}) ASSERT_TRUE(append(id, {"x"}));
  auto ids = [](const context_page& p) {
    std::vector<std::string> out;
    for (const auto& c : p.contexts) out.push_back(c.id());
    return out;
  };
  auto all = store_->list_contexts("", 10, "team");
  ASSERT_TRUE(all);
  EXPECT_EQ(ids(*all), (std::vector<std::string>{"team", "team/a", "team/b", "teams"}));
  EXPECT_FALSE(all->more);
  auto first = store_->list_contexts("", 2, "team/");
  ASSERT_TRUE(first);
  EXPECT_EQ(ids(*first), (std::vector<std::string>{"team/a", "team/b"}));
  EXPECT_FALSE(first->more);  // "teams" does not match: no further page
  auto after = store_->list_contexts("team/a", 10, "team");
  ASSERT_TRUE(after);
  EXPECT_EQ(ids(*after), (std::vector<std::string>{"team/b", "teams"}));
  auto none = store_->list_contexts("", 10, "zz");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->contexts.empty());
}

}  // namespace
}  // namespace engram::storage
