// Queries: a pooled reader over the published view, keyword matching, and the
// semantic and hybrid modes (vector neighbours filtered by Xapian, fused ranks).
// Runs on the query threads (index::search) or the caller's (index::search_now);
// reads only what the indexer publishes under view_mu.

#include <algorithm>
#include <unordered_set>

#include "model/codec.hpp"
#include "search/fusion.hpp"
#include "search/index_impl.hpp"
#include "search/terms.hpp"
#include "storage/store.hpp"

namespace engram::search {
namespace {

using model::errc;
using model::fail;
using detail::describe;

bool blank(const std::string& text) { return text.find_first_not_of(" \t\r\n") == std::string::npos; }

// Matches of `full` from `first`, at most `count`, counting at least `check`:
// by BM25 with text, else newest first (units of one commit share a ts, so seq
// breaks ties within a context; across contexts the later-indexed comes first).
Xapian::MSet match(Xapian::Database& db, const Xapian::Query& full, bool has_text, size_t first, size_t count,
                   size_t check) {
  Xapian::MultiValueKeyMaker newest_first;
  newest_first.add_value(ts_slot, true);
  newest_first.add_value(seq_slot, true);
  Xapian::Enquire enquire(db);
  enquire.set_query(full);
  if (!has_text) {
    enquire.set_weighting_scheme(Xapian::BoolWeight());
    enquire.set_sort_by_key(&newest_first, false);
    enquire.set_docid_order(Xapian::Enquire::DESCENDING);
  }
  return enquire.get_mset(Xapian::doccount(first), Xapian::doccount(count), Xapian::doccount(check));
}

// Ids of the documents matching `filter`, at most `limit` (+1 to tell "more").
std::vector<std::string> matching_ids(Xapian::Database& db, const Xapian::Query& filter, size_t limit) {
  Xapian::Enquire enquire(db);
  enquire.set_query(filter);
  enquire.set_weighting_scheme(Xapian::BoolWeight());
  const auto mset = enquire.get_mset(0, Xapian::doccount(limit));
  std::vector<std::string> ids;
  ids.reserve(mset.size());
  for (auto it = mset.begin(); it != mset.end(); ++it) ids.push_back(document_head(it.get_document()).id());
  return ids;
}

// The candidates that match `filter`, in their order.
std::vector<neighbour> keep_matching(Xapian::Database& db, const Xapian::Query& filter,
                                     std::vector<neighbour> candidates) {
  if (candidates.empty()) return candidates;
  std::vector<Xapian::Query> terms;
  terms.reserve(candidates.size());
  for (const auto& c : candidates) terms.emplace_back(unique_term(c.unit_id));
  Xapian::Query ids(Xapian::Query::OP_OR, terms.begin(), terms.end());
  auto ok = matching_ids(db, Xapian::Query(Xapian::Query::OP_FILTER, ids, filter), candidates.size());
  std::unordered_set<std::string> allowed(ok.begin(), ok.end());
  std::erase_if(candidates, [&](const neighbour& c) { return !allowed.contains(c.unit_id); });
  return candidates;
}

}  // namespace

// ---- readers -------------------------------------------------------------------

// A reader over the current view, reopened to the latest commits. Under the
// shared lock, so a merge's output cannot replace its inputs between the two.
model::result<index::impl::reader> index::impl::acquire_reader() {
  std::shared_lock lock(view_mu);
  const auto v = current_view;
  if (!v || v->shards.empty()) return fail(errc::unavailable, "search index unavailable: the index is being rebuilt");
  {
    std::lock_guard readers_lock(readers_mu);
    while (!idle_readers.empty()) {
      reader r = std::move(idle_readers.back());
      idle_readers.pop_back();
      if (r.v != v) continue;
      r.db->reopen();
      return r;
    }
  }
  reader r{std::make_unique<Xapian::Database>(), v};
  for (const auto& sh : v->shards) r.db->add_database(Xapian::Database(sh->dir));
  return r;
}

void index::impl::release_reader(reader r) {
  std::shared_lock lock(view_mu);  // lock order: view_mu, then readers_mu
  if (r.v != current_view) return;
  std::lock_guard readers_lock(readers_mu);
  idle_readers.push_back(std::move(r));
}

// ---- keyword -------------------------------------------------------------------

std::string index::impl::snippet(const Xapian::MSet& mset, const api::WorkUnit& head,
                                 const Xapian::Stem& stemmer) const {
  if (head.seq() == 0) return {};
  auto events = store.read_events(head.context_id(), head.seq() - 1, 1);
  if (!events || events->empty() || !events->front().has_work_unit()) return {};
  const auto text = payload_text(events->front().work_unit(), opts.max_text_bytes);
  if (!text) return {};
  return unescape_html(mset.snippet(std::string(*text), opts.snippet_bytes, stemmer,
                                    Xapian::MSet::SNIPPET_BACKGROUND_MODEL | Xapian::MSet::SNIPPET_EXHAUSTIVE |
                                        Xapian::MSet::SNIPPET_CJK_NGRAM,
                                    "", "", "…"));
}

// The text query and filters as one Xapian query; nullopt when the text parses
// to nothing (only punctuation, say), which matches nothing.
model::result<std::optional<Xapian::Query>> index::impl::full_query(Xapian::Database& db, const query& q,
                                                                    const Xapian::Stem& stemmer) const {
  const bool has_text = !blank(q.text);
  Xapian::Query text_query;
  if (has_text) {
    Xapian::QueryParser qp;
    qp.set_database(db);
    qp.set_stemmer(stemmer);
    qp.set_stemming_strategy(Xapian::QueryParser::STEM_SOME);
    qp.set_default_op(opts.default_and ? Xapian::Query::OP_AND : Xapian::Query::OP_OR);
    qp.set_max_expansion(Xapian::termcount(opts.max_wildcard_terms), Xapian::Query::WILDCARD_LIMIT_ERROR,
                         Xapian::QueryParser::FLAG_WILDCARD);
    text_query = qp.parse_query(q.text, Xapian::QueryParser::FLAG_PHRASE | Xapian::QueryParser::FLAG_BOOLEAN |
                                            Xapian::QueryParser::FLAG_LOVEHATE | Xapian::QueryParser::FLAG_WILDCARD |
                                            Xapian::QueryParser::FLAG_PURE_NOT |
                                            Xapian::QueryParser::FLAG_CJK_NGRAM);
    if (text_query.empty()) return std::optional<Xapian::Query>();
  }
  auto filters = filter_query(q);
  if (!filters) return std::unexpected(filters.error());
  if (has_text)
    return std::optional<Xapian::Query>(*filters ? Xapian::Query(Xapian::Query::OP_FILTER, text_query, **filters)
                                                 : text_query);
  // All (Query::MatchAll is a shared object: not thread-safe).
  return std::optional<Xapian::Query>(*filters ? **filters : Xapian::Query(std::string()));
}

model::result<results> index::impl::keyword(Xapian::Database& db, const query& q) const {
  const bool has_text = !blank(q.text);
  const Xapian::Stem stemmer(opts.language);
  auto full = full_query(db, q, stemmer);
  if (!full) return std::unexpected(full.error());
  results out;
  out.limit = q.limit;
  if (!*full) return out;
  const auto mset =
      match(db, **full, has_text, q.offset, q.limit, std::max(q.offset + q.limit, opts.exact_count_up_to));
  out.total = mset.get_matches_estimated();
  out.total_exact = mset.get_matches_lower_bound() == mset.get_matches_upper_bound();
  out.hits.reserve(mset.size());
  for (auto it = mset.begin(); it != mset.end(); ++it) {
    const auto head = document_head(it.get_document());
    hit h;
    h.id = head.id();
    h.context_id = head.context_id();
    h.seq = head.seq();
    h.ts_ns = head.ts_ns();
    fill_author(h, head);
    h.score = has_text ? it.get_weight() : 0;
    if (q.snippets) h.snippet = snippet(mset, head, stemmer);
    out.hits.push_back(std::move(h));
  }
  return out;
}

// ---- semantic and hybrid -------------------------------------------------------

// Which mode runs, in which vector space, with which query vector (embedding the
// text if needed). An unreachable endpoint degrades the search to keyword results.
model::result<index::impl::plan> index::impl::resolve(const query& q) const {
  plan p;
  const bool has_text = !blank(q.text);
  p.model = !q.model.empty() ? q.model : embedder ? embedder->model() : std::string(model::default_embedding_model);
  const auto wants = q.mode;
  const auto name = std::string(to_string(wants));
  if (wants == search_mode::keyword) return p;
  if (!q.vector.empty()) {
    if (wants == search_mode::hybrid && !has_text)
      return fail(errc::invalid_argument, "mode \"hybrid\" needs query text as well as a vector");
    p.mode = wants == search_mode::automatic ? (has_text ? search_mode::hybrid : search_mode::semantic) : wants;
    p.vector = q.vector;
    note_empty_space(p);
    return p;
  }
  if (wants == search_mode::automatic) {
    // Hybrid only when the query can be embedded and the space has vectors.
    if (!has_text || !embedder || vectors->size(p.model) == 0) return p;
  } else {
    if (!has_text) return fail(errc::invalid_argument, "mode \"" + name + "\" needs query text or a vector");
    if (!embedder)
      return fail(errc::invalid_argument, "mode \"" + name + "\" needs a vector: no embedding endpoint is "
                                          "configured (search.embeddings.url) to embed the query text");
  }
  auto v = embedder->embed_query(q.text);
  if (!v) {
    p.degraded = "keyword results only: " + v.error().message;
    return p;
  }
  p.mode = wants == search_mode::automatic ? search_mode::hybrid : wants;
  p.vector = std::move(*v);
  note_empty_space(p);
  return p;
}

// A vector search in a space with no vectors finds nothing, and usually means the
// model name is wrong (a vector written with "embedding_model":"m" searched without it lands
// in "default"): the response says so instead of answering zero hits silently.
void index::impl::note_empty_space(plan& p) const {
  if (vectors->size(p.model) != 0) return;
  p.degraded = "no vectors are stored for embedding model '" + p.model +
               "' (yet), so only keyword results can match; name the model the vectors were written with "
               "(\"embedding_model\" in a body, model= in a query string)";
}

// The `depth` nearest units that pass the query's filters. A selective filter
// (few matches) ranks every match exactly; a broad one searches the graph for
// more neighbours than needed and keeps those that match, widening until enough
// do. `complete` tells whether every vector that passes was considered.
model::result<std::vector<neighbour>> index::impl::nearest(Xapian::Database& db, const query& q, const plan& p,
                                                           size_t depth, bool& complete) const {
  auto filters = filter_query(q);
  if (!filters) return std::unexpected(filters.error());
  const size_t space = vectors->size(p.model);
  if (!*filters) {
    complete = space <= depth;
    return vectors->nearest(p.model, p.vector, depth);
  }
  // Count first (cheap: no documents read), then read the ids only if few.
  Xapian::Enquire counter(db);
  counter.set_query(**filters);
  counter.set_weighting_scheme(Xapian::BoolWeight());
  const auto count = counter.get_mset(0, 0, Xapian::doccount(opts.exact_filter_limit + 1));
  if (count.get_matches_lower_bound() <= opts.exact_filter_limit) {
    complete = true;
    return vectors->rank_exact(p.model, p.vector, matching_ids(db, **filters, opts.exact_filter_limit), depth);
  }
  // More than exact_filter_limit units match: the fraction of vectors that pass
  // is about matches / space, so ask for depth / fraction, twice over.
  const double fraction = std::min(1.0, double(count.get_matches_estimated()) / double(std::max<size_t>(space, 1)));
  size_t want = std::max(depth * 2, size_t(double(depth) / fraction * 2));
  for (;;) {
    want = std::min(want, space);
    auto found = vectors->nearest(p.model, p.vector, want);
    if (!found) return found;
    const size_t got = found->size();
    auto kept = keep_matching(db, **filters, std::move(*found));
    if (kept.size() >= depth || got < want || want >= space) {
      complete = want >= space;
      if (kept.size() > depth) kept.resize(depth);
      return kept;
    }
    want *= 4;
  }
}

// A result row for a unit found by its vector (the keyword side did not load it).
// Agent and type from the document; documents indexed before they were stored
// there (an index built by an older version) read them from the unit.
void index::impl::fill_author(hit& h, const api::WorkUnit& head) const {
  if (!head.agent_id().empty()) {
    h.agent_id = head.agent_id();
    h.type = head.type();
    return;
  }
  if (auto unit = store.get_unit(h.id); unit && *unit) {
    h.agent_id = (*unit)->agent_id();
    h.type = (*unit)->type();
  }
}

std::optional<hit> index::impl::unit_hit(const std::string& id, bool with_snippet) const {
  auto unit = store.get_unit(id);
  if (!unit || !*unit) return std::nullopt;
  hit h;
  h.id = id;
  h.context_id = (*unit)->context_id();
  h.seq = (*unit)->seq();
  h.ts_ns = (*unit)->ts_ns();
  h.agent_id = (*unit)->agent_id();
  h.type = (*unit)->type();
  if (with_snippet)
    if (auto text = payload_text(**unit, opts.snippet_bytes * 2)) {
      h.snippet = std::string(cut_utf8(*text, opts.snippet_bytes));
      if (h.snippet.size() < text->size()) h.snippet += "…";
    }
  return h;
}

model::result<results> index::impl::vector_search(Xapian::Database& db, const query& q, const plan& p) const {
  const size_t end = q.offset + q.limit;
  if (end > opts.max_vector_results)
    return fail(errc::invalid_argument, "semantic and hybrid results page through the best " +
                                            std::to_string(opts.max_vector_results) + " (offset + limit)");
  const bool hybrid = p.mode == search_mode::hybrid;
  const size_t depth = hybrid ? std::max(end, opts.fusion_depth) : end;
  bool vectors_complete = false;
  auto near = nearest(db, q, p, depth, vectors_complete);
  if (!near) return std::unexpected(near.error());

  std::vector<ranked> by_vector;
  by_vector.reserve(near->size());
  for (auto& n : *near) by_vector.push_back({std::move(n.unit_id), n.similarity});
  std::vector<ranked> by_keyword;
  std::optional<Xapian::MSet> kw;
  const Xapian::Stem stemmer(opts.language);
  std::unordered_map<std::string, api::WorkUnit> heads;  // keyword matches, by id
  bool keyword_complete = true;
  if (hybrid) {
    auto full = full_query(db, q, stemmer);
    if (!full) return std::unexpected(full.error());
    if (*full) {
      kw = match(db, **full, true, 0, depth, depth);
      keyword_complete = kw->get_matches_upper_bound() <= depth;
      for (auto it = kw->begin(); it != kw->end(); ++it) {
        auto head = document_head(it.get_document());
        by_keyword.push_back({head.id(), it.get_weight()});
        heads.emplace(head.id(), std::move(head));
      }
    }
  }
  auto fusedlist = hybrid ? fuse_rrf(by_keyword, by_vector, opts.rrf_k) : fuse_rrf({}, by_vector, opts.rrf_k);
  results out;
  out.limit = q.limit;
  out.mode = p.mode;
  out.total = fusedlist.size();
  out.total_exact = vectors_complete && keyword_complete;
  for (size_t i = q.offset; i < fusedlist.size() && out.hits.size() < q.limit; ++i) {
    auto& f = fusedlist[i];
    std::optional<hit> h;
    if (auto it = heads.find(f.id); it != heads.end()) {
      h.emplace();
      h->id = f.id;
      h->context_id = it->second.context_id();
      h->seq = it->second.seq();
      h->ts_ns = it->second.ts_ns();
      fill_author(*h, it->second);
      if (q.snippets) h->snippet = snippet(*kw, it->second, stemmer);
    } else {
      h = unit_hit(f.id, q.snippets);
      if (!h) continue;
    }
    h->score = hybrid ? f.score : f.vector_score.value_or(0);
    h->keyword_rank = f.keyword_rank;
    h->vector_rank = f.vector_rank;
    h->keyword_score = f.keyword_score;
    h->vector_score = f.vector_score;
    out.hits.push_back(std::move(*h));
  }
  return out;
}

model::result<results> index::impl::execute(Xapian::Database& db, const query& q, const plan& p) const {
  auto out = p.mode == search_mode::keyword ? keyword(db, q) : vector_search(db, q, p);
  if (out) out->degraded = p.degraded;
  return out;
}

// ---- running a query -----------------------------------------------------------

model::result<results> index::impl::run_query(const query& q) {
  if (state == index_state::failed) {
    std::lock_guard lock(mu);
    return fail(errc::unavailable, "search index unavailable: " + failure);
  }
  auto p = resolve(q);
  if (!p) return std::unexpected(p.error());
  // Set after the second lost revision: holds index commits until this query ends.
  struct commit_hold {
    impl* s = nullptr;
    ~commit_hold() {
      if (s) s->release_commit_hold();
    }
  } hold;
  for (int attempt = 0;; ++attempt) {
    std::optional<reader> r;
    try {
      auto acquired = acquire_reader();
      if (!acquired) return std::unexpected(acquired.error());
      r = std::move(*acquired);
      auto out = execute(*r->db, q, *p);
      release_reader(std::move(*r));
      return out;
    } catch (const Xapian::DatabaseModifiedError& e) {
      // The writer moved on twice during this query: retry on the newest revision,
      // from the second time with the indexer's commits held.
      if (attempt >= 1 && !hold.s) {
        ++starved_queries;
        hold.s = this;
        metrics.commit_holds->Increment();
      }
      if (attempt < 4) {
        metrics.query_retries->Increment();
        continue;
      }
      return fail(errc::unavailable, "search index busy: " + e.get_msg());
    } catch (const Xapian::QueryParserError& e) {
      release_reader(std::move(*r));
      return fail(errc::invalid_argument, "query: " + e.get_msg());
    } catch (const Xapian::WildcardError& e) {
      release_reader(std::move(*r));
      return fail(errc::invalid_argument, "query: " + e.get_msg());
    } catch (const Xapian::InvalidArgumentError& e) {
      return fail(errc::invalid_argument, "query: " + e.get_msg());
    } catch (const Xapian::DatabaseError& e) {
      // Being rebuilt, or damaged underneath us: drop this reader.
      return fail(errc::unavailable, "search index unavailable: " + describe(e));
    } catch (const Xapian::Error& e) {
      return fail(errc::internal, "search: " + describe(e));
    } catch (const std::exception& e) {  // allocation failures
      return fail(errc::internal, std::string("search: ") + e.what());
    }
  }
}

model::result<results> index::impl::run_measured(const query& q) {
  const auto t0 = steady::now();
  auto out = run_query(q);
  metrics.latency->Observe(std::chrono::duration<double>(steady::now() - t0).count());
  if (out) metrics.queries_ok->Increment();
  else if (out.error().code == errc::invalid_argument) metrics.queries_invalid->Increment();
  else metrics.queries_failed->Increment();
  return out;
}

}  // namespace engram::search
