// search::index's public surface: opening (the caller's thread), the publisher
// hooks (the store's committer: its thread or an inline committer), status and close. The work is done by the parts
// in index_impl.hpp.

#include "search/index.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <fstream>

#include "model/thread_name.hpp"
#include "search/index_impl.hpp"
#include "storage/store.hpp"

namespace engram::search {
namespace {

using model::errc;
using model::fail;

std::string read_boot_id(const std::string& path) {
  std::ifstream in(path);
  std::string id;
  std::getline(in, id);
  return id.empty() ? "unknown" : id;
}

}  // namespace

namespace detail {

metrics_set::metrics_set(prometheus::Registry* r) {
  if (!r) {
    own = std::make_shared<prometheus::Registry>();
    r = own.get();
  }
  using namespace prometheus;
  documents_indexed = &BuildCounter().Name("engram_search_documents_indexed_total")
                           .Help("Work units written to the search index (re-indexing counts again)")
                           .Register(*r).Add({});
  commits = &BuildCounter().Name("engram_search_index_commits_total")
                 .Help("Search index commits (each makes a batch searchable)").Register(*r).Add({});
  rounds = &BuildCounter().Name("engram_search_indexer_rounds_total")
                .Help("Rounds of the indexer: each reads what has arrived, purges or merges (events arriving "
                      "while a batch waits for its commit are read at the commit, unless 256 of them wait)")
                .Register(*r).Add({});
  yield_seconds = &BuildCounter().Name("engram_search_indexer_yield_seconds_total")
                       .Help("Time the indexer paused to leave the CPU to writes it could not keep up with "
                             "(search.yield_backlog)")
                       .Register(*r).Add({});
  commit_holds = &BuildCounter().Name("engram_search_index_commit_holds_total")
                      .Help("Queries that lost their revision twice and so held the index's commits until "
                            "they ended (at most 1 s without a commit)")
                      .Register(*r).Add({});
  query_retries = &BuildCounter().Name("engram_search_query_retries_total")
                       .Help("Queries run again because an index commit replaced the revision they read")
                       .Register(*r).Add({});
  lag = &BuildGauge().Name("engram_search_index_lag_events")
             .Help("Events committed to context logs but not yet searchable").Register(*r).Add({});
  documents = &BuildGauge().Name("engram_search_index_documents")
                   .Help("Work units in the search index").Register(*r).Add({});
  delay = &BuildHistogram().Name("engram_search_index_delay_seconds")
               .Help("From a unit's commit to the log until it is searchable")
               .Register(*r)
               .Add({}, Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                    1, 5, 30});
  commit_seconds = &BuildHistogram().Name("engram_search_index_commit_seconds")
                        .Help("Duration of one index commit (writing and syncing the batch)")
                        .Register(*r)
                        .Add({}, Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                             0.5, 1, 2.5});
  latency = &BuildHistogram().Name("engram_search_query_duration_seconds")
                 .Help("Search query execution time, snippets included")
                 .Register(*r)
                 .Add({}, Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                      0.025, 0.05, 0.1, 0.25, 1});
  auto& queries = BuildCounter().Name("engram_search_queries_total")
                      .Help("Search queries by outcome (ok, invalid: refused as malformed, error)")
                      .Register(*r);
  queries_ok = &queries.Add({{"outcome", "ok"}});
  queries_invalid = &queries.Add({{"outcome", "invalid"}});
  queries_failed = &queries.Add({{"outcome", "error"}});
}

}  // namespace detail

std::string_view to_string(search_mode m) {
  switch (m) {
    case search_mode::automatic: return "auto";
    case search_mode::keyword: return "keyword";
    case search_mode::semantic: return "semantic";
    case search_mode::hybrid: return "hybrid";
  }
  return "unknown";
}

std::string_view to_string(index_state s) {
  switch (s) {
    case index_state::catching_up: return "catching_up";
    case index_state::ready: return "ready";
    case index_state::failed: return "failed";
  }
  return "unknown";
}

index::impl::impl(const options& o, storage::store& s, prometheus::Registry* r)
    : opts(o), store(s), store_identity(s.identity()), boot_id(read_boot_id(o.boot_id_file)), metrics(r) {}

index::index(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
index::~index() { close(); }

model::result<std::unique_ptr<index>> index::open(const options& opts, storage::store& store,
                                                  prometheus::Registry* metrics) {
  try {
    Xapian::Stem check(opts.language);  // Xapian's own list of languages
  } catch (const Xapian::InvalidArgumentError& e) {
    return fail(errc::invalid_argument, "search.language: " + e.get_msg());
  }
  auto p = std::make_unique<impl>(opts, store, metrics);
  if (auto ok = p->open_index(); !ok) return std::unexpected(ok.error());
  auto vectors = vector_index::open(opts.vectors, store, metrics);
  if (!vectors) return std::unexpected(vectors.error());
  p->vectors = std::move(*vectors);
  if (!opts.embeddings.url.empty()) {
    auto e = embedder::open(opts.embeddings, store, metrics);
    if (!e) return std::unexpected(e.error());
    p->embedder = std::move(*e);
  }
  p->pool.emplace(std::max<size_t>(1, opts.query_threads));
  auto* raw = p.get();
  p->indexer = std::thread([raw] {
    model::name_this_thread("indexer");
    raw->run_indexer();
  });
  return std::unique_ptr<index>(new index(std::move(p)));
}

void index::on_vectors(uint64_t last_vseq) { impl_->vectors->on_committed(last_vseq); }

void index::on_removed(const std::string& context_id, uint64_t first_seq, const std::vector<std::string>& unit_ids) {
  auto& s = *impl_;
  s.vectors->on_removed(unit_ids);
  {
    std::lock_guard lock(s.mu);
    if (s.stopping) return;
    auto& cut = s.purges[context_id];
    cut = std::max(cut, first_seq);
  }
  s.cv.notify_all();
}

void index::on_committed(const std::vector<std::shared_ptr<const api::Event>>& events) {
  auto& s = *impl_;
  if (s.embedder) s.embedder->on_committed(events);
  std::lock_guard lock(s.mu);
  if (s.stopping) return;
  bool grew = false;
  for (const auto& ev : events) {
    auto it = s.heads.find(ev->context_id());
    if (it == s.heads.end()) it = s.heads.emplace(ev->context_id(), 0).first;
    if (ev->seq() <= it->second) continue;
    s.committed_events += ev->seq() - it->second;
    s.unread_events += ev->seq() - it->second;
    it->second = ev->seq();
    s.pending[ev->context_id()] = ev->seq();
    grew = true;
  }
  if (grew) {
    s.update_lag_metric();
    if (!s.pausing && (!s.holding || s.unread_events >= detail::wake_batch)) s.cv.notify_one();
  }
}

void index::search(query q, std::function<void(model::result<results>)> done) {
  auto& s = *impl_;
  if (s.closed) return done(fail(errc::unavailable, "search is shutting down"));
  if (s.queued_queries.fetch_add(1) >= s.opts.max_queued_queries) {
    s.queued_queries.fetch_sub(1);
    return done(fail(errc::unavailable, "too many searches in progress; retry shortly"));
  }
  boost::asio::post(*s.pool, [&s, q = std::move(q), done = std::move(done)] {
    model::name_pool_thread("search-query");
    auto out = s.run_measured(q);
    s.queued_queries.fetch_sub(1);
    done(std::move(out));
  });
}

model::result<results> index::search_now(const query& q) { return impl_->run_measured(q); }

index_status index::status() const {
  const auto& s = *impl_;
  index_status st;
  st.state = s.state.load();
  st.lag = s.lag();
  st.documents = s.documents.load();
  st.pending_merges = s.pending_merges.load();
  st.vectors = s.vectors->status();
  if (s.embedder) st.embedder = s.embedder->status();
  if (st.state == index_state::failed) {
    std::lock_guard lock(s.mu);
    st.error = s.failure;
  }
  return st;
}

void index::close() {
  auto& s = *impl_;
  if (s.closed.exchange(true)) return;
  if (s.embedder) s.embedder->close();  // it writes to the store: stop it first
  s.abort_merge = true;  // a merge, or a purge waiting for one, does not hold up the stop
  {
    std::lock_guard lock(s.mu);
    s.stopping = true;
  }
  s.cv.notify_all();
  if (s.indexer.joinable()) s.indexer.join();
  if (s.pool) s.pool->join();
  s.vectors->close();
  try {
    s.stop_merge();  // an unfinished merge is cancelled; the next start redoes it
    if (s.writer) s.finish_writing();
  } catch (const Xapian::Error& e) {
    spdlog::error("search: closing the index: {}", detail::describe(e));
  }
}

}  // namespace engram::search
