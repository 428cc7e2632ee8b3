// /mcp: the Model Context Protocol over Streamable HTTP (README "MCP"), stateless.
// JSON-RPC 2.0 requests arrive by POST and are answered with JSON. Each tool call is
// the REST request it stands for, sent back through the API handler with the MCP
// request's credentials, so validation, auth, grants and rate limits are the REST
// routes' own; a refusal becomes a tool error carrying the route's message.
#include <boost/url/encode.hpp>
#include <boost/url/pct_string_view.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <charconv>
#include <nlohmann/json.hpp>
#include <openssl/rand.h>

#include "gateway/routes.hpp"
#include "gateway/stream_registry.hpp"
#include "gateway/takeover.hpp"
#include "model/codec.hpp"
#include "model/text.hpp"

#ifndef ENGRAM_VERSION
#define ENGRAM_VERSION "0"
#endif

namespace engram::gateway {
namespace {

using model::json;

// Newest first; an initialize asking for another gets the newest.
constexpr std::string_view protocol_versions[] = {"2025-11-25", "2025-06-18", "2025-03-26"};

bool supported_version(std::string_view v) {
  for (auto p : protocol_versions)
    if (p == v) return true;
  return false;
}

// JSON-RPC error codes.
constexpr int parse_error = -32700, invalid_request = -32600, method_not_found = -32601, invalid_params = -32602;

response rpc_response(const json& id, json result) {
  return json_response(200, json{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}});
}

response rpc_error(const json& id, int code, std::string message, unsigned status = 200) {
  return json_response(status, json{{"jsonrpc", "2.0"},
                                    {"id", id},
                                    {"error", {{"code", code}, {"message", std::move(message)}}}});
}

// A path segment or query value, percent-encoded.
std::string encode(std::string_view s) { return boost::urls::encode(s, boost::urls::unreserved_chars); }

// One REST request a tool stands for.
struct rest_call {
  std::string method, target;
  json body;  // null: none
  std::vector<std::pair<std::string, std::string>> headers;
};

using builder = model::result<rest_call> (*)(const json& args);

model::error bad_args(std::string message) { return {model::errc::invalid_argument, std::move(message)}; }

model::result<std::string> string_arg(const json& args, const char* name) {
  auto it = args.find(name);
  if (it == args.end() || !it->is_string() || it->get_ref<const std::string&>().empty())
    return std::unexpected(bad_args(std::string(name) + " is required: a non-empty string"));
  return it->get<std::string>();
}

// `args` without the members a tool moves into its path.
json without(json args, std::initializer_list<const char*> names) {
  for (const char* n : names) args.erase(n);
  return args;
}

// `?k=v&…` of every member (in name order), strings as they are, others as JSON.
std::string query_of(const json& args) {
  std::string q;
  for (const auto& [k, v] : args.items()) {
    if (v.is_null()) continue;
    q += q.empty() ? "?" : "&";
    q += encode(k);
    q += '=';
    q += encode(v.is_string() ? v.get<std::string>() : v.dump());
  }
  return q;
}

// A tool is one REST route. Most map their arguments plainly (`method` and `path`,
// see plain_call); the others have a `build` of their own.
struct tool {
  std::string_view name;
  std::string_view description;
  std::string_view input_schema;  // JSON Schema of the arguments
  std::string_view method, path;
  builder build = nullptr;
};

const tool tools[] = {
    {"append",
     "Append work units (messages, reasoning, tool calls and results, file changes…) to a context's log, atomically. "
     "Returns the stored units with their seq. Give idempotency_key to make a retry safe, fence to write only while "
     "holding a lease.",
     R"json({"type":"object","required":["context_id","units"],"properties":{
        "context_id":{"type":"string","description":"The context to append to (created on first write)"},
        "agent_id":{"type":"string","description":"Who writes (default: the token's subject or X-Agent-ID)"},
        "units":{"type":"array","minItems":1,"items":{"type":"object","properties":{
          "type":{"type":["string","integer"],"description":"MESSAGE, REASONING, TOOL_CALL, TOOL_RESULT, FILE_CHANGE, TASK_STATUS, ERROR, SYSTEM or SUMMARY"},
          "text":{"type":"string"},"meta":{"type":"object","additionalProperties":{"type":"string"}},
          "call_id":{"type":"string"},"tokens":{"type":"integer","minimum":0}}}},
        "idempotency_key":{"type":"string"},
        "fence":{"type":"object","properties":{"resource":{"type":"string"},"token":{"type":"integer"}}}}})json",
     "", "",
     [](const json& a) -> model::result<rest_call> {
       auto ctx = string_arg(a, "context_id");
       if (!ctx) return std::unexpected(ctx.error());
       if (!a.contains("units") || !a["units"].is_array())
         return std::unexpected(bad_args("units is required: an array of work units"));
       json body{{"context_id", *ctx}, {"work_units", a["units"]}};
       for (const char* k : {"agent_id", "fence"})
         if (a.contains(k)) body[k] = a[k];
       rest_call rc{"POST", "/workunits", std::move(body), {}};
       if (auto key = a.find("idempotency_key"); key != a.end()) {
         if (!key->is_string()) return std::unexpected(bad_args("idempotency_key must be a string"));
         rc.headers.emplace_back("idempotency-key", key->get<std::string>());
       }
       return rc;
     }},
    {"read",
     "Read a context's work units in seq order after a cursor (after_seq), a page at a time. Each unit has its text. "
     "Pass the last seq you saw as after_seq to continue.",
     R"json({"type":"object","required":["context_id"],"properties":{
        "context_id":{"type":"string"},"after_seq":{"type":"integer","minimum":0},
        "limit":{"type":"integer","minimum":1,"maximum":1000},"reverse":{"type":"boolean","description":"Newest first"}}})json",
     "GET", "/workunits/{context_id}?text=1"},
    {"contexts",
     "List contexts, get one (its head seq, agents, pinned units), or update one (display_name, agents, pins, meta).",
     R"json({"type":"object","required":["action"],"properties":{
        "action":{"type":"string","enum":["list","get","update"]},"context_id":{"type":"string"},
        "limit":{"type":"integer"},"cursor":{"type":"string"},
        "display_name":{"type":"string"},"add_agents":{"type":"array","items":{"type":"string"}},
        "remove_agents":{"type":"array","items":{"type":"string"}},"pin_units":{"type":"array","items":{"type":"string"}},
        "unpin_units":{"type":"array","items":{"type":"string"}},"meta":{"type":"object"}}})json",
     "", "",
     [](const json& a) -> model::result<rest_call> {
       const std::string action = a.value("action", "");
       if (action == "list") return rest_call{"GET", "/contexts" + query_of(without(a, {"action"})), nullptr, {}};
       auto ctx = string_arg(a, "context_id");
       if (!ctx) return std::unexpected(ctx.error());
       if (action == "get") return rest_call{"GET", "/contexts/" + encode(*ctx), nullptr, {}};
       if (action == "update")
         return rest_call{"PATCH", "/contexts/" + encode(*ctx), without(a, {"action", "context_id"}), {}};
       return std::unexpected(bad_args("action must be list, get or update"));
     }},
    {"search",
     "Search all history: keyword (Xapian query syntax), semantic or hybrid, with filters by context (an id or a "
     "prefix ending in *), agents, types, meta and time. Results have seq, context, snippet and score.",
     R"json({"type":"object","properties":{"query":{"type":"string"},"context_id":{"type":"string"},
        "agent_ids":{"type":"array","items":{"type":"string"}},"types":{"type":"array"},
        "mode":{"type":"string","enum":["keyword","semantic","hybrid"]},"vector":{"type":"array","items":{"type":"number"}},
        "limit":{"type":"integer","minimum":1,"maximum":1000},"from":{"type":"string"},"to":{"type":"string"}}})json",
     "POST", "/search"},
    {"lock_acquire",
     "Take a lease on one or more shared resources (all or nothing), for ttl_seconds. Returns lock_id and a fencing "
     "token; pass the token as an append's fence. wait_ms waits in line instead of failing at once.",
     R"json({"type":"object","properties":{"resource_path":{"type":"string"},
        "resource_paths":{"type":"array","items":{"type":"string"}},"agent_id":{"type":"string"},
        "ttl_seconds":{"type":"number"},"wait_ms":{"type":"integer"},"context_id":{"type":"string"}}})json",
     "POST", "/locks"},
    {"lock_renew", "Extend a lease you hold before it expires.",
     R"json({"type":"object","required":["resource_path","lock_id"],"properties":{"resource_path":{"type":"string"},
        "lock_id":{"type":"string"},"agent_id":{"type":"string"},"ttl_seconds":{"type":"number"}}})json",
     "POST", "/locks/{resource_path}/renew"},
    {"lock_release", "Release a lease you hold.",
     R"json({"type":"object","required":["resource_path","lock_id"],"properties":{"resource_path":{"type":"string"},
        "lock_id":{"type":"string"},"agent_id":{"type":"string"}}})json",
     "DELETE", "/locks/{resource_path}"},
    {"packet",
     "What you should know about a context, under a token budget: pinned units, facts, tasks, leases held by others, "
     "your last checkpoint, summaries, units found by a query, recent units; each item with why it is there. Use "
     "format text for a ready prompt block.",
     R"json({"type":"object","required":["context_id"],"properties":{"context_id":{"type":"string"},
        "agent_id":{"type":"string"},"purpose":{"type":"string"},"query":{"type":"string"},
        "budget":{"type":"object","properties":{"max_tokens":{"type":"integer"},"sections":{"type":"object"}}},
        "policy":{},"as_of_seq":{"type":"integer"},"since_seq":{"type":"integer"},
        "format":{"type":"string","enum":["json","text"]}}})json",
     "POST", "/contexts/{context_id}/packet"},
    {"fact_set",
     "Record what the team believes about a dotted key (repo.main_branch) in a context; it supersedes the key's "
     "current value. sources: seqs of the units it rests on.",
     R"json({"type":"object","required":["context_id","key","value"],"properties":{"context_id":{"type":"string"},
        "key":{"type":"string"},"value":{},"agent_id":{"type":"string"},"sources":{"type":"array","items":{"type":"integer"}},
        "confidence":{"type":"number","minimum":0,"maximum":1},"status":{"type":"string","enum":["active","disputed"]},
        "valid_from":{"type":"string"},"valid_to":{"type":"string"}}})json",
     "PUT", "/contexts/{context_id}/facts/{key}"},
    {"facts", "The current facts of a context (by key prefix), or as the log stood at a seq.",
     R"json({"type":"object","required":["context_id"],"properties":{"context_id":{"type":"string"},
        "prefix":{"type":"string"},"as_of_seq":{"type":"integer"},"include_superseded":{"type":"boolean"}}})json",
     "GET", "/contexts/{context_id}/facts"},
    {"presence", "Who is present in a context now.",
     R"json({"type":"object","required":["context_id"],"properties":{"context_id":{"type":"string"}}})json",
     "GET", "/contexts/{context_id}/presence"},
    {"heartbeat",
     "Say you are alive: present in these contexts, and renew your task claims (with progress, when given).",
     R"json({"type":"object","required":["agent_id"],"properties":{"agent_id":{"type":"string"},
        "contexts":{"type":"array","items":{"type":"string"}},"status":{"type":"string"},"progress":{"type":"object"},
        "task_id":{"type":"string"}}})json",
     "POST", "/agents/{agent_id}/heartbeat"},
    {"task_create",
     "Create a task in a context: work one agent should do at a time. depends_on: tasks that must be done first.",
     R"json({"type":"object","required":["context_id","title"],"properties":{"context_id":{"type":"string"},
        "task_id":{"type":"string"},"title":{"type":"string"},"spec":{"type":"object"},
        "depends_on":{"type":"array","items":{"type":"string"}},"max_attempts":{"type":"integer","minimum":1},
        "agent_id":{"type":"string"}}})json",
     "POST", "/contexts/{context_id}/tasks"},
    {"tasks", "A context's tasks in creation order, optionally of one status (open, claimed, stranded, done, failed).",
     R"json({"type":"object","required":["context_id"],"properties":{"context_id":{"type":"string"},
        "status":{"type":"string","enum":["open","claimed","stranded","done","failed"]},
        "limit":{"type":"integer","minimum":1,"maximum":1000},"after":{"type":"string"}}})json",
     "GET", "/contexts/{context_id}/tasks"},
    {"task_claim",
     "Claim a task for ttl_seconds (a lease; heartbeats renew it). Returns the task and its fencing token: pass it as "
     "fence to task_complete or task_fail.",
     R"json({"type":"object","required":["task_id"],"properties":{"task_id":{"type":"string"},
        "agent_id":{"type":"string"},"ttl_seconds":{"type":"number"}}})json",
     "POST", "/tasks/{task_id}/claim"},
    {"task_complete", "Complete a task you hold, with its fencing token and an optional result object.",
     R"json({"type":"object","required":["task_id","fence"],"properties":{"task_id":{"type":"string"},
        "fence":{"type":"integer"},"result":{"type":"object"},"agent_id":{"type":"string"}}})json",
     "POST", "/tasks/{task_id}/complete"},
    {"task_fail", "Give up a task you hold, saying why (error), with its fencing token.",
     R"json({"type":"object","required":["task_id","fence","error"],"properties":{"task_id":{"type":"string"},
        "fence":{"type":"integer"},"error":{"type":"string"},"agent_id":{"type":"string"}}})json",
     "POST", "/tasks/{task_id}/fail"},
};

// The REST request of a plainly mapped tool: each `{name}` segment of its path takes
// that argument (required, percent-encoded); the other arguments become the body
// (POST, PUT, PATCH) or the query string (GET, DELETE).
model::result<rest_call> plain_call(const tool& t, json args) {
  std::string target;
  for (std::string_view path = t.path; !path.empty();) {
    const auto open = path.find('{');
    target += path.substr(0, open);
    if (open == std::string_view::npos) break;
    const auto close = path.find('}', open);
    const std::string name(path.substr(open + 1, close - open - 1));
    auto value = string_arg(args, name.c_str());
    if (!value) return std::unexpected(value.error());
    target += encode(*value);
    args.erase(name);
    path.remove_prefix(close + 1);
  }
  if (t.method == "GET" || t.method == "DELETE") {
    std::string q = query_of(args);
    if (!q.empty() && target.find('?') != std::string::npos) q[0] = '&';
    return rest_call{std::string(t.method), target + q, nullptr, {}};
  }
  return rest_call{std::string(t.method), std::move(target), std::move(args), {}};
}

// Built once: the table does not change.
const json& tool_list() {
  static const json list = [] {
    json l = json::array();
    for (const auto& t : tools)
      l.push_back({{"name", t.name}, {"description", t.description}, {"inputSchema", json::parse(t.input_schema)}});
    return l;
  }();
  return list;
}

// The REST request a tool stands for, with the MCP request's credentials.
request internal_request(const call& c, const rest_call& rc) {
  request r;
  r.method = rc.method;
  r.target = rc.target;
  if (!rc.body.is_null()) r.body = model::dump(rc.body);
  for (const char* h : {"authorization", "x-agent-id", "cookie"})
    if (auto v = c.req.header(h); !v.empty()) r.headers.emplace_back(h, std::string(v));
  r.headers.emplace_back("content-type", "application/json");
  for (const auto& [k, v] : rc.headers) r.headers.emplace_back(k, v);
  r.remote_ip = c.req.remote_ip;
  r.request_id = c.req.request_id;
  return r;
}

// A route's refusal as words: its {"error": "…"} message, else its body.
std::string refusal_message(const response& r) {
  auto parsed = json::parse(r.body, nullptr, false);
  if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_string()) return parsed["error"];
  return r.body;
}

// A tool call's JSON-RPC answer from the REST answer it stands for. A refusal is a
// tool error (not a protocol error) carrying the route's message and status. A
// success is written directly: the route's JSON object goes in as it is, as
// structuredContent and, escaped, as the text block the specification asks for
// beside it, rather than being parsed and written again.
response tool_response(const json& id, const response& r) {
  if (r.status >= 400) {
    const std::string text = refusal_message(r) + " (HTTP " + std::to_string(r.status) + ")";
    return rpc_response(id, {{"content", json::array({{{"type", "text"}, {"text", text}}})}, {"isError", true}});
  }
  response out;
  out.body = "{\"id\":" + model::dump(id) + ",\"jsonrpc\":\"2.0\",\"result\":{\"content\":[{\"type\":\"text\",\"text\":";
  model::append_json_string(out.body, r.body);
  out.body += "}],\"isError\":false";
  if (r.content_type == "application/json" && r.body.starts_with('{')) {
    out.body += ",\"structuredContent\":";
    out.body += r.body;
  }
  out.body += "}}";
  return out;
}

const json prompts_json = json::array({
    {{"name", "catch_up"},
     {"description", "Catch up on a context: its memory packet rendered as a prompt block"},
     {"arguments",
      json::array({{{"name", "context_id"}, {"description", "The context"}, {"required", true}},
                   {{"name", "agent_id"}, {"description", "Whose view (default: yours)"}, {"required", false}},
                   {{"name", "max_tokens"}, {"description", "Token budget (default 4000)"}, {"required", false}}})}},
});

// Whether a Host header names this machine's loopback interface (any port).
bool loopback_host(std::string_view host) {
  if (host.starts_with('[')) host = host.substr(0, host.find(']') + 1);  // [::1]:8080
  else host = host.substr(0, host.find(':'));
  return host == "localhost" || host == "127.0.0.1" || host == "[::1]";
}

// An Origin header (a browser's request) is allowed when listed by name in
// server.cors_origins, or when it is this server's own origin reached by a loopback
// name. A wildcard does not count, and neither does any other same-origin pair: a
// page on evil.example whose name was rebound to 127.0.0.1 sends Host and Origin
// evil.example, and must not reach a local MCP server (DNS rebinding).
bool origin_allowed(const services& s, const request& req) {
  const auto origin = req.header("origin");
  if (origin.empty()) return true;
  for (const auto& o : s.opts.cors_origins)
    if (o == origin) return true;
  const auto host = req.header("host");
  return loopback_host(host) &&
         (origin == "http://" + std::string(host) || origin == "https://" + std::string(host));
}

// A REST refusal as a JSON-RPC error: 404 is MCP's "resource not found", 400 bad
// params, anything else an internal error carrying the route's message and status.
response rest_error(const json& id, const response& r) {
  const std::string message = refusal_message(r);
  const int code = r.status == 404 ? -32002 : r.status == 400 ? invalid_params : -32603;
  return json_response(200, json{{"jsonrpc", "2.0"},
                                 {"id", id},
                                 {"error", {{"code", code}, {"message", message}, {"data", {{"http_status", r.status}}}}}});
}

constexpr std::string_view context_uri_prefix = "engram://contexts/";

// The context id of `engram://contexts/{id}` (percent-decoded, a valid id).
model::result<std::string> context_of(std::string_view uri) {
  if (!uri.starts_with(context_uri_prefix) || uri.size() == context_uri_prefix.size())
    return std::unexpected(bad_args("resource not found: expected engram://contexts/{context_id}"));
  auto encoded = boost::urls::make_pct_string_view(uri.substr(context_uri_prefix.size()));
  if (!encoded) return std::unexpected(bad_args("resource not found: the context id is not percent-encoded"));
  std::string id = encoded->decode();
  if (auto bad = model::check_identifier("context_id", id, model::max_id_bytes)) return std::unexpected(bad_args(*bad));
  return id;
}

// An Mcp-Session-Id for initialize to hand out: 128 bits from OpenSSL's CSPRNG,
// stored nowhere.
std::string new_session_id() {
  unsigned char bits[16];
  if (RAND_bytes(bits, sizeof bits) != 1) return {};  // then no id: none is required
  static constexpr char hex[] = "0123456789abcdef";
  std::string id;
  for (unsigned char b : bits) {
    id += hex[b >> 4];
    id += hex[b & 15];
  }
  return id;
}

// Subscriptions a resources/unsubscribe ends: those of the same caller (token
// subject, else X-Agent-ID) and context, opened with the same Mcp-Session-Id or,
// for a client that sends none, from the same address (README "MCP").
std::string subscription_key(const call& c, std::string_view context_id) {
  std::string key = c.who.principal ? c.who.principal->agent : std::string(c.req.header("x-agent-id"));
  if (auto session = c.req.header("mcp-session-id"); !session.empty()) key += "\nsession:" + std::string(session);
  else key += "\nip:" + c.req.remote_ip;
  return key + "\n" + std::string(context_id);
}

constexpr std::string_view log_levels[] = {"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"};

}  // namespace

void mcp_post(services& s, call& c, responder respond) {
  if (!origin_allowed(s, c.req))
    return respond(error_response({model::errc::forbidden, "origin not allowed for /mcp; list it by name in "
                                                           "server.cors_origins"}));
  if (auto v = c.req.header("mcp-protocol-version"); !v.empty() && !supported_version(v))
    return respond(bad_request("unsupported MCP-Protocol-Version '" + std::string(v).substr(0, 40) +
                               "'; this server speaks 2025-11-25, 2025-06-18 and 2025-03-26"));
  auto msg = json::parse(c.req.body, nullptr, false);
  if (msg.is_discarded()) return respond(rpc_error(nullptr, parse_error, "not valid JSON", 400));
  if (msg.is_array())
    return respond(rpc_error(nullptr, invalid_request, "JSON-RPC batches are not supported (removed in MCP 2025-06-18)",
                             400));
  if (!msg.is_object() || msg.value("jsonrpc", "") != "2.0" || !msg.contains("method") || !msg["method"].is_string())
    return respond(rpc_error(msg.is_object() && msg.contains("id") ? msg["id"] : json(nullptr), invalid_request,
                             "expected a JSON-RPC 2.0 request: {\"jsonrpc\":\"2.0\",\"id\",\"method\",\"params\"?}",
                             400));
  const std::string method = msg["method"];
  if (!msg.contains("id")) {  // a notification (or a response to us): accepted, nothing to answer
    response r;
    r.status = 202;
    r.content_type.clear();
    return respond(std::move(r));
  }
  const json id = msg["id"];
  if (!id.is_string() && !id.is_number_integer())
    return respond(rpc_error(nullptr, invalid_request, "id must be a string or an integer", 400));
  const json params = msg.value("params", json::object());
  if (!params.is_object()) return respond(rpc_error(id, invalid_params, "params must be an object"));

  if (method == "initialize") {
    const std::string asked = params.value("protocolVersion", "");
    auto r = rpc_response(
        id, {{"protocolVersion", supported_version(asked) ? asked : std::string(protocol_versions[0])},
             {"capabilities",
              {{"tools", {{"listChanged", false}}},
               {"resources", {{"subscribe", true}, {"listChanged", false}}},
               {"prompts", {{"listChanged", false}}},
               {"completions", json::object()},
               {"logging", json::object()}}},
             {"serverInfo", {{"name", "engram"}, {"title", "Engram"}, {"version", ENGRAM_VERSION}}},
             {"instructions",
              "Engram is a shared workspace for a team of agents. Contexts are ordered logs of work units; read with "
              "`read` (cursor: after_seq), write with `append`, coordinate with leases (`lock_*`), and call `packet` "
              "for what you should know under a token budget. Every call is stateless: pass context_id and cursors."}});
    // Only names the client's subscriptions for resources/unsubscribe: nothing is
    // kept, and any request works without it, or with one from before a restart.
    if (auto session = new_session_id(); !session.empty()) r.headers.emplace_back("Mcp-Session-Id", std::move(session));
    return respond(std::move(r));
  }
  if (method == "ping") return respond(rpc_response(id, json::object()));
  if (method == "tools/list") return respond(rpc_response(id, {{"tools", tool_list()}}));
  if (method == "prompts/list") return respond(rpc_response(id, {{"prompts", prompts_json}}));
  if (method == "resources/templates/list")
    return respond(rpc_response(id, {{"resourceTemplates",
                                      json::array({{{"uriTemplate", "engram://contexts/{context_id}"},
                                                    {"name", "context"},
                                                    {"description", "A context: its newest 50 work units"},
                                                    {"mimeType", "application/json"}}})}}));

  // The rest forward one REST request and shape its answer.
  auto forward = [&](const rest_call& rc, std::function<response(const response&)> shape) {
    s.dispatch(internal_request(c, rc),
               [respond, shape = std::move(shape)](response r) { respond(shape(r)); });
  };
  if (method == "tools/call") {
    const std::string name = params.value("name", "");
    const json args = params.value("arguments", json::object());
    const tool* t = nullptr;
    for (const auto& candidate : tools)
      if (candidate.name == name) t = &candidate;
    if (!t) return respond(rpc_error(id, invalid_params, "unknown tool '" + name.substr(0, 100) + "'"));
    if (!args.is_object()) return respond(rpc_error(id, invalid_params, "arguments must be an object"));
    auto rc = t->build ? t->build(args) : plain_call(*t, args);
    if (!rc) {  // bad arguments are the tool's error, so the model can correct itself
      json result{{"content", json::array({{{"type", "text"}, {"text", rc.error().message}}})}, {"isError", true}};
      return respond(rpc_response(id, std::move(result)));
    }
    return forward(*rc, [id](const response& r) { return tool_response(id, r); });
  }
  if (method == "resources/list") {
    return forward(rest_call{"GET", "/contexts?limit=1000", nullptr, {}}, [id](const response& r) {
      if (r.status >= 400) return rest_error(id, r);
      json list = json::array();
      auto page = json::parse(r.body, nullptr, false);
      if (page.is_object() && page.contains("contexts") && page["contexts"].is_array())
        for (const auto& ctx : page["contexts"]) {
          const std::string cid = ctx.value("id", "");
          list.push_back({{"uri", "engram://contexts/" + encode(cid)},
                          {"name", cid},
                          {"title", ctx.value("display_name", "").empty() ? cid : ctx.value("display_name", "")},
                          {"mimeType", "application/json"}});
        }
      return rpc_response(id, {{"resources", std::move(list)}});
    });
  }
  const std::string uri = params.contains("uri") && params["uri"].is_string() ? params["uri"].get<std::string>() : "";
  if (method == "resources/read") {
    auto ctx = context_of(uri);
    if (!ctx) return respond(rpc_error(id, -32002, ctx.error().message));
    return forward(rest_call{"GET", "/workunits/" + encode(*ctx) + "?reverse=true&limit=50&text=1", nullptr, {}},
                   [id, uri](const response& r) {
                     if (r.status >= 400) return rest_error(id, r);
                     return rpc_response(id, {{"contents", json::array({{{"uri", uri},
                                                                         {"mimeType", "application/json"},
                                                                         {"text", r.body}}})}});
                   });
  }
  // The answer is an SSE stream that stays open: this response, then
  // notifications/resources/updated each time the context gets units, until
  // resources/unsubscribe, the client closing it, or shutdown.
  if (method == "resources/subscribe") {
    auto ctx = context_of(uri);
    if (!ctx) return respond(rpc_error(id, -32002, ctx.error().message));
    if (!c.who.can(auth::read, *ctx)) return respond(rest_error(id, forbidden(auth::read, *ctx)));
    if (c.req.header("accept").find("text/event-stream") == std::string_view::npos)
      return respond(rpc_error(id, invalid_request,
                               "resources/subscribe answers with an SSE stream that carries the updates: send "
                               "Accept: application/json, text/event-stream",
                               406));
    auto t = std::make_shared<stream_takeover>();
    t->sub.contexts = {*ctx};  // no cursor: from the head, live only
    t->who = c.who;
    t->first_frame = model::dump(json{{"jsonrpc", "2.0"}, {"id", id}, {"result", json::object()}});
    t->notification = model::dump(
        json{{"jsonrpc", "2.0"}, {"method", "notifications/resources/updated"}, {"params", {{"uri", uri}}}});
    t->owner_key = subscription_key(c, *ctx);
    response r;
    r.takeover = std::move(t);
    return respond(std::move(r));
  }
  if (method == "resources/unsubscribe") {
    auto ctx = context_of(uri);
    if (!ctx) return respond(rpc_error(id, -32002, ctx.error().message));
    if (s.streams) s.streams->stop_streams(subscription_key(c, *ctx));
    return respond(rpc_response(id, json::object()));
  }
  if (method == "logging/setLevel") {
    // Accepted for clients that set it; this server sends no log notifications.
    const std::string level = params.value("level", "");
    for (auto l : log_levels)
      if (l == level) return respond(rpc_response(id, json::object()));
    return respond(rpc_error(id, invalid_params, "level must be one of debug, info, notice, warning, error, "
                                                 "critical, alert, emergency"));
  }
  // Context ids for the catch_up prompt's and the context template's context_id.
  if (method == "completion/complete") {
    const json ref = params.value("ref", json::object());
    const json arg = params.value("argument", json::object());
    if (!ref.is_object() || !arg.is_object() || !arg.contains("name") || !arg["name"].is_string())
      return respond(rpc_error(id, invalid_params, "ref and argument {name, value} are required"));
    const std::string type = ref.value("type", "");
    if (!(type == "ref/prompt" && ref.value("name", "") == "catch_up") &&
        !(type == "ref/resource" && ref.value("uri", "") == "engram://contexts/{context_id}"))
      return respond(rpc_error(id, invalid_params, "nothing to complete for this ref: the catch_up prompt and the "
                                                   "engram://contexts/{context_id} template complete context_id"));
    const json none{{"completion", {{"values", json::array()}, {"hasMore", false}}}};
    if (arg["name"] != "context_id") return respond(rpc_response(id, none));
    const std::string value = arg.contains("value") && arg["value"].is_string() ? arg["value"].get<std::string>() : "";
    if (value.size() > model::max_id_bytes) return respond(rpc_response(id, none));
    return forward(rest_call{"GET", "/contexts?limit=100&prefix=" + encode(value), nullptr, {}},
                   [id](const response& r) {
                     if (r.status >= 400) return rest_error(id, r);
                     json values = json::array();
                     auto page = json::parse(r.body, nullptr, false);
                     if (page.is_object() && page.contains("contexts") && page["contexts"].is_array())
                       for (const auto& ctx : page["contexts"]) values.push_back(ctx.value("id", ""));
                     const bool more = page.is_object() && !page.value("next_cursor", "").empty();
                     return rpc_response(id, {{"completion", {{"values", std::move(values)}, {"hasMore", more}}}});
                   });
  }
  if (method == "prompts/get") {
    if (params.value("name", "") != "catch_up") return respond(rpc_error(id, invalid_params, "unknown prompt"));
    const json args = params.value("arguments", json::object());
    const std::string ctx = args.is_object() ? args.value("context_id", "") : "";
    if (ctx.empty()) return respond(rpc_error(id, invalid_params, "argument context_id is required"));
    json body{{"format", "text"}, {"purpose", "catch_up"}};
    if (args.contains("agent_id") && args["agent_id"].is_string()) body["agent_id"] = args["agent_id"];
    if (args.contains("max_tokens") && args["max_tokens"].is_string()) {
      uint64_t n = 0;
      const auto& v = args["max_tokens"].get_ref<const std::string&>();
      if (std::from_chars(v.data(), v.data() + v.size(), n).ec != std::errc() || n == 0)
        return respond(rpc_error(id, invalid_params, "argument max_tokens must be a positive integer"));
      body["budget"] = {{"max_tokens", n}};
    }
    return forward(rest_call{"POST", "/contexts/" + encode(ctx) + "/packet", body, {}},
                   [id](const response& r) {
                     if (r.status >= 400) return rest_error(id, r);
                     return rpc_response(
                         id, {{"description", "Catch up on the context"},
                              {"messages", json::array({{{"role", "user"},
                                                         {"content", {{"type", "text"}, {"text", r.body}}}}})}});
                   });
  }
  respond(rpc_error(id, method_not_found, "unknown method '" + method.substr(0, 100) + "'"));
}

// GET (a server-initiated stream) and DELETE (ending a session): this server keeps
// no sessions to end and sends nothing unasked (updates come on the stream of
// resources/subscribe).
void mcp_other(services&, call& c, responder respond) {
  auto r = error_response(405, "this MCP server is stateless: POST JSON-RPC requests to /mcp (no " + c.req.method +
                                   ")");
  r.headers.emplace_back("Allow", "POST");
  respond(std::move(r));
}

}  // namespace engram::gateway
