// The index's shards: opening and checking them at start-up, rebuilding, sealing
// the active shard, merging sealed shards into the base, and publishing the view
// queries search. Runs on the indexer thread (open_index: the caller of
// index::open) and on the merge thread (merge).

#include <fcntl.h>
#include <malloc.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "model/thread_name.hpp"
#include "search/index_impl.hpp"
#include "search/terms.hpp"

namespace engram::search {
namespace {

using model::errc;
using model::fail;
using detail::describe;

// fsync every file of a directory, then the directory.
void sync_directory(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file()) continue;
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
  }
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

template <class Change>
void index::impl::publish(Change&& change, bool locked) {
  auto next = std::make_shared<view>();
  std::unique_lock lock(view_mu, std::defer_lock);
  if (!locked) lock.lock();
  if (current_view) *next = *current_view;
  next->epoch = current_view ? current_view->epoch + 1 : 1;
  change(*next);
  current_view = std::move(next);
  std::lock_guard readers_lock(readers_mu);
  idle_readers.clear();  // they hold the old view (and its shards) alive
}

// ---- opening -------------------------------------------------------------------

model::status index::impl::open_index() {
  using namespace detail;
  std::error_code ec;
  const std::filesystem::path dir(opts.index_dir);
  const bool existed = std::filesystem::exists(dir, ec);
  std::string reason;
  std::vector<uint64_t> recents;
  if (existed && std::filesystem::exists(dir / "iamglass", ec)) reason = "it has an older layout";
  try {
    std::filesystem::create_directories(dir, ec);
    if (reason.empty()) {
      Xapian::WritableDatabase b(base_dir(), Xapian::DB_CREATE_OR_OPEN);
      if (existed) {
        const auto unsynced = b.get_metadata(std::string(meta_unsynced));
        if (b.get_metadata(std::string(meta_schema)) != schema_version) reason = "it has another schema";
        else if (b.get_metadata(std::string(meta_store)) != store_identity) reason = "it was built from another store";
        else if (b.get_metadata(std::string(meta_language)) != opts.language) reason = "it was built for another language";
        else if (!unsynced.empty() && unsynced != boot_id)
          reason = "the machine restarted while it held writes that were not fsynced (search.fsync: false)";
      }
      for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        const auto name = entry.path().filename().string();
        if (!name.starts_with("recent.")) continue;
        const uint64_t n = std::strtoull(name.c_str() + 7, nullptr, 10);
        // A shard merged just before a crash is already in the base.
        if (b.get_metadata("merged." + std::to_string(n)) == "1") std::filesystem::remove_all(entry.path(), ec);
        else recents.push_back(n);
      }
      b.close();
    }
  } catch (const Xapian::DatabaseLockError& e) {
    return fail(errc::unavailable, "search index " + opts.index_dir + " is in use by another process (" +
                                       e.get_msg() + ")");
  } catch (const Xapian::Error& e) {
    reason = "it cannot be opened (" + describe(e) + ")";
  } catch (const std::filesystem::filesystem_error& e) {
    return fail(errc::unavailable, "search index " + opts.index_dir + ": " + e.what());
  }
  if (!existed) {
    spdlog::info("search: no index at {}; building it from the logs", opts.index_dir);
  } else if (!reason.empty()) {
    spdlog::warn("search: replacing the index at {} because {}; rebuilding it from the logs", opts.index_dir,
                 reason);
    return recreate();
  }
  std::sort(recents.begin(), recents.end());
  try {
    start_writing(recents);
  } catch (const Xapian::Error& e) {
    spdlog::warn("search: the index at {} cannot be used ({}); rebuilding it from the logs", opts.index_dir,
                 describe(e));
    return recreate();
  }
  return {};
}

// Records what the index is in the base (a synced commit), seals the recent
// shards left by the last run (they are merged in the background) and starts a
// new active shard, written without fsync when search.fsync is off.
void index::impl::start_writing(const std::vector<uint64_t>& recents) {
  using namespace detail;
  {
    Xapian::WritableDatabase b(base_dir(), Xapian::DB_CREATE_OR_OPEN);
    b.set_metadata(std::string(meta_schema), std::string(schema_version));
    b.set_metadata(std::string(meta_store), store_identity);
    b.set_metadata(std::string(meta_language), opts.language);
    b.set_metadata(std::string(meta_unsynced), opts.fsync ? std::string() : boot_id);
    b.commit();
    documents_elsewhere = b.get_doccount();
    b.close();
  }
  base = std::make_shared<shard>(base_dir(), 0);
  sealed.clear();
  for (const uint64_t n : recents) {
    sealed.push_back(std::make_shared<shard>(recent_dir(n), n));
    documents_elsewhere += Xapian::Database(sealed.back()->dir).get_doccount();
  }
  sealed_count = sealed.size();
  const uint64_t next = recents.empty() ? 1 : recents.back() + 1;
  active = std::make_shared<shard>(recent_dir(next), next);
  writer.emplace(active->dir, Xapian::DB_CREATE_OR_OPEN | sync_flag());
  documents = documents_elsewhere + writer->get_doccount();
  metrics.documents->Set(double(documents));
  publish([&](view& v) {
    v.shards = {base};
    v.shards.insert(v.shards.end(), sealed.begin(), sealed.end());
    v.shards.push_back(active);
  });
}

// After the last commit of a clean shutdown: make everything durable, then clear
// the unsynced mark (itself with a synced commit).
void index::impl::finish_writing() {
  stop_merge();
  if (writer) writer->close();
  writer.reset();
  if (opts.fsync) return;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(opts.index_dir, ec))
    if (entry.is_directory()) sync_directory(entry.path().string());
  Xapian::WritableDatabase b(base_dir(), Xapian::DB_OPEN);
  b.set_metadata(std::string(detail::meta_unsynced), "");
  b.commit();
  b.close();
}

// Readers of the old index keep their open files until they finish.
model::status index::impl::recreate() {
  stop_merge();
  try {
    if (writer) writer->close();
  } catch (const Xapian::Error&) {
    // Closing a broken index may fail; it is being deleted anyway.
  }
  writer.reset();
  publish([](view& v) { v.shards.clear(); });
  base.reset();
  active.reset();
  sealed.clear();
  std::error_code ec;
  std::filesystem::remove_all(opts.index_dir, ec);
  if (ec) return fail(errc::unavailable, "cannot remove search index " + opts.index_dir + ": " + ec.message());
  std::filesystem::create_directories(opts.index_dir, ec);
  try {
    start_writing({});
  } catch (const Xapian::Error& e) {
    return fail(errc::unavailable, "cannot create search index " + opts.index_dir + ": " + describe(e));
  }
  positions.clear();
  uncommitted_ts.clear();
  uncommitted_events = 0;
  indexed_events = 0;
  return {};
}

// ---- tiers ---------------------------------------------------------------------

// When the active shard is full, seal it and start a new one; merge sealed shards
// into the base one at a time, oldest first. Fails when the last merge failed.
model::status index::impl::manage_tiers() {
  if (merger.joinable() && merge_done) {
    merger.join();
    merge_done = false;
    if (!merge_error.empty()) return fail(errc::internal, "merging into the base: " + merge_error);
    sealed.erase(sealed.begin());
    merging.reset();
  }
  // Sealed shards queue for the merger (searched meanwhile); past a few, the
  // active shard grows instead, so queries never span too many shards.
  if (sealed.size() < detail::max_sealed_shards && writer->get_doccount() >= opts.recent_units) {
    documents_elsewhere += writer->get_doccount();
    writer->close();
    sealed.push_back(active);
    active = std::make_shared<shard>(recent_dir(active->number + 1), active->number + 1);
    writer.emplace(active->dir, Xapian::DB_CREATE_OR_OPEN | sync_flag());
    publish([&](view& v) { v.shards.push_back(active); });
  }
  sealed_count = sealed.size();
  if (!merger.joinable() && !sealed.empty()) {
    merging = sealed.front();
    merge_done = false;
    abort_merge = false;
    merge_error.clear();
    merger = std::thread([this, src = merging] {
      model::name_this_thread("index-merge");
      merge(src);
    });
  }
  return {};
}

// Copies a sealed shard into the base in one transaction (so a crash leaves it
// wholly in one place), marks it merged, then shows the base without it.
void index::impl::merge(const std::shared_ptr<shard>& src) {
  // Background work: yield the CPU to the indexer and the request threads, so
  // freshness holds while a merge runs.
  detail::lower_priority(std::max(10, opts.indexer_nice));
  try {
    const auto t0 = steady::now();
    Xapian::Database in(src->dir);
    Xapian::WritableDatabase out(base_dir(), Xapian::DB_OPEN | sync_flag());
    out.begin_transaction(true);
    for (auto it = in.postlist_begin(""); it != in.postlist_end(""); ++it) {
      if (abort_merge) {
        out.cancel_transaction();
        finish_merge();
        return;
      }
      // The base cannot hold these units yet: a shard is merged once (the
      // transaction and its "merged" mark commit together).
      out.add_document(in.get_document(*it));
    }
    for (auto k = in.metadata_keys_begin("p:"); k != in.metadata_keys_end("p:"); ++k) {
      const auto pos = in.get_metadata(*k);
      if (read_sortable_u64(pos) > read_sortable_u64(out.get_metadata(*k))) out.set_metadata(*k, pos);
    }
    out.set_metadata("merged." + std::to_string(src->number), "1");
    {
      std::unique_lock lock(view_mu);
      out.commit_transaction();
      publish([&](view& v) { std::erase(v.shards, src); }, true);
    }
    out.close();
    src->retired = true;
    spdlog::info("search: merged {} units of {} into the base in {:.1f} s", in.get_doccount(), src->dir,
                  std::chrono::duration<double>(steady::now() - t0).count());
    // Xapian holds the whole transaction in memory (tens of MiB per merge). It is
    // freed now, but glibc keeps freed memory in this thread's arena; give it back,
    // or RSS steps up at every merge (bench/README.md "Soak").
    ::malloc_trim(0);
  } catch (const Xapian::Error& e) {
    merge_error = describe(e);
  } catch (const std::exception& e) {
    merge_error = e.what();
  }
  finish_merge();
}

void index::impl::finish_merge() {
  {
    std::lock_guard lock(mu);
    merge_done = true;
  }
  cv.notify_all();
}

void index::impl::stop_merge() {
  abort_merge = true;
  if (merger.joinable()) merger.join();
  merge_done = false;
  merging.reset();
}

}  // namespace engram::search
