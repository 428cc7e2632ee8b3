// Operations: liveness, readiness, metrics, the live page and the dashboard's files.
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <xxhash.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <span>

#include "gateway/process_metrics.hpp"
#include "gateway/routes.hpp"
#include "gateway/stream_registry.hpp"

namespace engram::gateway {

std::string_view live_html();     // web_assets.cpp, generated from web/live.html
std::string_view openapi_yaml();  // web_assets.cpp, generated from api/openapi.yaml
std::span<const std::pair<std::string_view, std::string_view>> ui_assets();  // web_assets.cpp, from web/ui/*

// A consistent copy of the database while serving (storage::store::backup). Needs
// the admin capability on "*" when auth is on: it writes to the server's disk.
void backup(services& s, call& c, responder respond) {
  if (!c.who.can(auth::admin, "*")) return respond(forbidden(auth::admin, "*"));
  auto body = parse_body(s, c.req, fields::backup, "the backup request");
  if (!body) return respond(error_response(body.error()));
  const auto dir = body->find("dir");
  if (dir == body->end() || !dir->is_string() || dir->get<std::string>().empty())
    return respond(bad_request("\"dir\" must name the backup's directory (a new one, inside storage.backup_dir)"));
  const auto started = std::chrono::steady_clock::now();
  s.eng.backup(dir->get<std::string>(), [started, respond = std::move(respond)](model::result<std::string> path) {
    if (!path) return respond(error_response(path.error()));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    respond(json_response(201, nlohmann::json{{"backup", {{"dir", *path}, {"seconds", seconds}}}}));
  });
}

void healthz(services&, call&, responder respond) {
  response r;
  r.body = "OK";
  r.content_type = "text/plain; charset=utf-8";
  respond(std::move(r));
}

// 200 once storage has recovered; the search index may still be catching up
// (writes and reads do not wait for it), which the body reports.
void readyz(services& s, call&, responder respond) {
  using nlohmann::json;
  if (!s.eng.ready()) return respond(json_response(503, json{{"status", "recovering"}}));
  json body{{"status", "ready"}};
  if (auto st = s.eng.search_status()) {
    auto& search = body["search"];
    search = {{"state", search::to_string(st->state)},
              {"lag", st->lag},
              {"documents", st->documents},
              {"pending_merges", st->pending_merges}};
    if (!st->error.empty()) search["error"] = st->error;
    search["vectors"] = {{"count", st->vectors.vectors},
                         {"lag", st->vectors.lag},
                         {"state", st->vectors.catching_up ? "catching_up" : "ready"}};
    if (st->embedder) {
      search["embedder"] = {{"up", st->embedder->up}, {"backlog", st->embedder->backlog}};
      if (!st->embedder->error.empty()) search["embedder"]["error"] = st->embedder->error;
    }
  }
  respond(json_response(200, body));
}

void metrics(services& s, call& c, responder respond) {
  if (s.streams) s.streams->refresh_metrics();
  response r;
  auto families = s.metrics.Collect();
  // Per-context gauges name contexts: only for a caller who may read them all.
  if (!c.who.can(auth::read, "*"))
    std::erase_if(families, [](const prometheus::MetricFamily& f) { return f.name.starts_with("engram_stream_context_"); });
  for (auto& f : process_metric_families()) families.push_back(std::move(f));
  r.body = prometheus::TextSerializer().Serialize(families);
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  respond(std::move(r));
}

void ui_live(services&, call&, responder respond) {
  response r;
  r.body = std::string(live_html());
  r.content_type = "text/html; charset=utf-8";
  r.headers.emplace_back("Content-Security-Policy",
                         "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                         "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'");
  r.headers.emplace_back("X-Frame-Options", "DENY");
  respond(std::move(r));
}

namespace {

response redirect(unsigned status, std::string location) {
  response r;
  r.status = status;
  r.content_type = "text/plain; charset=utf-8";
  r.body = "see " + location + "\n";
  r.headers.emplace_back("Location", std::move(location));
  return r;
}

std::string_view content_type_of(std::string_view name) {
  const auto dot = name.rfind('.');
  const auto ext = dot == std::string_view::npos ? std::string_view() : name.substr(dot + 1);
  if (ext == "html") return "text/html; charset=utf-8";
  if (ext == "js") return "text/javascript; charset=utf-8";
  if (ext == "css") return "text/css; charset=utf-8";
  if (ext == "svg") return "image/svg+xml";
  if (ext == "txt" || ext == "md") return "text/plain; charset=utf-8";
  return "application/octet-stream";
}

}  // namespace

// The dashboard (web/ui, README "Dashboard"): /ui/ is its index.html; every asset is
// in the binary, revalidated by ETag, and the page may load nothing from elsewhere.
void ui_asset(services&, call& c, responder respond) {
  const std::string* file = c.param("file");
  std::string_view name = file && !file->empty() ? std::string_view(*file) : "index.html";
  for (const auto& [asset, body] : ui_assets()) {
    if (asset != name) continue;
    char tag[40];
    std::snprintf(tag, sizeof tag, "\"%016llx\"", static_cast<unsigned long long>(XXH3_64bits(body.data(), body.size())));
    response r;
    r.headers.emplace_back("ETag", tag);
    r.headers.emplace_back("Cache-Control", "no-cache");
    r.headers.emplace_back("X-Frame-Options", "DENY");
    r.headers.emplace_back("Content-Security-Policy",
                           "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'");
    if (c.req.header("if-none-match") == tag) {
      r.status = 304;
      r.content_type.clear();
      return respond(std::move(r));
    }
    r.body = std::string(body);
    r.content_type = std::string(content_type_of(name));
    return respond(std::move(r));
  }
  respond(error_response({model::errc::not_found, "no dashboard file '" + std::string(name.substr(0, 200)) + "'"}));
}

void ui_redirect(services&, call&, responder respond) { respond(redirect(301, "/ui/")); }

// A browser pointed at the server lands on the dashboard rather than on a 404.
void root(services&, call&, responder respond) { respond(redirect(302, "/ui/")); }

// The API description this binary implements (api/openapi.yaml), for tools that
// generate clients or browse the API.
void openapi(services&, call&, responder respond) {
  response r;
  r.body = std::string(openapi_yaml());
  r.content_type = "application/yaml; charset=utf-8";
  respond(std::move(r));
}

}  // namespace engram::gateway
