#include "gateway/handler.hpp"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>
#include <xxhash.h>

#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>
#include <charconv>
#include <chrono>
#include <nlohmann/json.hpp>

#include "gateway/access.hpp"
#include "gateway/lock_params.hpp"
#include "gateway/process_metrics.hpp"
#include "gateway/search_params.hpp"
#include "model/log_context.hpp"
#include "model/text.hpp"

namespace engram::gateway {

std::string_view live_html();  // web_assets.cpp, generated from web/live.html

namespace {

using model::errc;
using model::json;
using steady = std::chrono::steady_clock;

// Route templates double as metric labels.
enum class route_id { healthz, readyz, metrics, unit_append, unit_get, batch_append, unit_list,
                      context_list, context_one, ui_live, lock_collection, lock_one, lock_renew, search, none };

struct matched_route {
  route_id id = route_id::none;
  std::string_view label = "unmatched";
  std::string_view allow;
  std::string encoded_param;  // rest of the path after the route prefix
};

matched_route match(std::string_view path) {
  auto exact = [&](std::string_view p) { return path == p; };
  auto rest = [&](std::string_view prefix) -> std::optional<std::string> {
    if (path.size() > prefix.size() && path.starts_with(prefix))
      return std::string(path.substr(prefix.size()));
    return std::nullopt;
  };
  if (exact("/healthz")) return {route_id::healthz, "/healthz", "GET", {}};
  if (exact("/readyz")) return {route_id::readyz, "/readyz", "GET", {}};
  if (exact("/metrics")) return {route_id::metrics, "/metrics", "GET", {}};
  if (exact("/workunit")) return {route_id::unit_append, "/workunit", "POST", {}};
  if (auto p = rest("/workunit/")) return {route_id::unit_get, "/workunit/{id}", "GET", *p};
  if (exact("/workunits")) return {route_id::batch_append, "/workunits", "POST", {}};
  if (auto p = rest("/workunits/")) return {route_id::unit_list, "/workunits/{contextId}", "GET", *p};
  if (exact("/contexts")) return {route_id::context_list, "/contexts", "GET", {}};
  if (exact("/ui/live")) return {route_id::ui_live, "/ui/live", "GET", {}};
  if (exact("/search")) return {route_id::search, "/search", "GET, POST", {}};
  if (exact("/locks")) return {route_id::lock_collection, "/locks", "GET, POST", {}};
  if (auto p = rest("/locks/")) {
    // POST /locks/{resource}/renew; the resource itself may contain '/'.
    if (p->size() > 6 && p->ends_with("/renew"))
      return {route_id::lock_renew, "/locks/{resource}/renew", "POST, GET, DELETE", *p};
    return {route_id::lock_one, "/locks/{resource}", "GET, DELETE", *p};
  }
  if (auto p = rest("/contexts/")) return {route_id::context_one, "/contexts/{id}", "GET, PATCH", *p};
  return {};
}

bool method_allowed(std::string_view allow, std::string_view method) {
  size_t pos = 0;
  while (pos < allow.size()) {
    size_t end = allow.find(',', pos);
    if (end == std::string_view::npos) end = allow.size();
    std::string_view m = allow.substr(pos, end - pos);
    while (!m.empty() && m.front() == ' ') m.remove_prefix(1);
    if (m == method) return true;
    pos = end + 1;
  }
  return false;
}

response json_response(unsigned status, const json& body) {
  response r;
  r.status = status;
  r.body = model::dump(body);
  return r;
}

response bad_request(std::string message) {
  return error_response(model::error{errc::invalid_argument, std::move(message)});
}

model::result<json> parse_body(const request& req) {
  if (req.body.empty())
    return model::fail(errc::invalid_argument, "request body is empty; send a JSON object");
  auto parsed = model::parse_json(req.body);
  if (!parsed)
    return model::fail(errc::invalid_argument,
                       "request body is not valid JSON (check syntax and that strings are UTF-8)");
  if (!parsed->is_object())
    return model::fail(errc::invalid_argument, "request body must be a JSON object");
  return std::move(*parsed);
}

// Decodes the rest-of-path parameter once and validates it as an identifier.
model::result<std::string> path_param(const matched_route& m, std::string_view field) {
  auto pv = boost::urls::make_pct_string_view(m.encoded_param);
  if (!pv) return model::fail(errc::invalid_argument, std::string(field) + " has invalid percent-encoding");
  std::string decoded = pv->decode();
  if (auto bad = model::check_identifier(field, decoded, model::max_id_bytes))
    return model::fail(errc::invalid_argument, *bad);
  return decoded;
}

struct query_params {
  std::vector<std::pair<std::string, std::string>> items;
  const std::string* get(std::string_view key) const {
    for (const auto& [k, v] : items)
      if (k == key) return &v;
    return nullptr;
  }
};

model::result<std::optional<uint64_t>> uint_param(const query_params& q, std::string_view key) {
  const auto* v = q.get(key);
  if (!v || v->empty()) return std::optional<uint64_t>();
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
  if (ec != std::errc() || p != v->data() + v->size())
    return model::fail(errc::invalid_argument,
                       std::string(key) + " must be a non-negative integer, got '" + *v + "'");
  return std::optional<uint64_t>(n);
}

model::result<bool> bool_param(const query_params& q, std::string_view key) {
  const auto* v = q.get(key);
  if (!v || v->empty() || *v == "false" || *v == "0") return false;
  if (*v == "true" || *v == "1") return true;
  return model::fail(errc::invalid_argument, std::string(key) + " must be true or false, got '" + *v + "'");
}

// Idempotency-Key: 1-255 visible ASCII characters (as in the IETF draft's examples).
model::result<std::string> idempotency_key_header(const request& req) {
  const auto key = req.header("idempotency-key");
  if (key.empty()) return std::string();
  if (key.size() > 255)
    return model::fail(errc::invalid_argument, "Idempotency-Key is longer than 255 characters");
  for (char c : key)
    if (c < 0x21 || c > 0x7E)
      return model::fail(errc::invalid_argument, "Idempotency-Key must be visible ASCII characters");
  return std::string(key);
}

// Hash of everything that makes two requests "the same" for an idempotency key.
std::string fingerprint(const request& req, std::string_view path) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  auto feed = [&](std::string_view s) {
    XXH3_128bits_update(st, s.data(), s.size());
    XXH3_128bits_update(st, "\0", 1);
  };
  feed(req.method);
  feed(path);
  feed(req.header("x-agent-id"));
  feed(req.body);
  const XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  std::string out(16, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = char(h.high64 >> (8 * i));
    out[8 + i] = char(h.low64 >> (8 * i));
  }
  return out;
}

// `{"<field>":[unit,…]` — the caller appends further fields and the closing brace.
std::string units_json(std::string_view field, const std::vector<api::WorkUnit>& units) {
  std::string out;
  size_t estimate = 32;
  for (const auto& u : units) estimate += 256 + u.payload().size() * 4 / 3;
  out.reserve(estimate);
  out.append("{\"").append(field).append("\":[");
  for (size_t i = 0; i < units.size(); ++i) {
    if (i) out.push_back(',');
    model::append_unit_json(out, units[i]);
  }
  out.push_back(']');
  return out;
}

response forbidden(std::string message) {
  return error_response(model::error{errc::forbidden, std::move(message)});
}

// A request acts as the token's subject and no one else.
model::status acting_as(const caller& who, std::string_view agent) {
  if (who.principal && agent != who.principal->agent)
    return model::fail(errc::forbidden, "agent_id '" + std::string(agent.substr(0, 256)) +
                                            "' is not the token's subject '" + who.principal->agent + "'");
  return {};
}

bool public_route(route_id id) { return id == route_id::healthz || id == route_id::readyz || id == route_id::ui_live; }

}  // namespace

response error_response(const model::error& err) {
  unsigned status = 500;
  switch (err.code) {
    case errc::invalid_argument: status = 400; break;
    case errc::not_found: status = 404; break;
    case errc::conflict: status = 409; break;
    case errc::in_progress: status = 409; break;
    case errc::unauthenticated: status = 401; break;
    case errc::forbidden: status = 403; break;
    case errc::rate_limited: status = 429; break;
    case errc::unprocessable: status = 422; break;
    case errc::payload_too_large: status = 413; break;
    case errc::unavailable: status = 503; break;
    case errc::internal: status = 500; break;
  }
  auto r = json_response(status, json{{"error", err.message}});
  // Both say "try the same request again shortly"; clients (the SDK) rely on it.
  if (status == 503 || status == 429 || err.code == errc::in_progress) r.headers.emplace_back("Retry-After", "1");
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"engram\"");
  return r;
}

struct api_handler::impl {
  engine::engine& eng;
  locks::manager* locks = nullptr;
  options opts;
  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Family<prometheus::Counter>* requests;
  prometheus::Family<prometheus::Histogram>* latency;
  prometheus::Family<prometheus::Counter>* refusals;
  authenticator authn;
  rate_limiter write_limit, search_limit, lock_limit;

  static authenticator make_authenticator(const auth::options& o) {
    auto a = authenticator::create(o);
    if (!a) throw std::invalid_argument(a.error().message);  // config validates this first
    return std::move(*a);
  }

  impl(engine::engine& e, const options& o, std::shared_ptr<prometheus::Registry> r)
      : eng(e), opts(o), registry(std::move(r)), authn(make_authenticator(o.auth)),
        write_limit(o.limits.writes, "writes"),
        search_limit(o.limits.searches, "searches"),
        lock_limit(o.limits.locks, "lock operations") {
    refusals = &prometheus::BuildCounter()
                    .Name("engram_http_refusals_total")
                    .Help("Requests refused before reaching a route: unauthenticated, forbidden or rate_limited")
                    .Register(*registry);
    requests = &prometheus::BuildCounter()
                    .Name("engram_http_requests_total")
                    .Help("HTTP requests by route, method and status")
                    .Register(*registry);
    latency = &prometheus::BuildHistogram()
                   .Name("engram_http_request_duration_seconds")
                   .Help("HTTP request latency by route and status, until the response is ready")
                   .Register(*registry);
  }

  std::optional<std::string> allowed_origin(const request& req) const {
    const auto origin = req.header("origin");
    for (const auto& o : opts.cors_origins) {
      if (o == "*") return std::string("*");
      if (!origin.empty() && o == origin) return std::string(origin);
    }
    return std::nullopt;
  }

  // What the access log says about a request, filled in as it is handled.
  struct access_record {
    std::string request_id, method, path, ip, agent;
  };

  // Wraps the responder: CORS, metrics and the access-log line (no query strings,
  // bodies or headers: they may carry payloads or credentials).
  responder finishing(const request& req, std::string_view label, std::shared_ptr<access_record> record,
                      responder respond) {
    auto origin = allowed_origin(req);
    return [this, origin = std::move(origin), label = std::string(label), record = std::move(record),
            start = steady::now(), respond = std::move(respond)](response r) {
      const auto& method = record->method;
      if (origin) {
        r.headers.emplace_back("Access-Control-Allow-Origin", *origin);
        if (*origin != "*") r.headers.emplace_back("Vary", "Origin");
        r.headers.emplace_back("Access-Control-Expose-Headers", "Retry-After, Idempotent-Replayed, X-Request-Id");
      }
      const auto status = std::to_string(r.status);
      requests->Add({{"route", label}, {"method", method}, {"status", status}}).Increment();
      static const prometheus::Histogram::BucketBoundaries buckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                                   0.01,   0.025,   0.05,   0.1,   0.25,   1};
      const double seconds = std::chrono::duration<double>(steady::now() - start).count();
      latency->Add({{"route", label}, {"status", status}}, buckets).Observe(seconds);
      if (opts.access_log) {
        char ms[32];
        std::snprintf(ms, sizeof ms, "%.3f", seconds * 1000);
        model::log_scope fields({{"request_id", record->request_id},
                                 {"method", record->method},
                                 {"path", record->path},
                                 {"status", status, false},
                                 {"bytes", std::to_string(r.body.size()), false},
                                 {"duration_ms", ms, false},
                                 {"agent", record->agent},
                                 {"ip", record->ip}},
                                model::log_scope::outer_fields::hide);  // the request's scope has the id too
        spdlog::info("access");
      }
      respond(std::move(r));
    };
  }

  void handle(request req, responder respond_raw) {
    // Lines logged while this request is handled on this thread carry its id.
    model::log_scope scope({{"request_id", req.request_id}});
    auto record = std::make_shared<access_record>(
        access_record{req.request_id, req.method, req.target.substr(0, req.target.find('?')).substr(0, 200),
                      req.remote_ip, std::string(req.header("x-agent-id").substr(0, 256))});
    auto parsed = boost::urls::parse_origin_form(req.target);
    if (!parsed) {
      auto respond = finishing(req, "unmatched", record, std::move(respond_raw));
      return respond(bad_request("malformed request target"));
    }
    const boost::urls::url_view url = *parsed;
    const auto route = match(url.encoded_path());
    auto respond = finishing(req, route.label, record, std::move(respond_raw));
    if (route.id == route_id::none)
      return respond(error_response({errc::not_found, "no route for " + req.method + " " +
                                                          std::string(url.encoded_path().substr(0, 200))}));
    if (req.method == "OPTIONS") {
      response r;
      r.status = 204;
      r.content_type.clear();
      r.headers.emplace_back("Allow", std::string(route.allow) + ", OPTIONS");
      r.headers.emplace_back("Access-Control-Allow-Methods", std::string(route.allow) + ", OPTIONS");
      r.headers.emplace_back("Access-Control-Allow-Headers",
                             "Content-Type, Authorization, X-Agent-ID, Idempotency-Key, Last-Event-ID");
      r.headers.emplace_back("Access-Control-Max-Age", "600");
      return respond(std::move(r));
    }
    if (!method_allowed(route.allow, req.method)) {
      auto r = error_response({errc::invalid_argument, "method " + req.method + " is not allowed on " +
                                                           std::string(route.label) + "; use " +
                                                           std::string(route.allow)});
      r.status = 405;
      r.headers.emplace_back("Allow", std::string(route.allow) + ", OPTIONS");
      return respond(std::move(r));
    }
    query_params q;
    for (auto p : url.params()) q.items.emplace_back(p.key, p.has_value ? p.value : std::string());

    caller who;
    who.ip = req.remote_ip;
    if (!public_route(route.id)) {
      auto authenticated = authn.authenticate(req, false);
      if (!authenticated) {
        refusals->Add({{"reason", "unauthenticated"}}).Increment();
        return respond(error_response(authenticated.error()));
      }
      who = std::move(*authenticated);
      if (who.principal) {
        // X-Agent-ID, when sent, must name the token's subject; then it is the subject.
        if (auto claimed = req.header("x-agent-id"); !claimed.empty())
          if (auto ok = acting_as(who, claimed); !ok) return respond(error_response(ok.error()));
        req.set_header("x-agent-id", who.principal->agent);
        record->agent = who.principal->agent;
      }
    }
    if (rate_limiter* limiter = limiter_for(route.id, req.method)) {
      if (auto wait = limiter->take(who.limit_key(), rate_limiter::clock::now())) {
        refusals->Add({{"reason", "rate_limited"}}).Increment();
        const auto seconds = retry_after_seconds(*wait);
        auto r = error_response({errc::rate_limited, "rate limit exceeded for " + limiter->what() + "; retry after " +
                                                         std::to_string(seconds) + "s"});
        for (auto& [k, v] : r.headers)
          if (k == "Retry-After") v = std::to_string(seconds);
        return respond(std::move(r));
      }
    }

    switch (route.id) {
      case route_id::healthz: {
        response r;
        r.body = "OK";
        r.content_type = "text/plain; charset=utf-8";
        return respond(std::move(r));
      }
      case route_id::readyz: return respond(readiness());
      case route_id::search: return search(req, q, who, std::move(respond));
      case route_id::metrics: {
        response r;
        auto families = registry->Collect();
        for (auto& f : process_metric_families()) families.push_back(std::move(f));
        r.body = prometheus::TextSerializer().Serialize(families);
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        return respond(std::move(r));
      }
      case route_id::ui_live: {
        response r;
        r.body = std::string(live_html());
        r.content_type = "text/html; charset=utf-8";
        r.headers.emplace_back("Content-Security-Policy",
                               "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'");
        r.headers.emplace_back("X-Frame-Options", "DENY");
        return respond(std::move(r));
      }
      case route_id::lock_collection:
      case route_id::lock_one:
      case route_id::lock_renew:
        if (!locks) return respond(error_response({errc::unavailable, "locks are not enabled"}));
        return handle_locks(req, route, q, who, std::move(respond));
      case route_id::unit_append: return append_one(req, url.encoded_path(), who, std::move(respond));
      case route_id::batch_append: return append_batch(req, url.encoded_path(), who, std::move(respond));
      case route_id::unit_get: return get_unit(route, q, who, std::move(respond));
      case route_id::unit_list: return list_units(route, q, who, std::move(respond));
      case route_id::context_list: return list_contexts(q, who, std::move(respond));
      case route_id::context_one:
        if (req.method == "PATCH") return patch_context(req, route, who, std::move(respond));
        return get_context(route, who, std::move(respond));
      case route_id::none: break;
    }
    respond(error_response({errc::internal, "unhandled route"}));
  }

  rate_limiter* limiter_for(route_id id, std::string_view method) {
    switch (id) {
      case route_id::unit_append:
      case route_id::batch_append: return &write_limit;
      case route_id::context_one: return method == "PATCH" ? &write_limit : nullptr;
      case route_id::search: return &search_limit;
      case route_id::lock_collection: return method == "POST" ? &lock_limit : nullptr;
      case route_id::lock_one: return method == "DELETE" ? &lock_limit : nullptr;
      case route_id::lock_renew: return method == "POST" ? &lock_limit : nullptr;
      default: return nullptr;
    }
  }

  // 200 once storage has recovered; the search index may still be catching up
  // (writes and reads do not wait for it), which the body reports.
  response readiness() const {
    if (!eng.ready()) return json_response(503, json{{"status", "recovering"}});
    json body{{"status", "ready"}};
    if (auto s = eng.search_status()) {
      body["search"] = {{"state", search::to_string(s->state)},
                        {"lag", s->lag},
                        {"documents", s->documents},
                        {"pending_merges", s->pending_merges}};
      if (!s->error.empty()) body["search"]["error"] = s->error;
      body["search"]["vectors"] = {{"count", s->vectors.vectors},
                                   {"lag", s->vectors.lag},
                                   {"state", s->vectors.catching_up ? "catching_up" : "ready"}};
      if (s->embedder) {
        body["search"]["embedder"] = {{"up", s->embedder->up}, {"backlog", s->embedder->backlog}};
        if (!s->embedder->error.empty()) body["search"]["embedder"]["error"] = s->embedder->error;
      }
    }
    return json_response(200, body);
  }

  // ---- /search ------------------------------------------------------------------
  void search(const request& req, const query_params& q, const caller& who, responder respond) {
    model::result<search_request> parsed = [&]() -> model::result<search_request> {
      if (req.method == "GET") return parse_search_params(q.items);
      auto body = parse_body(req);
      if (!body) return std::unexpected(body.error());
      return parse_search_body(*body);
    }();
    if (!parsed) return respond(error_response(parsed.error()));
    if (who.principal) {
      const auto& ctx = parsed->query.context_id;
      if (!ctx.empty() && !ctx.ends_with('*') && !who.can(auth::read, ctx))
        return respond(forbidden("not allowed to read context '" + ctx + "'"));
      parsed->query.scope = who.principal->scope(auth::read);
    }
    const size_t offset = parsed->query.offset;
    eng.search(std::move(parsed->query), parsed->limit,
               [respond = std::move(respond), offset](model::result<search::results> r) {
                 if (!r) return respond(error_response(r.error()));
                 respond(search_response(*r, offset));
               });
  }

  // The v3 shape ({"results":[ids],"total_count","limit","offset"}) plus hits.
  static response search_response(const search::results& r, size_t offset) {
    json ids = json::array();
    json hits = json::array();
    const bool ranked = r.mode != search::search_mode::keyword;
    for (const auto& h : r.hits) {
      ids.push_back(h.id);
      json hit{{"id", h.id},
               {"context_id", h.context_id},
               {"seq", h.seq},
               {"score", h.score},
               {"ts", model::timestamp_json(h.ts_ns)},
               {"snippet", h.snippet}};
      if (ranked) {  // per-signal ranks: null where a signal did not find the unit
        hit["keyword_rank"] = h.keyword_rank ? json(*h.keyword_rank) : json(nullptr);
        hit["vector_rank"] = h.vector_rank ? json(*h.vector_rank) : json(nullptr);
        hit["keyword_score"] = h.keyword_score ? json(*h.keyword_score) : json(nullptr);
        hit["vector_score"] = h.vector_score ? json(*h.vector_score) : json(nullptr);
      }
      hits.push_back(std::move(hit));
    }
    json body{{"results", std::move(ids)},
              {"total_count", r.total},
              {"total_count_exact", r.total_exact},
              {"limit", r.limit},
              {"offset", offset},
              {"mode", search::to_string(r.mode)},
              {"hits", std::move(hits)}};
    if (!r.degraded.empty()) body["degraded"] = r.degraded;
    return json_response(200, body);
  }

  static void respond_units(const responder& respond, model::result<storage::append_result> r,
                            bool single) {
    if (!r) return respond(error_response(r.error()));
    response resp;
    resp.status = 201;
    if (single) {
      resp.body = "{\"work_unit\":";
      model::append_unit_json(resp.body, r->units.front());
      resp.body.push_back('}');
    } else {
      resp.body = units_json("work_units", r->units);
      resp.body.push_back('}');
    }
    if (r->replayed) resp.headers.emplace_back("Idempotent-Replayed", "true");
    respond(std::move(resp));
  }

  void append_one(const request& req, std::string_view path, const caller& who, responder respond) {
    auto body = parse_body(req);
    if (!body) return respond(error_response(body.error()));
    auto unit = model::unit_from_json(*body, {"", req.header("x-agent-id")});
    if (!unit) return respond(error_response(unit.error()));
    if (auto ok = acting_as(who, unit->agent_id()); !ok) return respond(error_response(ok.error()));
    if (!who.can(auth::write, unit->context_id()))
      return respond(forbidden("not allowed to write to context '" + unit->context_id() + "'"));
    auto key = idempotency_key_header(req);
    if (!key) return respond(error_response(key.error()));
    std::vector<storage::fence> fences;
    if (auto ok = parse_fence(*body, fences); !ok) return respond(error_response(ok.error()));
    std::string ctx = unit->context_id();
    std::vector<api::WorkUnit> units;
    units.push_back(std::move(*unit));
    eng.append(std::move(ctx), std::move(units), {std::move(*key), fingerprint(req, path)},
               [respond = std::move(respond)](auto r) { respond_units(respond, std::move(r), true); },
               std::move(fences));
  }

  // {"context_id":"…","agent_id"?:"…","work_units":[{…},…]}: one context, all or none.
  void append_batch(const request& req, std::string_view path, const caller& who, responder respond) {
    auto body = parse_body(req);
    if (!body) return respond(error_response(body.error()));
    const auto ctx_it = body->find("context_id");
    if (ctx_it == body->end() || !ctx_it->is_string())
      return respond(bad_request("context_id is required and must be a string"));
    const std::string ctx = ctx_it->get<std::string>();
    if (auto bad = model::check_identifier("context_id", ctx, model::max_id_bytes))
      return respond(bad_request(*bad));
    std::string agent(req.header("x-agent-id"));
    if (auto a = body->find("agent_id"); a != body->end() && !a->is_null()) {
      if (!a->is_string()) return respond(bad_request("agent_id must be a string"));
      if (!a->get_ref<const std::string&>().empty()) agent = a->get<std::string>();
    }
    if (auto ok = acting_as(who, agent); !ok) return respond(error_response(ok.error()));
    if (!who.can(auth::write, ctx)) return respond(forbidden("not allowed to write to context '" + ctx + "'"));
    const auto list = body->find("work_units");
    if (list == body->end() || !list->is_array())
      return respond(bad_request("work_units is required and must be an array of work units"));
    if (list->empty()) return respond(bad_request("work_units must not be empty"));
    if (list->size() > eng.opts().max_batch_units)
      return respond(bad_request("a batch holds at most " + std::to_string(eng.opts().max_batch_units) +
                                 " work units"));
    std::vector<api::WorkUnit> units;
    units.reserve(list->size());
    std::vector<storage::fence> fences;
    if (auto ok = parse_fence(*body, fences); !ok) return respond(error_response(ok.error()));
    for (size_t i = 0; i < list->size(); ++i) {
      if ((*list)[i].is_object())
        if (auto ok = parse_fence((*list)[i], fences); !ok)
          return respond(bad_request("work_units[" + std::to_string(i) + "]: " + ok.error().message));
      auto unit = model::unit_from_json((*list)[i], {ctx, agent});
      if (!unit)
        return respond(bad_request("work_units[" + std::to_string(i) + "]: " + unit.error().message));
      if (unit->context_id() != ctx)
        return respond(bad_request("work_units[" + std::to_string(i) +
                                   "]: context_id differs from the batch's context_id"));
      if (auto ok = acting_as(who, unit->agent_id()); !ok)
        return respond(forbidden("work_units[" + std::to_string(i) + "]: " + ok.error().message));
      units.push_back(std::move(*unit));
    }
    auto key = idempotency_key_header(req);
    if (!key) return respond(error_response(key.error()));
    eng.append(ctx, std::move(units), {std::move(*key), fingerprint(req, path)},
               [respond = std::move(respond)](auto r) { respond_units(respond, std::move(r), false); },
               std::move(fences));
  }

  // ---- /locks -------------------------------------------------------------------
  // Locks are authorized by the `lock` capability on the resource path (the same
  // pattern language as contexts); a lock's context_id also needs `write` there.
  void handle_locks(const request& req, const matched_route& route, const query_params& q, const caller& who,
                    responder respond) {
    if (route.id == route_id::lock_collection) {
      if (req.method == "GET") {
        const auto* agent = q.get("agent_id");
        const auto* prefix = q.get("prefix");
        json list = json::array();
        for (const auto& l : locks->list(agent ? *agent : "", prefix ? *prefix : ""))
          if (who.can(auth::lock, l.resource_path())) list.push_back(model::to_json(l));
        return respond(json_response(200, json{{"locks", std::move(list)}}));
      }
      return acquire(req, who, std::move(respond));
    }
    matched_route target = route;
    if (route.id == route_id::lock_renew) {
      if (req.method != "POST") {
        // A resource whose path ends in "/renew", addressed with GET or DELETE.
        target.id = route_id::lock_one;
      } else {
        target.encoded_param = route.encoded_param.substr(0, route.encoded_param.size() - 6);
      }
    }
    auto resource = path_param(target, "resource_path");
    if (!resource) return respond(error_response(resource.error()));
    if (!who.can(auth::lock, *resource))
      return respond(forbidden("not allowed to lock '" + *resource + "'"));
    if (target.id == route_id::lock_renew) {
      json body = json::object();
      if (!req.body.empty()) {
        auto parsed = parse_body(req);
        if (!parsed) return respond(error_response(parsed.error()));
        body = std::move(*parsed);
      }
      auto renew = parse_renew_body(body, req.header("x-agent-id"));
      if (!renew) return respond(error_response(renew.error()));
      if (auto ok = acting_as(who, renew->agent); !ok) return respond(error_response(ok.error()));
      return locks->renew(*resource, std::move(renew->agent), std::move(renew->lock_id), renew->ttl,
                          [respond = std::move(respond)](auto r) {
                            if (!r) return respond(error_response(r.error()));
                            respond(json_response(200, json{{"lock", model::to_json(*r)}}));
                          });
    }
    if (req.method == "GET") {
      auto l = locks->get(*resource);
      if (!l) return respond(error_response({errc::not_found, "no lock on '" + *resource + "'"}));
      return respond(json_response(200, json{{"lock", model::to_json(*l)}}));
    }
    // DELETE
    const auto* agent = q.get("agent_id");
    const auto* lock_id = q.get("lock_id");
    std::string holder = agent ? *agent : std::string(req.header("x-agent-id"));
    if (holder.empty()) return respond(bad_request("agent_id is required (query or X-Agent-ID)"));
    if (auto ok = acting_as(who, holder); !ok) return respond(error_response(ok.error()));
    if (!lock_id || lock_id->empty()) return respond(bad_request("lock_id is required"));
    locks->release(*resource, holder, *lock_id, [respond = std::move(respond)](model::status ok) {
      if (!ok) return respond(error_response(ok.error()));
      respond(json_response(200, json{{"released", true}}));
    });
  }

  void acquire(const request& req, const caller& who, responder respond) {
    auto body = parse_body(req);
    if (!body) return respond(error_response(body.error()));
    auto parsed = parse_acquire_body(*body, req.header("x-agent-id"));
    if (!parsed) return respond(error_response(parsed.error()));
    auto& ar = parsed->request;
    const bool multi = parsed->multi;
    if (auto ok = acting_as(who, ar.agent); !ok) return respond(error_response(ok.error()));
    for (const auto& r : ar.resources)
      if (!who.can(auth::lock, r)) return respond(forbidden("not allowed to lock '" + r + "'"));
    if (!ar.context_id.empty() && !who.can(auth::write, ar.context_id))
      return respond(forbidden("not allowed to write to context '" + ar.context_id + "'"));
    locks->acquire(std::move(ar), [respond = std::move(respond), multi](auto r) {
      if (!r) return respond(error_response(r.error()));
      if (!multi) return respond(json_response(200, json{{"lock", model::to_json(r->front())}}));
      json list = json::array();
      for (const auto& l : *r) list.push_back(model::to_json(l));
      respond(json_response(200, json{{"locks", std::move(list)}}));
    });
  }

  void get_unit(const matched_route& route, const query_params& q, const caller& who, responder respond) {
    auto id = path_param(route, "work unit id");
    if (!id) return respond(error_response(id.error()));
    bool with_embedding = false;
    if (const auto* include = q.get("include")) {
      if (*include == "embedding") with_embedding = true;
      else if (!include->empty())
        return respond(error_response({errc::invalid_argument, "include must be \"embedding\""}));
    }
    auto unit = eng.get_unit(*id);
    if (!unit) return respond(error_response(unit.error()));
    // Indistinguishable from a unit that does not exist: ids do not reveal contexts.
    if (!who.can(auth::read, unit->context_id()))
      return respond(error_response({errc::not_found, "Work unit not found"}));
    response r;
    r.body = "{\"work_unit\":" + model::unit_json(*unit);
    if (with_embedding) {
      auto vector = eng.get_vector(*id);
      if (!vector) return respond(error_response(vector.error()));
      // Inside the unit object: replace its closing brace.
      r.body.pop_back();
      if (*vector) model::append_embedding_json(r.body, **vector);
      else r.body.append(",\"embedding\":null,\"embedding_model\":null");
      r.body.push_back('}');
    }
    r.body.push_back('}');
    respond(std::move(r));
  }

  void list_units(const matched_route& route, const query_params& q, const caller& who, responder respond) {
    auto ctx = path_param(route, "context id");
    if (!ctx) return respond(error_response(ctx.error()));
    if (!who.can(auth::read, *ctx)) return respond(forbidden("not allowed to read context '" + *ctx + "'"));
    engine::list_request lr;
    auto limit = uint_param(q, "limit");
    auto reverse = bool_param(q, "reverse");
    auto after = uint_param(q, "after_seq");
    if (!limit) return respond(error_response(limit.error()));
    if (!reverse) return respond(error_response(reverse.error()));
    if (!after) return respond(error_response(after.error()));
    lr.limit = *limit;
    lr.reverse = *reverse;
    lr.after_seq = after->value_or(0);
    if (const auto* c = q.get("cursor")) lr.cursor = *c;
    auto page = eng.list_units(*ctx, lr);
    if (!page) return respond(error_response(page.error()));
    response r;
    r.body = units_json("work_units", page->units);
    r.body.append(",\"next_cursor\":");
    model::append_json_string(r.body, page->next_cursor);
    r.body.push_back('}');
    respond(std::move(r));
  }

  void get_context(const matched_route& route, const caller& who, responder respond) {
    auto id = path_param(route, "context id");
    if (!id) return respond(error_response(id.error()));
    if (!who.can(auth::read, *id)) return respond(forbidden("not allowed to read context '" + *id + "'"));
    auto ctx = eng.get_context(*id);
    if (!ctx) return respond(error_response(ctx.error()));
    respond(json_response(200, json{{"context", model::to_json(*ctx)}}));
  }

  void patch_context(const request& req, const matched_route& route, const caller& who, responder respond) {
    auto id = path_param(route, "context id");
    if (!id) return respond(error_response(id.error()));
    if (!who.can(auth::write, *id)) return respond(forbidden("not allowed to write to context '" + *id + "'"));
    auto body = parse_body(req);
    if (!body) return respond(error_response(body.error()));
    auto patch = model::patch_from_json(*body);
    if (!patch) return respond(error_response(patch.error()));
    eng.patch_context(std::move(*id), std::move(*patch), [respond = std::move(respond)](auto r) {
      if (!r) return respond(error_response(r.error()));
      respond(json_response(200, json{{"context", model::to_json(*r)}}));
    });
  }

  // Lists only readable contexts; a page may hold fewer than `limit` (next_cursor
  // still says whether more follow).
  void list_contexts(const query_params& q, const caller& who, responder respond) {
    auto limit = uint_param(q, "limit");
    if (!limit) return respond(error_response(limit.error()));
    const auto* cursor = q.get("cursor");
    auto page = eng.list_contexts(cursor ? *cursor : std::string(), *limit);
    if (!page) return respond(error_response(page.error()));
    json list = json::array();
    for (const auto& c : page->contexts)
      if (who.can(auth::read, c.id())) list.push_back(model::to_json(c));
    respond(json_response(200, json{{"contexts", std::move(list)}, {"next_cursor", page->next_cursor}}));
  }
};

api_handler::api_handler(engine::engine& engine, const options& opts,
                         std::shared_ptr<prometheus::Registry> metrics, locks::manager* locks)
    : impl_(std::make_unique<impl>(engine, opts, std::move(metrics))) {
  impl_->locks = locks;
}
api_handler::~api_handler() = default;

void api_handler::handle(request req, responder respond) {
  // Last line of defence: no exception escapes a request (STYLE.md, Errors).
  try {
    impl_->handle(std::move(req), respond);
  } catch (const std::exception& e) {
    respond(error_response({errc::internal, std::string("internal error: ") + e.what()}));
  }
}

}  // namespace engram::gateway
