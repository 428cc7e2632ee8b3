// The indexer thread: compares the logs with the index at start-up (scan), then
// follows them (follow): reads new events back from storage, writes documents
// into the active shard and commits in batches. The only thread that writes the
// index; it starts and joins merges (shards.cpp).

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "search/index_impl.hpp"
#include "search/yield.hpp"
#include "search/terms.hpp"
#include "storage/store.hpp"

namespace engram::search {
namespace {

using model::errc;
using model::fail;
using detail::describe;

std::string position_key(std::string_view context_id) { return bool_term("p:", context_id); }
// In the meta database: the context's documents before this seq are gone from every shard.
std::string purge_key(std::string_view context_id) { return bool_term("x:", context_id); }

// Deletes the context's documents with a seq before `first_seq` from one shard.
uint64_t delete_before(Xapian::WritableDatabase& db, const std::string& context_id, uint64_t first_seq) {
  if (first_seq <= 1 || db.get_doccount() == 0) return 0;
  Xapian::Enquire enquire(db);
  enquire.set_weighting_scheme(Xapian::BoolWeight());
  enquire.set_query(Xapian::Query(Xapian::Query::OP_FILTER, Xapian::Query(context_term(context_id)),
                                  Xapian::Query(Xapian::Query::OP_VALUE_LE, seq_slot, sortable_u64(first_seq - 1))));
  const auto found = enquire.get_mset(0, db.get_doccount());
  std::vector<Xapian::docid> gone;
  gone.reserve(found.size());
  for (auto it = found.begin(); it != found.end(); ++it) gone.push_back(*it);
  for (const auto id : gone) db.delete_document(id);
  return gone.size();
}

}  // namespace

void index::impl::release_commit_hold() {
  if (--starved_queries > 0) return;
  { std::lock_guard lock(mu); }  // the indexer is before its wait (and sees 0) or in it
  cv.notify_one();
}

// Linux: nice is per thread.
void detail::lower_priority(int nice) {
  if (nice <= 0) return;
  if (::setpriority(PRIO_PROCESS, pid_t(::syscall(SYS_gettid)), nice) != 0)
    spdlog::warn("search: cannot set the indexer's nice value to {}: {}", nice, std::strerror(errno));
}

void index::impl::run_indexer() {
  detail::lower_priority(opts.indexer_nice);
  int rebuilds = 0;
  for (;;) {
    auto ok = guarded_indexing();
    if (ok) return;  // closed
    spdlog::error("search: index error: {}", ok.error().message);
    if (!restart_after_error(++rebuilds, ok.error().message)) return;
  }
}

// scan() then follow() until close(). The indexer's boundary with Xapian: its
// exceptions (and allocation failures) become errors here.
model::status index::impl::guarded_indexing() {
  try {
    if (auto ok = scan(); !ok) return ok;
    return follow();
  } catch (const Xapian::Error& e) {
    return fail(errc::internal, describe(e));
  } catch (const std::exception& e) {
    return fail(errc::internal, e.what());
  }
}

bool index::impl::restart_after_error(int rebuilds, const std::string& why) {
  if (rebuilds > 3) return give_up("gave up after repeated index errors; last: " + why);
  spdlog::warn("search: rebuilding the index from the logs");
  if (auto ok = recreate(); !ok) return give_up(ok.error().message);
  return !stopping_now();
}

bool index::impl::give_up(const std::string& why) {
  spdlog::critical("search: {}; searches answer 503 until a restart", why);
  std::lock_guard lock(mu);
  failure = why;
  state = index_state::failed;
  return false;
}

bool index::impl::stopping_now() {
  std::lock_guard lock(mu);
  return stopping;
}

// The last seq indexed for a context: the highest any shard records (a merge
// keeps the highest of its inputs').
uint64_t index::impl::position(const std::string& context_id) {
  auto it = positions.find(context_id);
  if (it != positions.end()) return it->second;
  const auto key = position_key(context_id);
  uint64_t pos = read_sortable_u64(writer->get_metadata(key));
  for (const auto& db : position_sources) pos = std::max(pos, read_sortable_u64(db.get_metadata(key)));
  indexed_events += pos;
  positions.emplace(context_id, pos);
  return pos;
}

// Compares every context's head with the index's position: what the index lacks
// becomes pending work. Runs at start and after a rebuild.
model::status index::impl::scan() {
  state = index_state::catching_up;
  catch_up_started = last_progress_log = steady::now();
  position_sources.clear();
  for (const auto& sh : sealed) position_sources.emplace_back(sh->dir);
  std::string after;
  for (;;) {
    auto page = store.list_contexts(after, 1000);
    if (!page) return fail(page.error().code, "listing contexts: " + page.error().message);
    for (const auto& c : page->contexts) {
      const uint64_t pos = position(c.id());
      std::lock_guard lock(mu);
      auto& known = heads[c.id()];
      if (c.head_seq() > known) {
        committed_events += c.head_seq() - known;
        known = c.head_seq();
      }
      if (pos < known) {
        auto& p = pending[c.id()];
        p = std::max(p, known);
      }
    }
    if (!page->more || page->contexts.empty()) break;
    after = page->contexts.back().id();
  }
  position_sources.clear();  // contexts seen later are new: only the active shard can know them
  if (auto ok = check_purges(); !ok) return ok;
  const uint64_t backlog = lag();
  spdlog::info("search: index at {} holds {} units; {} log events to index", opts.index_dir,
               documents.load(), backlog);
  {
    std::lock_guard lock(mu);
    update_lag_metric();
  }
  if (backlog == 0) state = index_state::ready;
  return {};
}

// Follows the logs until close(): index whatever is pending, commit at most every
// commit_interval (sooner when a batch is full), sleep when there is nothing.
model::status index::impl::follow() {
  // Sealed shards found at start-up (a stop aborted their merge) merge now, not
  // at the first commit: an idle server would otherwise never merge them.
  if (auto ok = manage_tiers(); !ok) return ok;
  std::unordered_map<std::string, uint64_t> cuts;
  for (;;) {
    std::unordered_map<std::string, uint64_t> work;
    {
      std::unique_lock lock(mu);
      // A finished merge wakes the indexer too: the next one starts even when
      // no writes arrive.
      auto must_wake = [&] { return stopping || !purges.empty() || merge_done; };
      if (uncommitted_events == 0) {
        cv.wait(lock, [&] { return must_wake() || !pending.empty(); });
      } else {
        // Waiting for the commit: what arrives meanwhile is read in one round at
        // the commit (one wake-up instead of one per event, on the cores that
        // serve requests), unless enough piles up to start reading now.
        // A hold for starved queries ends early when the last of them does.
        const bool held = starved_queries > 0;
        holding = true;
        cv.wait_until(lock, last_commit + (held ? max_commit_hold : opts.commit_interval), [&] {
          return must_wake() || unread_events >= detail::wake_batch || (held && starved_queries == 0);
        });
        holding = false;
      }
      if (stopping) break;
      metrics.rounds->Increment();
      work.swap(pending);
      unread_events = 0;
      cuts.swap(purges);
    }
    const bool overloaded = over_yield_backlog(opts, lag());
    const auto round_started = steady::now();
    const uint64_t committed_before = committed_events.load();
    const uint64_t taken_before = uncommitted_events;
    const bool read_error =
        !work.empty() && !index_some(work, overloaded ? detail::yield_round_units : opts.max_batch_units);
    const uint64_t taken = uncommitted_events - taken_before;
    // After indexing: documents read from the logs before a removal go too.
    if (!cuts.empty()) {
      if (auto ok = purge(cuts); !ok) return ok;
      cuts.clear();
    }
    const bool held = starved_queries > 0 && steady::now() < last_commit + max_commit_hold;
    if (uncommitted_events > 0 && !held &&
        (steady::now() >= last_commit + opts.commit_interval || uncommitted_ts.size() >= opts.max_batch_units)) {
      if (auto ok = commit(); !ok) return ok;  // manages the tiers too
    } else if (merge_done) {
      if (auto ok = manage_tiers(); !ok) return ok;
    }
    if (read_error) {
      std::unique_lock lock(mu);  // storage refused a read: retry later
      cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return stopping; });
    } else {
      // The round's whole work (reads, documents, purges, commit) against what
      // arrived meanwhile.
      yield_if_overloaded(steady::now() - round_started, committed_events.load() - committed_before, taken);
    }
  }
  if (uncommitted_events > 0) return commit();
  return {};
}

// Under overload the indexer cannot keep up whatever share of the CPU it takes;
// taking a core's share cost the writes 25-50% of their rate on two cores
// (bench/README.md, "The indexer yields under overload"). So while the backlog
// is large and still growing, it takes about yield_percent of its time, in short
// rounds; the backlog is indexed at full speed once the writes slow down.
bool over_yield_backlog(const options& opts, uint64_t backlog) {
  return opts.yield_backlog > 0 && opts.yield_percent > 0 && opts.yield_percent < 100 &&
         backlog > opts.yield_backlog;
}

std::chrono::nanoseconds yield_pause(const options& opts, std::chrono::nanoseconds worked, uint64_t arrived,
                                     uint64_t taken, uint64_t backlog) {
  if (!over_yield_backlog(opts, backlog) || taken == 0 || arrived < taken) return {};
  return std::min<std::chrono::nanoseconds>(worked * (100 - opts.yield_percent) / opts.yield_percent, max_yield);
}

void index::impl::yield_if_overloaded(steady::duration worked, uint64_t arrived, uint64_t taken) {
  const auto pause = yield_pause(opts, worked, arrived, taken, lag());
  if (pause <= steady::duration::zero()) return;
  const auto paused = steady::now();
  std::unique_lock lock(mu);
  pausing = true;
  cv.wait_for(lock, pause, [&] { return stopping; });
  pausing = false;
  metrics.yield_seconds->Increment(std::chrono::duration<double>(steady::now() - paused).count());
}

// Indexes up to `budget` units of the work; what is left goes back to
// `pending`. False when a storage read failed.
bool index::impl::index_some(const std::unordered_map<std::string, uint64_t>& work, size_t budget) {
  Xapian::TermGenerator generator;
  generator.set_stemmer(Xapian::Stem(opts.language));
  generator.set_flags(Xapian::TermGenerator::FLAG_CJK_NGRAM);
  bool ok = true;
  std::vector<std::pair<std::string, uint64_t>> leftover;
  uint64_t left = 0;  // events of the leftover
  for (const auto& [context_id, head] : work) {
    uint64_t pos = position(context_id);
    const uint64_t start = pos;
    while (pos < head && budget > 0 && ok) {
      auto events =
          store.read_events(context_id, pos, std::min<uint64_t>({detail::read_chunk, budget, head - pos}));
      if (!events) {
        spdlog::error("search: reading context '{}' after seq {}: {}", context_id, pos, events.error().message);
        ok = false;
        break;
      }
      if (events->empty()) break;  // cannot happen while head is a committed seq
      for (const auto& ev : *events) {
        if (ev.has_work_unit()) {
          const auto& unit = ev.work_unit();
          // add, not replace: a unit past the context's position is in no shard. The
          // position commits with the documents, storage refuses a second unit with
          // an id, and a deleted context's documents (whose ids an import may bring
          // back) are purged by context, not by id. replace_document would look the
          // id up in every posting list first.
          writer->add_document(make_document(unit, generator, opts.max_text_bytes));
          uncommitted_ts.push_back(unit.ts_ns());
          --budget;
        }
        pos = ev.seq();
      }
    }
    if (pos != start) {
      positions[context_id] = pos;
      writer->set_metadata(position_key(context_id), sortable_u64(pos));
      uncommitted_events += pos - start;
    }
    if (pos < head) {
      leftover.emplace_back(context_id, head);
      left += head - pos;
    }
  }
  if (!leftover.empty()) {
    std::lock_guard lock(mu);
    for (auto& [context_id, head] : leftover) {
      auto& p = pending[context_id];
      p = std::max(p, head);
    }
    unread_events += left;
  }
  return ok;
}

model::status index::impl::check_purges() {
  auto trimmed = store.trimmed_contexts();
  if (!trimmed) return fail(trimmed.error().code, "listing trimmed contexts: " + trimmed.error().message);
  if (trimmed->empty()) return {};
  Xapian::Database m(meta_dir());
  std::lock_guard lock(mu);
  for (const auto& [context_id, first_seq] : *trimmed)
    if (read_sortable_u64(m.get_metadata(purge_key(context_id))) < first_seq) {
      auto& cut = purges[context_id];
      cut = std::max(cut, first_seq);
    }
  return {};
}

// Order matters for crashes: the documents leave the sealed shards and the active
// shard, each committed, before the meta database records the cut; a crash before
// that record repeats the purge at start-up (it is idempotent).
model::status index::impl::purge(const std::unordered_map<std::string, uint64_t>& cuts) {
  if (uncommitted_events > 0)
    if (auto ok = commit(); !ok) return ok;
  // The merger reads sealed shards: let it finish (an aborted merge starts over,
  // and frequent purges would then starve it).
  if (merger.joinable()) {
    merger.join();
    if (auto ok = install_merge(); !ok) return ok;
  }
  uint64_t removed = 0, removed_elsewhere = 0;
  for (const auto& sh : sealed) {
    Xapian::WritableDatabase db(sh->dir, Xapian::DB_OPEN | sync_flag());
    uint64_t n = 0;
    for (const auto& [context_id, first_seq] : cuts) n += delete_before(db, context_id, first_seq);
    db.commit();
    sh->documents -= std::min(sh->documents, n);
    removed_elsewhere += n;
  }
  for (const auto& [context_id, first_seq] : cuts) removed += delete_before(*writer, context_id, first_seq);
  writer->commit();
  {
    Xapian::WritableDatabase m(meta_dir(), Xapian::DB_OPEN | sync_flag());
    for (const auto& [context_id, first_seq] : cuts) m.set_metadata(purge_key(context_id), sortable_u64(first_seq));
    m.commit();
  }
  documents_elsewhere -= std::min(documents_elsewhere, removed_elsewhere);
  documents = documents_elsewhere + writer->get_doccount();
  metrics.documents->Set(double(documents));
  if (removed + removed_elsewhere > 0)
    spdlog::debug("search: removed {} documents of {} contexts", removed + removed_elsewhere, cuts.size());
  return manage_tiers();
}

model::status index::impl::commit() {
  const auto t0 = steady::now();
  writer->commit();
  last_commit = steady::now();
  metrics.commit_seconds->Observe(std::chrono::duration<double>(last_commit - t0).count());
  const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
  for (const int64_t ts : uncommitted_ts) metrics.delay->Observe(double(std::max<int64_t>(0, now_ns - ts)) / 1e9);
  metrics.documents_indexed->Increment(double(uncommitted_ts.size()));
  metrics.commits->Increment();
  const uint64_t events = uncommitted_events;
  uncommitted_ts.clear();
  uncommitted_events = 0;
  documents = documents_elsewhere + writer->get_doccount();
  metrics.documents->Set(double(documents));
  // Seal and start merges before the lag shows the batch: a status that shows lag
  // 0 already counts the merge this commit starts in pending_merges.
  if (auto ok = manage_tiers(); !ok) return ok;
  indexed_events += events;
  {
    std::lock_guard lock(mu);
    update_lag_metric();
  }
  if (state == index_state::catching_up) {
    const uint64_t remaining = lag();
    const auto now = steady::now();
    if (remaining == 0) {
      state = index_state::ready;
      spdlog::info("search: index caught up in {:.1f} s ({} units)",
                   std::chrono::duration<double>(now - catch_up_started).count(), documents.load());
    } else if (now - last_progress_log >= std::chrono::seconds(2)) {
      last_progress_log = now;
      spdlog::info("search: catching up: {} units indexed, {} log events to go", documents.load(), remaining);
    }
  }
  return {};
}

}  // namespace engram::search
