#include "engine/engine.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <charconv>
#include <shared_mutex>

#include "engine/drafts.hpp"
#include "engine/tail_cache.hpp"
#include "engine/tasks.hpp"
#include "model/text.hpp"
#include "model/thread_name.hpp"

namespace engram::engine {
namespace {

using model::errc;
using model::fail;

// Cursors are opaque to clients: "u" + decimal seq (or "c" + context id), base64url.
std::string make_cursor(char kind, std::string_view position) {
  std::string raw(1, kind);
  raw.append(position);
  return model::base64url_encode(raw);
}

model::result<std::string> open_cursor(std::string_view cursor, char kind) {
  auto raw = model::base64url_decode(cursor);
  if (!raw || raw->empty() || (*raw)[0] != kind)
    return fail(errc::invalid_argument, "cursor is not valid; pass next_cursor from a previous page unchanged");
  return raw->substr(1);
}

// A unit read from memory whose stored event is at most this is answered on the
// caller's thread (engine::get_unit); parsing and rendering it cost a few tens of µs.
constexpr size_t inline_read_max_bytes = 16 * 1024;
// A page from the tail cache up to this size is copied together on the caller's
// thread (engine::list_units); ~256 KiB is a few tens of µs of memcpy.
constexpr size_t inline_page_max_bytes = 256 * 1024;

tail_cache::query tail_query(const storage::list_query& q, bool with_text) {
  return {q.after_seq, q.before_seq, q.limit, q.reverse, with_text};
}

units_page from_tail(tail_cache::page page) {
  units_page out;
  out.units_json = std::move(page.units_json);
  out.count = page.count;
  if (page.more) out.next_cursor = make_cursor('u', std::to_string(page.last_seq));
  return out;  // the context exists: the tail was checked against its record
}

// A unit as its reader sees it: one the caller may not read is indistinguishable
// from one that does not exist (ids do not reveal contexts).
model::result<unit_read> visible_unit(model::result<std::optional<api::WorkUnit>> unit,
                                      const std::function<bool(std::string_view)>& readable) {
  if (!unit) return std::unexpected(unit.error());
  if (!*unit || (readable && !readable((*unit)->context_id()))) return fail(errc::not_found, "Work unit not found");
  return unit_read{std::move(**unit), std::nullopt};
}

}  // namespace

// Storage reads, off the I/O threads (DESIGN.md §3). Asio's pool has no bounded
// queue, so REST reads are counted here; stream polls are not (one per stream).
// `mu` orders submissions against drain_reads(): nothing is posted to a pool that
// is being joined.
struct engine::read_pool {
  explicit read_pool(size_t threads) : pool(threads) {}
  boost::asio::thread_pool pool;
  std::atomic<size_t> queued_rest{0};
  std::shared_mutex mu;
  bool draining = false;  // guarded by mu
};

engine::engine(options opts, std::shared_ptr<const model::clock> clock, router::router* router,
               prometheus::Registry* metrics)
    : opts_(opts), clock_(clock ? std::move(clock) : model::default_clock()), router_(router),
      reads_(std::make_unique<read_pool>(std::max<size_t>(1, opts.read_threads))) {
  if (metrics) {
    stream_counters_.queued_bytes = &prometheus::BuildGauge().Name("engram_stream_queued_bytes")
                                         .Help("Live event bytes queued for stream subscribers, all streams")
                                         .Register(*metrics).Add({});
    stream_counters_.catch_ups = &prometheus::BuildCounter().Name("engram_stream_catch_ups_total")
                                      .Help("Streams that fell back from live delivery to reading storage")
                                      .Register(*metrics).Add({});
  }
  if (router_) drafts_ = std::make_unique<drafts>(opts_.drafts, *router_, clock_, metrics);
  if (opts_.tail_cache_bytes)  // room for the largest page and the unit that tells whether more exist
    tails_ = std::make_unique<tail_cache>(opts_.tail_cache_bytes, opts_.max_page_limit + 1, metrics);
}

engine::~engine() { drain_reads(); }

model::result<drafts*> engine::draft_registry() const {
  if (!drafts_) return fail(errc::unavailable, "streaming is not enabled on this server");
  return drafts_.get();
}

void engine::drain_reads() {
  {
    std::unique_lock lock(reads_->mu);
    reads_->draining = true;
  }
  reads_->pool.join();
}

model::status engine::submit_read(std::function<void()> job, bool bounded) const {
  auto& r = *reads_;
  std::shared_lock lock(r.mu);
  if (r.draining) return fail(errc::unavailable, "the server is shutting down");
  if (bounded && r.queued_rest.fetch_add(1) >= opts_.max_queued_reads) {
    r.queued_rest.fetch_sub(1);
    return fail(errc::unavailable, "too many reads in progress; retry shortly");
  }
  boost::asio::post(r.pool, [&r, bounded, job = std::move(job)] {
    model::name_pool_thread("read-pool");
    if (bounded) r.queued_rest.fetch_sub(1);
    // Backstop: an exception must not end the pool thread (and the process).
    // Completions answer with values; reaching this is a bug, so it is loud.
    try {
      job();
    } catch (const std::exception& e) {
      spdlog::error("engine: a read completion threw: {}", e.what());
    }
  });
  return {};
}

void engine::poll_stream(std::shared_ptr<stream> s, size_t max_bytes,
                         reply<std::vector<router::event_ptr>> done) const {
  auto job = [s = std::move(s), max_bytes, done] { done(s->poll(max_bytes)); };
  if (auto ok = submit_read(std::move(job), false); !ok) done(std::unexpected(ok.error()));
}

model::result<std::shared_ptr<stream>> engine::open_stream(stream_request req, std::function<void()> notify) {
  auto s = store();
  if (!s) return std::unexpected(s.error());
  if (!router_) return fail(errc::unavailable, "streaming is not enabled on this server");
  return stream::open(**s, *router_, std::move(req), opts_.stream, std::move(notify), &stream_counters_,
                      drafts_.get());
}

void engine::attach(storage::store* s) {
  if (tails_) tails_->clear();  // tails describe one store
  store_.store(s, std::memory_order_release);
}
void engine::attach_search(search::index* index) { search_.store(index, std::memory_order_release); }
void engine::attach_locks(locks::manager* m) { locks_.store(m, std::memory_order_release); }

model::result<presence*> engine::presence_manager() const {
  auto* p = presence_.load(std::memory_order_acquire);
  if (!p) return fail(errc::unavailable, "the server is recovering its data; retry shortly");
  return p;
}

model::result<tasks*> engine::task_manager() const {
  auto* t = tasks_.load(std::memory_order_acquire);
  if (!t) return fail(errc::unavailable, "the server is recovering its data; retry shortly");
  return t;
}

model::result<locks::manager*> engine::locks() const {
  auto* m = locks_.load(std::memory_order_acquire);
  if (!m) {
    if (!ready()) return fail(errc::unavailable, "the server is recovering its data; retry shortly");
    return fail(errc::unavailable, "locks are not enabled");
  }
  return m;
}

void engine::acquire_locks(locks::acquire_request req, locks::manager::locks_done done) {
  auto m = locks();
  if (!m) return done(std::unexpected(m.error()));
  (*m)->acquire(std::move(req), std::move(done));
}

void engine::renew_lock(std::string resource, std::string agent, std::string lock_id, std::chrono::milliseconds ttl,
                        locks::manager::lock_done done) {
  auto m = locks();
  if (!m) return done(std::unexpected(m.error()));
  (*m)->renew(std::move(resource), std::move(agent), std::move(lock_id), ttl, std::move(done));
}

void engine::release_lock(std::string resource, std::string agent, std::string lock_id, std::string by,
                          std::function<void(model::status)> done) {
  auto m = locks();
  if (!m) return done(std::unexpected(m.error()));
  (*m)->release(std::move(resource), std::move(agent), std::move(lock_id), std::move(by), std::move(done));
}

model::result<api::Lock> engine::get_lock(const std::string& resource) const {
  auto m = locks();
  if (!m) return std::unexpected(m.error());
  auto l = (*m)->get(resource);
  if (!l) return fail(errc::not_found, "no lock on '" + resource + "'");
  return std::move(*l);
}

model::result<std::vector<api::Lock>> engine::list_locks(std::string_view agent, std::string_view prefix) const {
  auto m = locks();
  if (!m) return std::unexpected(m.error());
  return (*m)->list(agent, prefix);
}

std::optional<search::index_status> engine::search_status() const {
  auto* index = search_.load(std::memory_order_acquire);
  if (!index) return std::nullopt;
  return index->status();
}

void engine::search(search::query q, std::optional<size_t> limit, reply<search::results> done) const {
  auto* index = search_.load(std::memory_order_acquire);
  if (!index) {
    if (!ready()) return done(fail(errc::unavailable, "the server is recovering its data; retry shortly"));
    return done(fail(errc::unavailable, "search is not enabled on this server"));
  }
  if (q.offset > opts_.max_search_offset)
    return done(fail(errc::invalid_argument, "offset may be at most " + std::to_string(opts_.max_search_offset) +
                                                 "; narrow the search with filters instead"));
  q.limit = *page_limit(limit);
  index->search(std::move(q), std::move(done));
}

model::result<storage::store*> engine::store() const {
  auto* s = store_.load(std::memory_order_acquire);
  if (!s) return fail(errc::unavailable, "the server is recovering its data; retry shortly");
  return s;
}

model::result<size_t> engine::page_limit(std::optional<size_t> requested) const {
  if (!requested || *requested == 0) return opts_.default_page_limit;
  return std::min(*requested, opts_.max_page_limit);
}

void engine::append(std::string context_id, std::vector<api::WorkUnit> units, idempotency idem,
                    append_done done, std::vector<storage::fence> fences) {
  auto s = store();
  if (!s) return done(std::unexpected(s.error()));
  if (units.empty()) return done(fail(errc::invalid_argument, "at least one work unit is required"));
  if (units.size() > opts_.max_batch_units)
    return done(fail(errc::invalid_argument, "a batch holds at most " +
                                                 std::to_string(opts_.max_batch_units) + " work units"));
  const int64_t now_ms = clock_->now_ns() / 1'000'000;
  for (auto& u : units) u.set_id(ids_.next(now_ms).to_string());
  (*s)->append(storage::append_request{std::move(context_id), std::move(units), std::move(idem.key),
                                       std::move(idem.fingerprint), std::move(fences)},
               std::move(done));
}

void engine::get_unit(std::string id, bool with_embedding, std::function<bool(std::string_view)> readable,
                      reply<unit_read> done) const {
  // Answered on the caller's thread (found, not found, or an error) when storage
  // has the unit in memory and it is small: a read that cannot wait for the disk
  // does not block an I/O thread (DESIGN §3), and the read pool's two thread
  // hand-offs cost more than such a read and its rendering. A big unit (or a page,
  // or an embedding) is read and rendered on the pool, so a connection never
  // waits behind another's render.
  if (!with_embedding) {
    if (auto s = store(); s)
      if (auto cached = (*s)->get_unit_if_cached(id, inline_read_max_bytes))
        return done(visible_unit(std::move(*cached), readable));
  }
  auto job = [this, id = std::move(id), with_embedding, readable = std::move(readable), done] {
    done(read_unit(id, with_embedding, readable));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::list_units(std::string context_id, list_request req, reply<units_page> done) const {
  // A page the context's cached tail holds, when its record is in memory, is
  // answered here like a cached unit (get_unit): no disk, no hand-off. A large
  // page is still copied together on the pool.
  if (auto s = store(); s && tails_) {
    auto q = page_query(req);
    if (!q) return done(std::unexpected(q.error()));
    auto in_memory = (*s)->context_position(context_id, true);  // nullopt: the record is on disk
    const storage::log_position* pos = in_memory && *in_memory && **in_memory ? &***in_memory : nullptr;
    if (pos)
      if (auto page = tails_->serve(context_id, *pos, tail_query(*q, req.with_text), inline_page_max_bytes))
        return done(from_tail(std::move(*page)));
  }
  auto job = [this, ctx = std::move(context_id), req = std::move(req), done] { done(read_units(ctx, req)); };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::list_events(std::string context_id, uint64_t after_seq, std::optional<size_t> limit,
                         reply<events_page> done) const {
  auto job = [this, ctx = std::move(context_id), after_seq, limit, done]() -> void {
    auto s = store();
    if (!s) return done(std::unexpected(s.error()));
    auto n = page_limit(limit);
    if (!n) return done(std::unexpected(n.error()));
    auto context = (*s)->get_context(ctx);
    if (!context) return done(std::unexpected(context.error()));
    if (!*context) return done(fail(errc::not_found, "Context not found"));
    auto events = (*s)->read_events(ctx, after_seq, *n + 1);  // one more says whether a next page exists
    if (!events) return done(std::unexpected(events.error()));
    events_page out;
    out.head_seq = (**context).head_seq();
    out.more = events->size() > *n;
    if (out.more) events->resize(*n);
    out.events = std::move(*events);
    done(std::move(out));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::backup(std::string dir, reply<std::string> done) const {
  auto job = [this, dir = std::move(dir), done]() -> void {
    auto s = store();
    if (!s) return done(std::unexpected(s.error()));
    done((*s)->backup(dir));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::get_context(std::string id, reply<api::Context> done) const {
  auto job = [this, id = std::move(id), done]() -> void {
    auto s = store();
    if (!s) return done(std::unexpected(s.error()));
    auto ctx = (*s)->get_context(id);
    if (!ctx) return done(std::unexpected(ctx.error()));
    if (!*ctx) return done(fail(errc::not_found, "Context not found"));
    done(std::move(**ctx));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::list_contexts(std::string cursor, std::optional<size_t> limit, std::string prefix,
                           reply<contexts_page> done) const {
  auto job = [this, cursor = std::move(cursor), limit, prefix = std::move(prefix), done] {
    done(read_contexts(cursor, limit, prefix));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

model::result<unit_read> engine::read_unit(std::string_view id, bool with_embedding,
                                           const std::function<bool(std::string_view)>& readable) const {
  auto s = store();
  if (!s) return std::unexpected(s.error());
  auto out = visible_unit((*s)->get_unit(id), readable);
  if (!out) return out;
  if (with_embedding) {
    auto vector = (*s)->get_vector(id);
    if (!vector) return std::unexpected(vector.error());
    out->embedding = std::move(*vector);
  }
  return out;
}

model::result<storage::list_query> engine::page_query(const list_request& req) const {
  auto limit = page_limit(req.limit);
  if (!limit) return std::unexpected(limit.error());
  storage::list_query q;
  q.limit = *limit;
  q.reverse = req.reverse;
  q.after_seq = req.after_seq;
  if (!req.cursor.empty()) {
    auto pos = open_cursor(req.cursor, 'u');
    if (!pos) return std::unexpected(pos.error());
    uint64_t seq = 0;
    auto [p, ec] = std::from_chars(pos->data(), pos->data() + pos->size(), seq);
    if (ec != std::errc() || p != pos->data() + pos->size())
      return fail(errc::invalid_argument, "cursor is not valid; pass next_cursor from a previous page unchanged");
    if (req.reverse) q.before_seq = seq;
    else q.after_seq = std::max(q.after_seq, seq);
  }
  return q;
}

model::result<units_page> engine::read_units(std::string_view context_id, const list_request& req) const {
  auto s = store();
  if (!s) return std::unexpected(s.error());
  auto q = page_query(req);
  if (!q) return std::unexpected(q.error());
  units_page out;
  if (tails_) {
    auto pos = *(*s)->context_position(context_id, false);  // always set when not memory-only
    if (!pos) return std::unexpected(pos.error());
    if (*pos) {  // a current tail serves at once; one behind is brought up to date first
      auto page = tails_->update_and_serve(**s, context_id, **pos, tail_query(*q, req.with_text));
      if (!page) return std::unexpected(page.error());
      if (*page) return from_tail(std::move(**page));
    }
  }
  auto page = (*s)->list_units(context_id, *q);
  if (!page) return std::unexpected(page.error());
  if (page->more && !page->units.empty())
    out.next_cursor = make_cursor('u', std::to_string(page->units.back().seq()));
  if (page->units.empty()) {  // only then can the context be missing: one more point read
    auto ctx = (*s)->get_context(context_id);
    if (!ctx) return std::unexpected(ctx.error());
    out.context_exists = ctx->has_value();
  }
  out.count = page->units.size();
  model::append_units_json(out.units_json, page->units, req.with_text);
  return out;
}

void engine::patch_context(std::string context_id, model::context_patch patch, reply<api::Context> done) {
  auto s = store();
  if (!s) return done(std::unexpected(s.error()));
  (*s)->update_context(
      storage::update_context_request{
          std::move(context_id),
          [patch = std::move(patch)](api::Context& ctx) { model::apply_patch(ctx, patch); }},
      std::move(done));
}

void engine::put_checkpoint(storage::checkpoint_request req, reply<api::Event> done) {
  auto s = store();
  if (!s) return done(std::unexpected(s.error()));
  req.keep = opts_.checkpoints.keep;
  (*s)->put_checkpoint(std::move(req), std::move(done));
}

void engine::get_checkpoint(std::string context_id, std::string agent_id, std::optional<uint64_t> version,
                            reply<api::Event> done) const {
  auto job = [this, context_id = std::move(context_id), agent_id = std::move(agent_id), version, done]() -> void {
    auto s = store();
    if (!s) return done(std::unexpected(s.error()));
    auto cp = (*s)->get_checkpoint(context_id, agent_id, version);
    if (!cp) return done(std::unexpected(cp.error()));
    if (!*cp)
      return done(fail(errc::not_found, version ? "checkpoint version " + std::to_string(*version) + " of agent '" +
                                                      agent_id + "' is not kept in context '" + context_id + "'"
                                                : "agent '" + agent_id + "' has no checkpoint in context '" +
                                                      context_id + "'"));
    done(std::move(**cp));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::list_checkpoints(std::string context_id, std::string agent_id, reply<std::vector<api::Event>> done) const {
  auto job = [this, context_id = std::move(context_id), agent_id = std::move(agent_id), done]() -> void {
    auto s = store();
    if (!s) return done(std::unexpected(s.error()));
    done((*s)->list_checkpoints(context_id, agent_id));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::change_fact(storage::fact_change change, reply<api::Event> done) {
  auto s = store();
  if (!s) return done(std::unexpected(s.error()));
  (*s)->change_fact(std::move(change), std::move(done));
}

void engine::read_facts(std::string context_id, storage::fact_query q, reply<facts_read> done) const {
  auto job = [this, context_id = std::move(context_id), q = std::move(q), done]() mutable -> void {
    auto s = store();
    if (!s) return done(std::unexpected(s.error()));
    // Pinned at the head read first: a change committed meanwhile is not half seen.
    auto head = (*s)->log_head(context_id);
    if (!head) return done(std::unexpected(head.error()));
    q.as_of_seq = std::min(q.as_of_seq.value_or(*head), *head);
    auto found = (*s)->read_facts(context_id, q);
    if (!found) return done(std::unexpected(found.error()));
    done(facts_read{std::move(*found), *q.as_of_seq});
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::get_tool_call(std::string context_id, std::string call_id, reply<storage::tool_call> done) const {
  auto job = [this, context_id = std::move(context_id), call_id = std::move(call_id), done]() -> void {
    auto s = store();
    if (!s) return done(std::unexpected(s.error()));
    auto call = (*s)->get_tool_call(context_id, call_id);
    if (!call) return done(std::unexpected(call.error()));
    if (!*call) return done(fail(errc::not_found, "no tool call '" + call_id + "' in context '" + context_id + "'"));
    done(std::move(**call));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

void engine::import_events(std::string context_id, std::vector<api::Event> events, reply<api::Context> done) {
  auto s = store();
  if (!s) return done(std::unexpected(s.error()));
  (*s)->import_events(std::move(context_id), std::move(events), std::move(done));
}

void engine::delete_context(std::string context_id, std::string deleted_by, reply<storage::trim_result> done) {
  auto s = store();
  if (!s) return done(std::unexpected(s.error()));
  (*s)->delete_context(std::move(context_id), std::move(deleted_by), std::move(done));
}

model::result<contexts_page> engine::read_contexts(std::string_view cursor, std::optional<size_t> limit,
                                                   std::string_view prefix) const {
  auto s = store();
  if (!s) return std::unexpected(s.error());
  auto n = page_limit(limit);
  if (!n) return std::unexpected(n.error());
  std::string after;
  if (!cursor.empty()) {
    auto pos = open_cursor(cursor, 'c');
    if (!pos) return std::unexpected(pos.error());
    after = std::move(*pos);
  }
  auto page = (*s)->list_contexts(after, *n, prefix);
  if (!page) return std::unexpected(page.error());
  contexts_page out;
  if (page->more && !page->contexts.empty())
    out.next_cursor = make_cursor('c', page->contexts.back().id());
  out.contexts = std::move(page->contexts);
  return out;
}

void engine::packet(packet_request req, reply<packet_output> done) const {
  auto job = [this, req = std::move(req), done]() mutable -> void {
    auto s = store();
    if (!s) return done(std::unexpected(s.error()));
    auto st = *s;
    const std::string& ctx = req.context_id;
    packet_inputs in;
    // The context first: its head is the pin, so what commits meanwhile is not seen.
    auto context = st->get_context(ctx);
    if (!context) return done(std::unexpected(context.error()));
    if (!*context) return done(fail(errc::not_found, "no context '" + ctx + "'"));
    in.context = std::move(**context);
    in.as_of_seq = std::min(req.as_of_seq.value_or(in.context.head_seq()), in.context.head_seq());
    in.generated_at_ns = req.now_ns.value_or(clock_->now_ns());
    const uint64_t as_of = in.as_of_seq;
    if (as_of > 0) {
      auto ev = st->read_events(ctx, as_of - 1, 1);
      if (!ev) return done(std::unexpected(ev.error()));
      // The event at as_of_seq; if retention removed it, the oldest one left (what
      // is shown of a trimmed log is not reproducible anyway).
      in.log_time_ns = ev->empty() ? in.context.updated_at_ns() : ev->front().ts_ns();
    }
    const auto& policy = req.policy;

    if (req.policy.recent_window > 0) {
      storage::list_query q{.after_seq = req.since_seq.value_or(0), .before_seq = as_of + 1,
                            .limit = policy.recent_window, .reverse = true};
      auto page = st->list_units(ctx, q);
      if (!page) return done(std::unexpected(page.error()));
      in.recent = std::move(page->units);
    }
    for (const auto& id : in.context.pinned_units()) {
      auto u = st->get_unit(id);
      if (!u) return done(std::unexpected(u.error()));
      if (*u && (*u)->context_id() == ctx && (*u)->seq() <= as_of) in.pinned.push_back(std::move(**u));
    }
    storage::fact_query fq;
    fq.as_of_seq = as_of;
    fq.include_superseded = true;
    fq.limit = opts_.packet.max_fact_versions;
    auto facts = st->read_facts(ctx, fq);
    if (!facts) return done(std::unexpected(facts.error()));
    if (facts->size() > fq.limit) {
      facts->resize(fq.limit);
      in.truncated.push_back("facts");
    }
    in.facts = std::move(*facts);
    if (!req.agent_id.empty()) {
      auto cps = st->list_checkpoints(ctx, req.agent_id);
      if (!cps) return done(std::unexpected(cps.error()));
      for (auto& e : *cps)
        if (e.seq() <= as_of) in.checkpoints.push_back(std::move(e));
    }
    if (auto* t = tasks_.load(std::memory_order_acquire)) {
      std::vector<std::string> ids;
      bool more = false;
      for (const char* status : {"open", "claimed", "stranded"}) {  // the board: not done, not failed
        auto page = t->list(ctx, status, "", opts_.packet.max_tasks);
        ids.insert(ids.end(), page.task_ids.begin(), page.task_ids.end());
        more |= page.more;
      }
      if (more) in.truncated.push_back("tasks");
      auto records = t->read(ids);
      if (!records) return done(std::unexpected(records.error()));
      std::sort(records->begin(), records->end(),
                [](const api::Task& a, const api::Task& b) { return a.task_id() < b.task_id(); });
      in.tasks = std::move(*records);
    }
    if (auto* m = locks_.load(std::memory_order_acquire)) {
      for (auto& l : m->list("", ""))
        if (l.context_id() == ctx && l.holder_agent() != req.agent_id) in.leases.push_back(std::move(l));
    }

    if (auto* index = search_.load(std::memory_order_acquire)) {
      // The index may hold units written after as_of_seq: they are left out by seq.
      search::query base;
      base.context_id = ctx;
      base.snippets = false;
      base.to_ns = in.log_time_ns + 1;
      if (policy.summaries_limit > 0) {
        auto q = base;
        q.types = {api::WORK_UNIT_TYPE_SUMMARY};
        q.mode = search::search_mode::keyword;
        q.limit = policy.summaries_limit;
        auto found = index->search_now(q);
        if (!found) return done(std::unexpected(found.error()));
        for (const auto& h : found->hits) {
          if (h.seq > as_of) continue;
          auto u = st->get_unit(h.id);
          if (!u) return done(std::unexpected(u.error()));
          if (*u) in.summaries.push_back(std::move(**u));
        }
      }
      if (req.has_query() && policy.retrieve_limit > 0) {
        auto q = base;
        q.text = req.query_text;
        q.vector = req.query_vector;
        q.model = req.query_model;
        q.types = policy.types;
        q.limit = policy.retrieve_limit;
        auto found = index->search_now(q);
        if (!found) return done(std::unexpected(found.error()));
        in.search = search::to_string(found->mode);
        in.degraded = found->degraded;
        size_t rank = 0;  // among the hits at or before as_of_seq
        for (const auto& h : found->hits) {
          if (h.seq > as_of) continue;
          ++rank;
          auto u = st->get_unit(h.id);
          if (!u) return done(std::unexpected(u.error()));
          if (!*u) continue;
          packet_inputs::hit hit{std::move(**u), h.keyword_rank, h.vector_rank};
          if (found->mode == search::search_mode::keyword) hit.keyword_rank = rank;
          in.retrieved.push_back(std::move(hit));
        }
      }
    } else {
      in.degraded = "search is not enabled on this server: no summaries, and nothing retrieved for a query";
    }

    // Tool calls shown without their result as the log stood at as_of_seq.
    auto note_call = [&](const api::WorkUnit& u) -> model::status {
      if (u.type() != api::WORK_UNIT_TYPE_TOOL_CALL || u.call_id().empty() || in.open_calls.contains(u.call_id()))
        return {};
      auto call = st->get_tool_call(ctx, u.call_id());
      if (!call) return std::unexpected(call.error());
      if (*call && (!(*call)->result || (*call)->result->seq() > as_of)) in.open_calls.insert(u.call_id());
      return {};
    };
    for (const auto* list : {&in.pinned, &in.recent})
      for (const auto& u : *list)
        if (auto ok = note_call(u); !ok) return done(std::unexpected(ok.error()));
    for (const auto& h : in.retrieved)
      if (auto ok = note_call(h.unit); !ok) return done(std::unexpected(ok.error()));

    done(assemble_packet(req, in));
  };
  if (auto ok = submit_read(std::move(job), true); !ok) done(std::unexpected(ok.error()));
}

}  // namespace engram::engine
