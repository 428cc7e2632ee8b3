#include "gateway/routes.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <nlohmann/json.hpp>

#include "gateway/lock_params.hpp"
#include "model/codec.hpp"
#include "model/text.hpp"

namespace engram::gateway {

using model::errc;

namespace {

constexpr auto read = auth::read;
constexpr auto write = auth::write;
constexpr auto lock = auth::lock;
constexpr auto erase = auth::erase;
constexpr auto admin = auth::admin;
constexpr auto writes = limit_class::writes;
constexpr auto searches = limit_class::searches;
constexpr auto locks = limit_class::locks;

// DESIGN.md §5 plus extensions. Where two patterns match one path, the first wins
// for its method: POST …/renew before the resource routes (a resource may itself
// end in "/renew", and GET or DELETE on it reaches the lease).
constexpr auto unlimited = limit_class::none;
constexpr bool is_public = true, authenticated = false;
constexpr std::optional<subject_rule> no_subject;

//  method    pattern                     route          limit      access         subject
const route table[] = {
    {"GET",    "/healthz",                 healthz,       unlimited, is_public,     no_subject},
    {"GET",    "/readyz",                  readyz,        unlimited, is_public,     no_subject},
    {"GET",    "/metrics",                 metrics,       unlimited, authenticated, no_subject},
    {"GET",    "/",                        root,          unlimited, is_public,     no_subject},
    {"GET",    "/ui/live",                 ui_live,       unlimited, is_public,     no_subject},
    {"GET",    "/ui",                      ui_redirect,   unlimited, is_public,     no_subject},
    {"GET",    "/ui/",                     ui_asset,      unlimited, is_public,     no_subject},
    {"GET",    "/ui/{file*}",              ui_asset,      unlimited, is_public,     no_subject},
    {"GET",    "/openapi.yaml",            openapi,       unlimited, is_public,     no_subject},
    {"POST",   "/admin/backup",            backup,        writes,    authenticated, no_subject},
    {"POST",   "/workunit",                append_unit,   writes,    authenticated, no_subject},
    {"GET",    "/workunit/{id*}",          get_unit,      unlimited, authenticated, subject_rule{"id", "work unit id", {}}},
    {"POST",   "/workunits",               append_units,  writes,    authenticated, no_subject},
    {"GET",    "/workunits/{contextId*}",  list_units,    unlimited, authenticated, subject_rule{"contextId", "context id", read}},
    {"GET",    "/contexts",                list_contexts, unlimited, authenticated, no_subject},
    {"GET",    "/contexts/{id*}/events",   list_events,   unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"GET",    "/contexts/{id*}/subscribers", list_subscribers, unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"POST",   "/agents/{agent_id}/heartbeat", heartbeat, writes,   authenticated, no_subject},
    {"DELETE", "/agents/{agent_id}/presence",  leave_context, writes, authenticated, no_subject},
    {"GET",    "/contexts/{id*}/presence", list_presence, unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"POST",   "/contexts/{id*}/tasks",    create_task,   writes,    authenticated, subject_rule{"id", "context id", write}},
    {"GET",    "/contexts/{id*}/tasks",    list_tasks,    unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"GET",    "/tasks/{task_id}",         get_task,      unlimited, authenticated, no_subject},
    {"POST",   "/tasks/{task_id}/claim",   claim_task,    writes,    authenticated, no_subject},
    {"POST",   "/tasks/{task_id}/complete", complete_task, writes,   authenticated, no_subject},
    {"POST",   "/tasks/{task_id}/fail",    fail_task,     writes,    authenticated, no_subject},
    {"PUT",    "/contexts/{id*}/facts/{key}", set_fact,    writes,    authenticated, subject_rule{"id", "context id", write}},
    {"DELETE", "/contexts/{id*}/facts/{key}", retract_fact, writes,   authenticated, subject_rule{"id", "context id", write}},
    {"GET",    "/contexts/{id*}/facts/{key}", get_fact,    unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"GET",    "/contexts/{id*}/facts",    list_facts,    unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"POST",   "/contexts/{id*}/packet",   build_packet,  searches,  authenticated, subject_rule{"id", "context id", read}},
    {"POST",   "/mcp",                     mcp_post,      unlimited, authenticated, no_subject},
    {"GET",    "/mcp",                     mcp_other,     unlimited, is_public,     no_subject},
    {"DELETE", "/mcp",                     mcp_other,     unlimited, is_public,     no_subject},
    {"POST",   "/contexts/{id*}/drafts/{draft_id}/deltas", add_draft_delta, writes, authenticated, subject_rule{"id", "context id", write}},
    {"POST",   "/contexts/{id*}/drafts/{draft_id}/commit", commit_draft, writes, authenticated, subject_rule{"id", "context id", write}},
    {"GET",    "/contexts/{id*}/drafts/{draft_id}", get_draft, unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"DELETE", "/contexts/{id*}/drafts/{draft_id}", abort_draft, writes, authenticated, subject_rule{"id", "context id", write}},
    {"GET",    "/contexts/{id*}/drafts",   list_drafts,   unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"GET",    "/contexts/{id*}/tool-calls/{call_id}", get_tool_call, unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"PUT",    "/contexts/{id*}/agents/{agent_id}/checkpoint", put_checkpoint, writes, authenticated, subject_rule{"id", "context id", write}},
    {"GET",    "/contexts/{id*}/agents/{agent_id}/checkpoint", get_checkpoint, unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"GET",    "/contexts/{id*}/agents/{agent_id}/checkpoints", list_checkpoints, unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"GET",    "/contexts/{id*}",          get_context,   unlimited, authenticated, subject_rule{"id", "context id", read}},
    {"PATCH",  "/contexts/{id*}",          patch_context, writes,    authenticated, subject_rule{"id", "context id", write}},
    {"DELETE", "/contexts/{id*}",          delete_context, writes,   authenticated, subject_rule{"id", "context id", erase}},
    {"POST",   "/contexts/{id*}/import",   import_events, writes,    authenticated, subject_rule{"id", "context id", admin}},
    {"GET",    "/search",                  search,        searches,  authenticated, no_subject},
    {"POST",   "/search",                  search,        searches,  authenticated, no_subject},
    {"GET",    "/locks",                   list_locks,    unlimited, authenticated, no_subject},
    {"POST",   "/locks",                   acquire_locks, locks,     authenticated, no_subject},
    {"POST",   "/locks/{resource*}/renew", renew_lock,    locks,     authenticated, subject_rule{"resource", "resource_path", lock}},
    {"GET",    "/locks/{resource*}",       get_lock,      unlimited, authenticated, subject_rule{"resource", "resource_path", lock}},
    {"DELETE", "/locks/{resource*}",       release_lock,  locks,     authenticated, subject_rule{"resource", "resource_path", {}}},
};

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t slash = s.find('/', start);
    out.push_back(s.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    if (slash == std::string_view::npos) return out;
    start = slash + 1;
  }
}

// Matches the path's segments against `pattern`, capturing parameters (still
// percent-encoded). Every request is tried against the patterns in turn, so the
// pattern is walked in place: splitting each into a vector cost 6% of an I/O
// thread's time on appends at 50 connections (bench/README.md).
bool matches(std::string_view pattern, const std::vector<std::string_view>& segs,
             std::vector<std::pair<std::string_view, std::string>>& params) {
  params.clear();
  std::string_view rest = pattern.substr(1);  // the segments not yet matched
  size_t s = 0;
  while (true) {
    const size_t slash = rest.find('/');
    const std::string_view seg = rest.substr(0, slash);
    const std::string_view after = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    const bool param = seg.size() > 2 && seg.front() == '{' && seg.back() == '}';
    std::string_view name = param ? seg.substr(1, seg.size() - 2) : std::string_view{};
    if (!param) {
      if (s >= segs.size() || segs[s] != seg) return false;
      ++s;
    } else if (name.ends_with('*')) {
      // One or more segments: all but what the rest of the pattern needs.
      name.remove_suffix(1);
      const size_t needed = slash == std::string_view::npos ? 0 : size_t(std::ranges::count(after, '/')) + 1;
      if (segs.size() < s + needed + 1) return false;
      const size_t take = segs.size() - s - needed;
      std::string value;
      for (size_t i = 0; i < take; ++i) {
        if (i) value.push_back('/');
        value.append(segs[s + i]);
      }
      if (value.empty()) return false;
      params.emplace_back(name, std::move(value));
      s += take;
    } else {
      if (s >= segs.size() || segs[s].empty()) return false;
      params.emplace_back(name, std::string(segs[s++]));
    }
    if (slash == std::string_view::npos) break;
    rest = after;
  }
  return s == segs.size();
}

// The metric label of each route of the table: its pattern without the '*'. Built
// once, so that matching a request allocates no label.
const std::array<std::string, std::size(table)>& labels() {
  static const auto built = [] {
    std::array<std::string, std::size(table)> out;
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = table[i].pattern;
      std::erase(out[i], '*');
    }
    return out;
  }();
  return built;
}

}  // namespace

route_match match_route(std::string_view method, std::string_view encoded_path) {
  route_match m;
  if (!encoded_path.starts_with('/')) return m;
  const auto segs = split(encoded_path.substr(1));  // once per request, not per route
  std::vector<std::pair<std::string_view, std::string>> params;
  for (size_t i = 0; i < std::size(table); ++i) {
    const route& r = table[i];
    if (!matches(r.pattern, segs, params)) continue;
    if (r.method == method) {  // the first route for this method wins: no need to look further
      m.hit = &r;
      m.label = labels()[i];
      m.params = std::move(params);
      return m;
    }
    if (m.allow.empty()) m.label = labels()[i];
    if (m.allow.find(r.method) == std::string::npos) {
      if (!m.allow.empty()) m.allow.append(", ");
      m.allow.append(r.method);
    }
  }
  return m;
}

response json_response(unsigned status, const nlohmann::json& body) {
  response r;
  r.status = status;
  r.body = model::dump(body);
  return r;
}

response bad_request(std::string message) { return error_response({errc::invalid_argument, std::move(message)}); }

response forbidden(auth::capability cap, std::string_view id) {
  const std::string quoted = "'" + std::string(id) + "'";
  switch (cap) {
    case auth::read: return error_response({errc::forbidden, "not allowed to read context " + quoted});
    case auth::write: return error_response({errc::forbidden, "not allowed to write to context " + quoted});
    case auth::erase:
      return error_response({errc::forbidden, "not allowed to delete context " + quoted + " (needs the \"delete\" grant)"});
    case auth::admin: return error_response({errc::forbidden, "this needs the \"admin\" capability on " + quoted});
    case auth::lock: break;
  }
  return error_response({errc::forbidden, "not allowed to lock " + quoted});
}

model::result<nlohmann::json> parse_body(const request& req) {
  if (req.body.empty()) return model::fail(errc::invalid_argument, "request body is empty; send a JSON object");
  auto parsed = model::parse_json(req.body);
  if (!parsed)
    return model::fail(errc::invalid_argument,
                       "request body is not valid JSON (check syntax and that strings are UTF-8)");
  if (!parsed->is_object()) return model::fail(errc::invalid_argument, "request body must be a JSON object");
  return std::move(*parsed);
}

model::result<nlohmann::json> parse_body(const services& s, const request& req, field_names known,
                                         std::string_view what) {
  auto body = parse_body(req);
  if (!body || !s.opts.reject_unknown_fields) return body;
  if (auto ok = check_fields(*body, known, what); !ok) return std::unexpected(ok.error());
  return body;
}

model::status check_unit(const services& s, const nlohmann::json& unit, std::string_view what) {
  return s.opts.reject_unknown_fields ? check_unit_fields(unit, what) : model::status{};
}

model::result<std::optional<uint64_t>> uint_param(const query_params& q, std::string_view key) {
  const auto* v = q.get(key);
  if (!v || v->empty()) return std::optional<uint64_t>();
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
  if (ec != std::errc() || p != v->data() + v->size())
    return model::fail(errc::invalid_argument, std::string(key) + " must be a non-negative integer, got '" + *v + "'");
  return std::optional<uint64_t>(n);
}

model::result<bool> bool_param(const query_params& q, std::string_view key) {
  const auto* v = q.get(key);
  if (!v || v->empty() || *v == "false" || *v == "0") return false;
  if (*v == "true" || *v == "1") return true;
  return model::fail(errc::invalid_argument, std::string(key) + " must be true or false, got '" + *v + "'");
}

model::status acting_as(const caller& who, std::string_view agent) {
  if (who.principal && agent != who.principal->agent)
    return model::fail(errc::forbidden, "agent_id '" + std::string(agent.substr(0, 256)) +
                                            "' is not the token's subject '" + who.principal->agent + "'");
  return {};
}

model::result<std::string> acting_agent(const call& c, const nlohmann::json& body) {
  auto agent = agent_field(body, c.req.header("x-agent-id"));
  if (!agent) return agent;
  if (agent->empty() && c.who.principal) return c.who.principal->agent;
  if (agent->empty()) return model::fail(errc::invalid_argument, "agent_id is required (in the body or X-Agent-ID)");
  if (auto bad = model::check_identifier("agent_id", *agent, model::max_id_bytes))
    return model::fail(errc::invalid_argument, *bad);
  if (auto ok = acting_as(c.who, *agent); !ok) return std::unexpected(ok.error());
  return agent;
}

}  // namespace engram::gateway
