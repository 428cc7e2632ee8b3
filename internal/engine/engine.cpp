#include "engine/engine.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <charconv>

#include "model/text.hpp"

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

}  // namespace

engine::engine(options opts, std::shared_ptr<const model::clock> clock, router::router* router,
               prometheus::Registry* metrics)
    : opts_(opts), clock_(clock ? std::move(clock) : model::default_clock()), router_(router) {
  if (metrics) {
    stream_counters_.queued_bytes = &prometheus::BuildGauge().Name("engram_stream_queued_bytes")
                                         .Help("Live event bytes queued for stream subscribers, all streams")
                                         .Register(*metrics).Add({});
    stream_counters_.catch_ups = &prometheus::BuildCounter().Name("engram_stream_catch_ups_total")
                                      .Help("Streams that fell back from live delivery to reading storage")
                                      .Register(*metrics).Add({});
  }
}

model::result<std::shared_ptr<stream>> engine::open_stream(stream_request req, std::function<void()> notify) {
  auto s = store();
  if (!s) return std::unexpected(s.error());
  if (!router_) return fail(errc::unavailable, "streaming is not enabled on this server");
  return stream::open(**s, *router_, std::move(req), opts_.stream, std::move(notify), &stream_counters_);
}

void engine::attach(storage::store* s) { store_.store(s, std::memory_order_release); }
void engine::attach_search(search::index* index) { search_.store(index, std::memory_order_release); }

std::optional<search::index_status> engine::search_status() const {
  auto* index = search_.load(std::memory_order_acquire);
  if (!index) return std::nullopt;
  return index->status();
}

void engine::search(search::query q, std::optional<size_t> limit,
                    std::function<void(model::result<search::results>)> done) const {
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

model::result<std::optional<api::Embedding>> engine::get_vector(std::string_view id) const {
  auto s = store();
  if (!s) return std::unexpected(s.error());
  return (*s)->get_vector(id);
}

model::result<api::WorkUnit> engine::get_unit(std::string_view id) const {
  auto s = store();
  if (!s) return std::unexpected(s.error());
  auto unit = (*s)->get_unit(id);
  if (!unit) return std::unexpected(unit.error());
  if (!*unit) return fail(errc::not_found, "Work unit not found");
  return std::move(**unit);
}

model::result<units_page> engine::list_units(std::string_view context_id,
                                             const list_request& req) const {
  auto s = store();
  if (!s) return std::unexpected(s.error());
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
  auto page = (*s)->list_units(context_id, q);
  if (!page) return std::unexpected(page.error());
  units_page out;
  if (page->more && !page->units.empty())
    out.next_cursor = make_cursor('u', std::to_string(page->units.back().seq()));
  out.units = std::move(page->units);
  return out;
}

model::result<api::Context> engine::get_context(std::string_view id) const {
  auto s = store();
  if (!s) return std::unexpected(s.error());
  auto ctx = (*s)->get_context(id);
  if (!ctx) return std::unexpected(ctx.error());
  if (!*ctx) return fail(errc::not_found, "Context not found");
  return std::move(**ctx);
}

void engine::patch_context(std::string context_id, model::context_patch patch,
                           std::function<void(model::result<api::Context>)> done) {
  auto s = store();
  if (!s) return done(std::unexpected(s.error()));
  (*s)->update_context(
      storage::update_context_request{
          std::move(context_id),
          [patch = std::move(patch)](api::Context& ctx) { model::apply_patch(ctx, patch); }},
      std::move(done));
}

model::result<contexts_page> engine::list_contexts(std::string_view cursor,
                                                   std::optional<size_t> limit) const {
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
  auto page = (*s)->list_contexts(after, *n);
  if (!page) return std::unexpected(page.error());
  contexts_page out;
  if (page->more && !page->contexts.empty())
    out.next_cursor = make_cursor('c', page->contexts.back().id());
  out.contexts = std::move(page->contexts);
  return out;
}

}  // namespace engram::engine
