#include "gateway/handler.hpp"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>
#include <atomic>
#include <charconv>
#include <chrono>
#include <string_view>
#include <unordered_map>

#include "gateway/access_log.hpp"
#include "gateway/routes.hpp"
#include "model/log_context.hpp"
#include "model/text.hpp"

namespace engram::gateway {

namespace {

using model::errc;
using steady = std::chrono::steady_clock;

// The method as a metric label: a client that invents methods must not invent
// label sets (each one a counter and a histogram kept for the process's life).
std::string_view method_label(std::string_view method) {
  for (std::string_view known : {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
    if (method == known) return known;
  return "other";
}

// What the access log says about a request, filled in as it is handled.
struct access_record {
  std::string request_id, method, path, ip, agent;
};

}  // namespace

struct api_handler::impl {
  engine::engine& eng;
  options opts;
  std::shared_ptr<prometheus::Registry> registry;
  stream_registry* streams;
  services svc{eng, opts, *registry, streams, {}};
  prometheus::Family<prometheus::Counter>* requests;
  prometheus::Family<prometheus::Histogram>* latency;
  prometheus::Family<prometheus::Counter>* refusals;
  std::shared_ptr<const authenticator> authn;
  rate_limiter write_limit, search_limit, lock_limit;

  impl(engine::engine& e, const options& o, std::shared_ptr<prometheus::Registry> r,
       std::shared_ptr<const authenticator> a, stream_registry* st)
      : eng(e), opts(o), registry(std::move(r)), streams(st), authn(std::move(a)),
        write_limit(o.limits.writes, "writes"),
        search_limit(o.limits.searches, "searches"),
        lock_limit(o.limits.locks, "lock operations") {
    svc.dispatch = [this](request req, responder respond) {
      try {
        handle(std::move(req), respond);
      } catch (const std::exception& e) {
        respond(error_response({errc::internal, std::string("internal error: ") + e.what()}));
      }
    };
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

  // The request counter and latency histogram of one route, method and status.
  // prometheus-cpp's Family::Add (thread-safe) builds a metric, a histogram with
  // its buckets, on every call and drops it when the labels exist; so each thread
  // keeps the combinations it has used, and asks Family::Add once per combination.
  // Metrics are never removed, so the pointers stay valid. (One map under a mutex
  // before: both I/O threads queued on it.)
  struct route_metrics {
    prometheus::Counter* requests;
    prometheus::Histogram* latency;
  };
  const uint64_t id = next_id.fetch_add(1);  // tells this handler's entries in a thread's cache from another's
  static inline std::atomic<uint64_t> next_id{1};

  route_metrics metrics_for(std::string_view label, std::string_view request_method, unsigned status) {
    const std::string_view method = method_label(request_method);
    char code[16];
    const std::string_view code_text(code, std::to_chars(code, code + sizeof code, status).ptr);
    thread_local std::string key;
    key.assign(label).append(1, ' ').append(method).append(1, ' ').append(code_text);
    thread_local struct {
      uint64_t owner = 0;
      std::unordered_map<std::string, route_metrics> seen;
    } local;
    if (local.owner != id) {  // another handler's (tests run several in turn): not ours to use
      local.owner = id;
      local.seen.clear();
    }
    if (auto it = local.seen.find(key); it != local.seen.end()) return it->second;
    static const prometheus::Histogram::BucketBoundaries buckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                                 0.01,   0.025,   0.05,   0.1,   0.25,   1};
    const std::string route(label), method_name(method), code_name(code_text);
    const route_metrics m{&requests->Add({{"route", route}, {"method", method_name}, {"status", code_name}}),
                          &latency->Add({{"route", route}, {"status", code_name}}, buckets)};
    local.seen.emplace(key, m);
    return m;
  }

  rate_limiter* limiter(limit_class c) {
    switch (c) {
      case limit_class::writes: return &write_limit;
      case limit_class::searches: return &search_limit;
      case limit_class::locks: return &lock_limit;
      case limit_class::none: break;
    }
    return nullptr;
  }

  std::optional<std::string> allowed_origin(const request& req) const {
    const auto origin = req.header("origin");
    for (const auto& o : opts.cors_origins) {
      if (o == "*") return std::string("*");
      if (!origin.empty() && o == origin) return std::string(origin);
    }
    return std::nullopt;
  }

  // Wraps the responder: CORS, metrics and the access-log line (no query strings,
  // bodies or headers: they may carry payloads or credentials).
  responder finishing(const request& req, std::string_view label, std::shared_ptr<access_record> record,
                      responder respond) {
    auto origin = allowed_origin(req);
    return [this, origin = std::move(origin), label, record = std::move(record),
            start = steady::now(), respond = std::move(respond)](response r) {
      if (origin) {
        r.headers.emplace_back("Access-Control-Allow-Origin", *origin);
        if (*origin != "*") r.headers.emplace_back("Vary", "Origin");
        r.headers.emplace_back("Access-Control-Expose-Headers", "Retry-After, Idempotent-Replayed, X-Request-Id, Mcp-Session-Id");
      }
      const auto metrics = metrics_for(label, record->method, r.status);
      metrics.requests->Increment();
      const double seconds = std::chrono::duration<double>(steady::now() - start).count();
      metrics.latency->Observe(seconds);
      if (opts.access_log) {
        access_line line;
        line.request_id = record->request_id;
        line.method = record->method;
        line.path = record->path;
        line.status = r.status;
        line.bytes = r.body.size();
        line.seconds = seconds;
        line.agent = record->agent;
        line.ip = record->ip;
        log_access(line);
      }
      respond(std::move(r));
    };
  }

  // Route → authenticate → rate limit → subject and grant → the route.
  void handle(request req, responder respond_raw) {
    auto record = std::make_shared<access_record>(
        access_record{req.request_id, req.method, req.target.substr(0, req.target.find('?')).substr(0, 200),
                      req.remote_ip, std::string(req.header("x-agent-id").substr(0, 256))});
    // Lines logged while this request is handled on this thread carry its id (the
    // scope views it: `req` moves on, `record` stays).
    const model::log_field id_field[] = {{"request_id", record->request_id}};
    model::log_scope scope(id_field);
    auto parsed = boost::urls::parse_origin_form(req.target);
    if (!parsed) {
      auto respond = finishing(req, "unmatched", record, std::move(respond_raw));
      return respond(bad_request("malformed request target"));
    }
    const boost::urls::url_view url = *parsed;
    const std::string path(url.encoded_path());
    auto m = match_route(req.method, path);
    auto respond = finishing(req, m.label, record, std::move(respond_raw));
    if (!m.hit && m.allow.empty())
      return respond(error_response({errc::not_found, "no route for " + req.method + " " + path.substr(0, 200)}));
    if (req.method == "OPTIONS") {
      response r;
      r.status = 204;
      r.content_type.clear();
      r.headers.emplace_back("Allow", m.allow + ", OPTIONS");
      r.headers.emplace_back("Access-Control-Allow-Methods", m.allow + ", OPTIONS");
      r.headers.emplace_back("Access-Control-Allow-Headers",
                             "Content-Type, Authorization, X-Agent-ID, Idempotency-Key, Last-Event-ID, "
                             "MCP-Protocol-Version, Mcp-Session-Id");
      r.headers.emplace_back("Access-Control-Max-Age", "600");
      return respond(std::move(r));
    }
    if (!m.hit) {
      auto r = error_response(405, "method " + req.method + " is not allowed on " + std::string(m.label) + "; use " + m.allow);
      r.headers.emplace_back("Allow", m.allow + ", OPTIONS");
      return respond(std::move(r));
    }
    const route& rt = *m.hit;

    call c;
    c.who.ip = req.remote_ip;
    if (!rt.is_public) {
      auto authenticated = authn->authenticate(req, req.cookie_ok);
      if (!authenticated) {
        refusals->Add({{"reason", "unauthenticated"}}).Increment();
        return respond(error_response(authenticated.error()));
      }
      c.who = std::move(*authenticated);
      if (c.who.principal) {
        // X-Agent-ID, when sent, must name the token's subject; then it is the subject.
        if (auto claimed = req.header("x-agent-id"); !claimed.empty())
          if (auto ok = acting_as(c.who, claimed); !ok) return respond(error_response(ok.error()));
        req.set_header("x-agent-id", c.who.principal->agent);
        record->agent = c.who.principal->agent;
      }
    }
    if (rate_limiter* limit = limiter(rt.limit)) {
      if (auto wait = limit->take(c.who.limit_key(), rate_limiter::clock::now())) {
        refusals->Add({{"reason", "rate_limited"}}).Increment();
        const auto seconds = retry_after_seconds(*wait);
        return respond(error_response({errc::rate_limited, "rate limit exceeded for " + limit->what() +
                                                               "; retry after " + std::to_string(seconds) + "s"},
                                      std::chrono::seconds(seconds)));
      }
    }
    for (const auto& [name, encoded] : m.params) {
      auto pv = boost::urls::make_pct_string_view(encoded);
      const bool is_subject = rt.subject && name == rt.subject->param;
      if (!pv)
        return respond(bad_request((is_subject ? std::string(rt.subject->what) : "the path's " + std::string(name)) +
                                   " has invalid percent-encoding"));
      c.params.emplace_back(name, pv->decode());
      if (is_subject) c.subject = c.params.back().second;
    }
    if (rt.subject) {
      if (auto bad = model::check_identifier(rt.subject->what, c.subject, model::max_id_bytes))
        return respond(bad_request(*bad));
      if (rt.subject->need && !c.who.can(*rt.subject->need, c.subject))
        return respond(forbidden(*rt.subject->need, c.subject));
    }
    for (auto p : url.params()) c.query.items.emplace_back(p.key, p.has_value ? p.value : std::string());
    c.path = path;
    c.req = std::move(req);
    rt.fn(svc, c, std::move(respond));
  }
};

api_handler::api_handler(engine::engine& engine, const options& opts, std::shared_ptr<prometheus::Registry> metrics,
                         std::shared_ptr<const authenticator> authn, stream_registry* streams)
    : impl_(std::make_unique<impl>(engine, opts, std::move(metrics), std::move(authn), streams)) {}
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
