// Operations: liveness, readiness, metrics and the live page.
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <nlohmann/json.hpp>

#include "gateway/process_metrics.hpp"
#include "gateway/routes.hpp"
#include "gateway/stream_registry.hpp"

namespace engram::gateway {

std::string_view live_html();     // web_assets.cpp, generated from web/live.html
std::string_view openapi_yaml();  // web_assets.cpp, generated from api/openapi.yaml

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

// A browser pointed at the server lands on the page rather than on a 404.
void root(services&, call&, responder respond) {
  response r;
  r.status = 302;
  r.headers.emplace_back("Location", "/ui/live");
  r.content_type = "text/plain; charset=utf-8";
  r.body = "see /ui/live\n";
  respond(std::move(r));
}

// The API description this binary implements (api/openapi.yaml), for tools that
// generate clients or browse the API.
void openapi(services&, call&, responder respond) {
  response r;
  r.body = std::string(openapi_yaml());
  r.content_type = "application/yaml; charset=utf-8";
  respond(std::move(r));
}

}  // namespace engram::gateway
