// The index's shards: opening and checking them at start-up, rebuilding, sealing
// the active shard, merging sealed shards by compaction, and publishing the view
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
#include <fstream>

#include "model/thread_name.hpp"
#include "search/index_impl.hpp"
#include "search/terms.hpp"

namespace engram::search {
namespace {

using model::errc;
using model::fail;
using detail::describe;

constexpr std::string_view shard_prefix = "shard.";

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

void index::impl::publish_shards() {
  auto next = std::make_shared<view>();
  next->shards = sealed;
  if (active) next->shards.push_back(active);
  std::unique_lock lock(view_mu);
  next->epoch = current_view ? current_view->epoch + 1 : 1;
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
  std::vector<std::string> listed;
  if (existed && (std::filesystem::exists(dir / "iamglass", ec) || std::filesystem::exists(dir / "base", ec)))
    reason = "it has an older layout";
  try {
    std::filesystem::create_directories(dir, ec);
    if (reason.empty()) {
      Xapian::WritableDatabase m(meta_dir(), Xapian::DB_CREATE_OR_OPEN);
      const auto schema = m.get_metadata(std::string(meta_schema));
      if (!schema.empty()) {
        const auto unsynced = m.get_metadata(std::string(meta_unsynced));
        if (schema != schema_version) reason = "it has another schema";
        else if (m.get_metadata(std::string(meta_store)) != store_identity) reason = "it was built from another store";
        else if (m.get_metadata(std::string(meta_language)) != opts.language) reason = "it was built for another language";
        else if (!unsynced.empty() && unsynced != boot_id)
          reason = "the machine restarted while it held writes that were not fsynced (search.fsync: false)";
        else if (!std::filesystem::exists(manifest_path(), ec)) reason = "its list of shards is missing";
      }
      const bool has_manifest = std::filesystem::exists(manifest_path(), ec);
      if (schema.empty() && has_manifest) reason = "its metadata is missing";
      m.close();
      std::ifstream in(manifest_path());
      if (has_manifest && !in) reason = "its list of shards cannot be read";
      for (std::string name; std::getline(in, name);) {
        // Canonical names only (shard.<n>, n without leading zeros), each once.
        const uint64_t n = std::strtoull(name.c_str() + std::min(name.size(), shard_prefix.size()), nullptr, 10);
        if (name != std::string(shard_prefix) + std::to_string(n) || n == 0 || std::ranges::find(listed, name) != listed.end())
          reason = "its list of shards is unreadable";
        else listed.push_back(name);
      }
      if (in.bad()) reason = "its list of shards cannot be read";
      // Shards not listed: a merge's output that a crash left unlisted, or inputs
      // a crash left undeleted after their output was listed. Numbering continues
      // past every shard found, deleted or not.
      for (const auto& entry : std::filesystem::directory_iterator(dir)) {
        const auto name = entry.path().filename().string();
        if (name.starts_with(shard_prefix))
          next_shard = std::max<uint64_t>(next_shard, std::strtoull(name.c_str() + shard_prefix.size(), nullptr, 10) + 1);
        if ((name.starts_with(shard_prefix) && std::ranges::find(listed, name) == listed.end()) ||
            name == "shards.tmp")
          std::filesystem::remove_all(entry.path(), ec);
      }
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
  try {
    start_writing(listed);
  } catch (const Xapian::Error& e) {
    spdlog::warn("search: the index at {} cannot be used ({}); rebuilding it from the logs", opts.index_dir,
                 describe(e));
    return recreate();
  }
  return {};
}

// Records what the index is in the meta database (a synced commit), seals the
// shards left by the last run (merges tier them in the background) and starts a
// new active shard, written without fsync when search.fsync is off.
void index::impl::start_writing(const std::vector<std::string>& listed) {
  using namespace detail;
  {
    Xapian::WritableDatabase m(meta_dir(), Xapian::DB_CREATE_OR_OPEN);
    m.set_metadata(std::string(meta_schema), std::string(schema_version));
    m.set_metadata(std::string(meta_store), store_identity);
    m.set_metadata(std::string(meta_language), opts.language);
    m.set_metadata(std::string(meta_unsynced), opts.fsync ? std::string() : boot_id);
    m.commit();
    m.close();
  }
  sealed.clear();
  documents_elsewhere = 0;
  // Never lowered (not even by recreate()): a retired shard that a query still
  // holds is deleted under its own name when the query ends.
  for (const auto& name : listed) {
    const uint64_t n = std::strtoull(name.c_str() + shard_prefix.size(), nullptr, 10);
    auto sh = std::make_shared<shard>(shard_dir(n), n);
    sh->documents = Xapian::Database(sh->dir).get_doccount();
    documents_elsewhere += sh->documents;
    next_shard = std::max(next_shard, n + 1);
    sealed.push_back(std::move(sh));
  }
  active = new_shard();
  writer.emplace(active->dir, Xapian::DB_CREATE_OR_OPEN | sync_flag());
  write_manifest();
  documents = documents_elsewhere + writer->get_doccount();
  metrics.documents->Set(double(documents));
  publish_shards();
}

std::shared_ptr<detail::shard> index::impl::new_shard() {
  const uint64_t n = next_shard++;
  return std::make_shared<shard>(shard_dir(n), n);
}

// The sealed shards and the active one, oldest first. Written to a temporary file
// and renamed over the list (synced when search.fsync is on).
void index::impl::write_manifest() const {
  const std::string tmp = opts.index_dir + "/shards.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& sh : sealed) out << shard_prefix << sh->number << '\n';
    if (active) out << shard_prefix << active->number << '\n';
    out.flush();
    if (!out) throw Xapian::DatabaseError("cannot write " + tmp);
  }
  // Synced: the file and the directory entries of the shards it names (a shard's
  // own files are synced by its commits, or by merge()).
  if (opts.fsync) sync_directory(opts.index_dir);
  std::error_code ec;
  std::filesystem::rename(tmp, manifest_path(), ec);
  if (ec) throw Xapian::DatabaseError("cannot replace " + manifest_path() + ": " + ec.message());
  if (opts.fsync) sync_directory(opts.index_dir);
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
  sync_directory(opts.index_dir);  // the list of shards
  Xapian::WritableDatabase m(meta_dir(), Xapian::DB_OPEN);
  m.set_metadata(std::string(detail::meta_unsynced), "");
  m.commit();
  m.close();
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
  active.reset();
  sealed.clear();
  publish_shards();
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

// When the active shard is full, seal it and start a new one; install a finished
// merge; start the next one. Fails when the last merge failed.
model::status index::impl::manage_tiers() {
  if (merger.joinable() && merge_done) {
    merger.join();
    if (auto ok = install_merge(); !ok) return ok;
  }
  // Past a few sealed shards the active one grows instead, so queries never span
  // too many shards.
  if (sealed.size() < detail::max_sealed_shards && writer->get_doccount() >= opts.recent_units) {
    active->documents = writer->get_doccount();
    documents_elsewhere += active->documents;
    writer->close();
    sealed.push_back(active);
    active = new_shard();
    writer.emplace(active->dir, Xapian::DB_CREATE_OR_OPEN | sync_flag());
    write_manifest();
    publish_shards();
  }
  // No merge starts once close() has asked the running one to stop.
  const auto first = next_merge();
  if (!merger.joinable() && first && !abort_merge) {
    merging.assign(sealed.begin() + ptrdiff_t(*first), sealed.end());
    merge_output = new_shard();
    merge_done = false;
    merge_error.clear();
    merger = std::thread([this, inputs = merging, output = merge_output] {
      model::name_this_thread("index-merge");
      merge(inputs, output);
    });
  }
  pending_merges = merger.joinable() ? merging.size() : 0;
  return {};
}

// Tiers by doubling: the oldest sealed shard that the shards newer than it
// outweigh together is merged with all of them. A settled index therefore has
// shards each larger than all newer ones put together (about log2(documents /
// recent_units) + 1 of them), and a document is rewritten about once each time
// the index doubles. Compacting is ~5x cheaper per document than indexing it
// again (bench/README.md "Merges by compaction").
std::optional<size_t> index::impl::next_merge() const {
  uint64_t newer = 0;
  std::optional<size_t> first;
  for (size_t i = sealed.size(); i-- > 0;) {
    if (i + 1 < sealed.size() && sealed[i]->documents <= newer) first = i;
    newer += sealed[i]->documents;
  }
  return first;
}

// On the indexer thread, after the merge thread was joined: the output is listed
// in place of its inputs (a crash before the list is replaced keeps the inputs,
// after it the output), and a view showing it replaces the one showing them.
model::status index::impl::install_merge() {
  merge_done = false;
  auto inputs = std::move(merging);
  auto output = std::move(merge_output);
  merging.clear();
  if (!merge_error.empty()) {
    output->retired = true;
    return fail(errc::internal, "merging shards: " + merge_error);
  }
  if (abort_merge) {  // cancelled: the inputs stay
    output->retired = true;
    return {};
  }
  const auto at = std::ranges::find(sealed, inputs.front());
  if (at == sealed.end() || size_t(sealed.end() - at) < inputs.size())
    return fail(errc::internal, "merging shards: the merged shards are no longer sealed");
  output->documents = Xapian::Database(output->dir).get_doccount();
  const auto pos = sealed.erase(at, at + ptrdiff_t(inputs.size()));
  sealed.insert(pos, output);
  write_manifest();
  publish_shards();
  for (const auto& sh : inputs) sh->retired = true;
  return {};
}

namespace {

// A position (p:<context>) several inputs hold keeps the highest seq; a shard has
// no other metadata, but any other key would keep the oldest input's value. Xapian
// 1.4's glass compactor passes the key as its table stores it, after a two-byte
// prefix ("\0\xc0").
class tier_compactor : public Xapian::Compactor {
 public:
  explicit tier_compactor(const std::atomic<bool>& abort) : abort_(abort) {}

  // Called as each table starts and ends: a cancelled merge stops here.
  void set_status(const std::string&, const std::string&) override {
    if (abort_) throw cancelled();
  }

  std::string resolve_duplicate_metadata(const std::string& key, size_t num_tags, const std::string tags[]) override {
    const std::string_view k = key.starts_with(std::string_view("\0\xc0", 2)) ? std::string_view(key).substr(2) : key;
    if (!k.starts_with("p:")) return tags[0];
    return *std::max_element(tags, tags + num_tags, [](const std::string& a, const std::string& b) {
      return read_sortable_u64(a) < read_sortable_u64(b);
    });
  }

  struct cancelled {};

 private:
  const std::atomic<bool>& abort_;
};

}  // namespace

// Compacts the inputs (a run of sealed shards, oldest first) into one new shard:
// Xapian merges their posting lists and copies the documents' stored data as they
// are, where adding each document again would invert it again. The inputs are not
// written meanwhile (a purge waits for the merge). install_merge() lists the output.
void index::impl::merge(const std::vector<std::shared_ptr<shard>>& inputs, const std::shared_ptr<shard>& output) {
  // Background work: yield the CPU to the indexer and the request threads, so
  // freshness holds while a merge runs.
  detail::lower_priority(std::max(10, opts.indexer_nice));
  try {
    const auto t0 = steady::now();
    Xapian::Database in;
    for (const auto& sh : inputs) in.add_database(Xapian::Database(sh->dir));
    tier_compactor compactor(abort_merge);
    in.compact(output->dir, 0, 0, compactor);
    if (opts.fsync) sync_directory(output->dir);
    spdlog::info("search: merged {} shards ({} units) into {} in {:.2f} s", inputs.size(), in.get_doccount(),
                 output->dir, std::chrono::duration<double>(steady::now() - t0).count());
  } catch (const tier_compactor::cancelled&) {
    // abort_merge: install_merge() drops the output
  } catch (const Xapian::Error& e) {
    merge_error = describe(e);
  } catch (const std::exception& e) {
    merge_error = e.what();
  }
  // Compacting allocates per table; glibc keeps freed memory in this thread's
  // arena: give it back, or RSS steps up at every merge (bench/README.md "Soak").
  ::malloc_trim(0);
  finish_merge();
}

void index::impl::finish_merge() {
  {
    std::lock_guard lock(mu);
    merge_done = true;
  }
  cv.notify_all();
}

// Cancels a running merge (when the compactor next starts or ends a table) and
// drops its output. Merges may start again afterwards (recreate() calls this too).
void index::impl::stop_merge() {
  abort_merge = true;
  if (merger.joinable()) {
    merger.join();
    if (merge_output) merge_output->retired = true;
  }
  merge_done = false;
  merging.clear();
  merge_output.reset();
  pending_merges = 0;
  abort_merge = false;
}

}  // namespace engram::search
