// internal/locks over a real RocksDB store in a temp dir, on a manual clock: lease
// time moves only when a test advances it and calls expire_due().
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <future>
#include <thread>

#include "locks/manager.hpp"
#include "storage/store.hpp"
#include "support/manual_clock.hpp"
#include "support/test_support.hpp"

namespace engram::locks {
namespace {

using namespace std::chrono_literals;
using locks_result = model::result<std::vector<api::Lock>>;
using lock_result = model::result<api::Lock>;

// The value a completion delivers, or a test failure when none comes in time.
template <class T>
T await(std::future<T>& f) {
  if (f.wait_for(10s) != std::future_status::ready) {
    ADD_FAILURE() << "no completion within 10 s";
    return T(std::unexpected(model::error{model::errc::internal, "no completion"}));
  }
  return f.get();
}

template <class T>
bool ready(std::future<T>& f) {
  return f.wait_for(0s) == std::future_status::ready;
}

class LockManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { open(); }
  void TearDown() override {
    join_probes();
    close();
  }

  // The store's completions run inline (on the committer thread, or at once on the
  // calling thread when it refuses a write): the harshest executor for a caller
  // that holds a lock while calling it.
  void open() {
    auto s = test::open_test_store(dir_, clock_);
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    registry_ = std::make_unique<prometheus::Registry>();
    mgr_ = std::make_unique<manager>(opts_, clock_, registry_.get());
    ASSERT_TRUE(mgr_->attach(store_.get()));
  }
  void close() {
    mgr_.reset();
    store_.reset();
  }

  std::future<locks_result> acquire_async(std::vector<std::string> resources, std::string agent,
                                          std::chrono::milliseconds ttl, std::chrono::milliseconds wait = 0ms) {
    auto p = std::make_shared<std::promise<locks_result>>();
    auto f = p->get_future();
    mgr_->acquire({std::move(resources), std::move(agent), ttl, wait, ""},
                  [p](locks_result r) { p->set_value(std::move(r)); });
    return f;
  }
  locks_result acquire(std::string resource, std::string agent, std::chrono::milliseconds ttl = 0ms) {
    auto f = acquire_async({std::move(resource)}, std::move(agent), ttl);
    return await(f);
  }
  lock_result renew(const api::Lock& l, std::chrono::milliseconds ttl) {
    auto p = std::make_shared<std::promise<lock_result>>();
    auto f = p->get_future();
    mgr_->renew(l.resource_path(), l.holder_agent(), l.lock_id(), ttl,
                [p](lock_result r) { p->set_value(std::move(r)); });
    return await(f);
  }
  model::status release(const api::Lock& l) {
    auto p = std::make_shared<std::promise<model::status>>();
    auto f = p->get_future();
    mgr_->release(l.resource_path(), l.holder_agent(), l.lock_id(), "", [p](model::status r) { p->set_value(r); });
    return await(f);
  }
  // The leases on disk, once everything decided so far is committed (the committer
  // is FIFO, so a write that completes comes after all earlier ones).
  std::vector<api::Lock> persisted() {
    EXPECT_TRUE(acquire("zz-barrier", "barrier"));
    auto loaded = store_->load_locks();
    EXPECT_TRUE(loaded);
    std::vector<api::Lock> out;
    for (auto& l : loaded->first)
      if (l.resource_path() != "zz-barrier") out.push_back(l);
    return out;
  }

  // Whether another thread can use the manager right now. Called from a completion:
  // false means the completion runs under the manager's mutex. The probe thread is
  // joined at the end of the test, after the mutex is free again.
  bool usable(manager& m) {
    auto p = std::make_shared<std::promise<void>>();
    auto f = p->get_future();
    std::lock_guard lock(probes_mu_);
    probes_.emplace_back([&m, p] {
      m.list("", "");
      p->set_value();
    });
    return f.wait_for(5s) == std::future_status::ready;
  }
  void join_probes() {
    std::lock_guard lock(probes_mu_);
    for (auto& t : probes_) t.join();
    probes_.clear();
  }

  test::temp_dir dir_;
  std::shared_ptr<test::manual_clock> clock_ = std::make_shared<test::manual_clock>();
  std::unique_ptr<prometheus::Registry> registry_;
  options opts_;
  std::unique_ptr<storage::store> store_;
  std::unique_ptr<manager> mgr_;
  std::mutex probes_mu_;
  std::vector<std::thread> probes_;
};

TEST_F(LockManagerTest, RenewalKeepsALeasePastItsFirstDeadlineThenAWaiterTakesOver) {
  auto a = acquire("short", "a", 1000ms);
  ASSERT_TRUE(a) << a.error().message;
  const api::Lock first = a->front();
  for (int i = 0; i < 5; ++i) {  // 3 s in all, on a 1 s lease
    clock_->advance(600ms);
    mgr_->expire_due();
    auto r = renew(first, 1000ms);
    ASSERT_TRUE(r) << "renewal " << i << ": " << r.error().message;
    EXPECT_EQ(r->lock_id(), first.lock_id());
    EXPECT_EQ(r->expires_at_ns(), clock_->now_ns() + 1'000'000'000);
  }
  ASSERT_TRUE(mgr_->get("short"));
  EXPECT_EQ(mgr_->get("short")->holder_agent(), "a");

  auto waiter = acquire_async({"short"}, "b", 0ms, 5000ms);
  clock_->advance(999ms);
  mgr_->expire_due();
  EXPECT_FALSE(ready(waiter)) << "the lease has 1 ms left";
  clock_->advance(1ms);
  mgr_->expire_due();
  auto b = await(waiter);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->front().holder_agent(), "b");
  EXPECT_GT(b->front().fencing_token(), first.fencing_token());

  auto late = renew(first, 1000ms);
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().code, model::errc::conflict);
  EXPECT_NE(late.error().message.find("was lost"), std::string::npos);
}

TEST_F(LockManagerTest, ALeaseNobodyRenewsExpiresAndLeavesTheStore) {
  ASSERT_TRUE(acquire("gone", "c", 200ms));
  ASSERT_TRUE(acquire("kept", "c", 60s));
  clock_->advance(199ms);
  mgr_->expire_due();
  EXPECT_TRUE(mgr_->get("gone"));
  clock_->advance(1ms);
  EXPECT_FALSE(mgr_->get("gone")) << "readers never see an expired lease, reaped or not";
  mgr_->expire_due();
  EXPECT_EQ(mgr_->list("c", "").size(), 1u);
  auto disk = persisted();
  ASSERT_EQ(disk.size(), 1u);
  EXPECT_EQ(disk[0].resource_path(), "kept");
}

TEST_F(LockManagerTest, AWaiterThatRunsOutOfTimeIsRefused) {
  ASSERT_TRUE(acquire("held", "x", 60s));
  auto waiter = acquire_async({"held"}, "y", 0ms, 200ms);
  clock_->advance(199ms);
  mgr_->expire_due();
  EXPECT_FALSE(ready(waiter));
  clock_->advance(1ms);
  mgr_->expire_due();
  auto r = await(waiter);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, model::errc::conflict);
  EXPECT_NE(r.error().message.find("timed out waiting: resource 'held' is locked by agent 'x'"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(mgr_->get("held")->holder_agent(), "x");
}

TEST_F(LockManagerTest, AReleaseIsCommittedBeforeTheGrantItEnables) {
  auto a = acquire("r", "a");
  ASSERT_TRUE(a);
  auto waiter = acquire_async({"r"}, "b", 0ms, 5000ms);
  ASSERT_TRUE(release(a->front()));
  auto b = await(waiter);
  ASSERT_TRUE(b) << b.error().message;
  auto disk = persisted();
  ASSERT_EQ(disk.size(), 1u) << "the release's delete must not erase the new holder's record";
  EXPECT_EQ(disk[0].holder_agent(), "b");
  EXPECT_EQ(disk[0].lock_id(), b->front().lock_id());
}

TEST_F(LockManagerTest, PersistedDeadlinesSurviveARestartOnWallTime) {
  auto a = acquire("r", "a", 10s);
  ASSERT_TRUE(a);
  close();
  clock_->advance(4s);  // the server was down for 4 s
  open();
  ASSERT_TRUE(mgr_->get("r"));
  EXPECT_EQ(mgr_->get("r")->lock_id(), a->front().lock_id());
  clock_->advance(5999ms);
  mgr_->expire_due();
  EXPECT_TRUE(mgr_->get("r"));
  clock_->advance(1ms);
  mgr_->expire_due();
  EXPECT_FALSE(mgr_->get("r"));
  EXPECT_TRUE(persisted().empty());
}

// Every kind of completion, each calling back into the manager the way a client's
// handler may: none may run while the manager's mutex is held.
TEST_F(LockManagerTest, CompletionsRunWithTheMutexReleased) {
  std::atomic<int> under_lock{0}, reentered{0};
  auto check = [&](manager& m, const char* what) {
    if (!usable(m)) {
      ADD_FAILURE() << what << ": the completion ran under the manager's mutex";
      ++under_lock;
      return;
    }
    m.get("r");  // would deadlock under the mutex
    ++reentered;
  };
  auto completed = [&](int n) { return test::wait_until([&] { return reentered + under_lock >= n; }); };

  close();
  opts_.max_locks_per_agent = 1;
  open();
  api::Lock held;
  mgr_->acquire({{"r"}, "a", 60s, 0ms, ""}, [&](locks_result r) {
    EXPECT_TRUE(r);
    if (r) held = r->front();
    check(*mgr_, "grant");
  });
  ASSERT_TRUE(completed(1));
  mgr_->acquire({{"other"}, "a", 0ms, 0ms, ""}, [&](locks_result r) {
    EXPECT_FALSE(r) << "over the per-agent limit";
    check(*mgr_, "per-agent limit");
  });
  mgr_->acquire({{"r"}, "b", 0ms, 0ms, ""}, [&](locks_result r) {
    EXPECT_FALSE(r);
    check(*mgr_, "conflict");
  });
  mgr_->renew("r", "a", "wrong-id", 0ms, [&](lock_result r) {
    EXPECT_FALSE(r);
    check(*mgr_, "lost renewal");
  });
  mgr_->release("nothing", "a", "id", "", [&](model::status r) {
    EXPECT_FALSE(r);
    check(*mgr_, "release of nothing");
  });
  mgr_->release("r", "b", held.lock_id(), "", [&](model::status r) {
    EXPECT_FALSE(r);
    check(*mgr_, "release by another agent");
  });
  mgr_->renew("r", "a", held.lock_id(), 60s, [&](lock_result r) {
    EXPECT_TRUE(r);
    check(*mgr_, "renewal");
  });
  ASSERT_TRUE(completed(7));
  mgr_->acquire({{"r"}, "b", 0ms, 100ms, ""}, [&](locks_result r) {
    EXPECT_FALSE(r) << "timed out";
    check(*mgr_, "waiter time-out");
  });
  clock_->advance(100ms);
  mgr_->expire_due();
  ASSERT_TRUE(completed(8));

  // A store that refuses a write completes at once, on the thread that hands it
  // over; that thread must not be holding the mutex either.
  store_->close();
  mgr_->release("r", "a", held.lock_id(), "", [&](model::status r) {
    EXPECT_FALSE(r) << "the store is closed";
    check(*mgr_, "refused release");
  });
  ASSERT_TRUE(completed(9));

  manager unattached(opts_, clock_, nullptr);
  unattached.acquire({{"r"}, "a", 0ms, 0ms, ""}, [&](locks_result r) {
    EXPECT_FALSE(r) << "not attached";
    check(unattached, "unavailable");
  });
  ASSERT_TRUE(completed(10));
  join_probes();  // before `unattached` goes
  EXPECT_EQ(under_lock, 0);
  EXPECT_EQ(reentered, 10);
}

TEST_F(LockManagerTest, AGrantCompletionMayReleaseAndHandOverAtOnce) {
  auto first = acquire("r", "a");
  ASSERT_TRUE(first);
  auto p = std::make_shared<std::promise<model::status>>();
  auto released = p->get_future();
  // b waits; when granted, b's completion releases at once, which grants c.
  mgr_->acquire({{"r"}, "b", 0ms, 5000ms, ""}, [this, p](locks_result r) {
    ASSERT_TRUE(r);
    mgr_->release("r", "b", r->front().lock_id(), "", [p](model::status s) { p->set_value(s); });
  });
  auto c = acquire_async({"r"}, "c", 0ms, 5000ms);
  ASSERT_TRUE(release(first->front()));
  EXPECT_TRUE(await(released));
  auto granted = await(c);
  ASSERT_TRUE(granted) << granted.error().message;
  EXPECT_EQ(mgr_->get("r")->holder_agent(), "c");
}

}  // namespace
}  // namespace engram::locks
