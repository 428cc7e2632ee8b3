#include "codec.hpp"

#include <charconv>
#include <cstdio>
#include <random>

#include "wire/enums.hpp"
#include "wire/timestamp.hpp"

namespace engram::client {

// The SDK's enums mirror the wire's name tables (api/wire/enums.hpp), which the
// server checks against engram.proto.
static_assert(size_t(unit_type::summary) + 1 == wire::unit_type_names.size());
static_assert(size_t(relationship_type::replaces) + 1 == wire::relationship_type_names.size());

std::string to_string(unit_type t) {
  const auto n = static_cast<int>(t);
  if (auto name = wire::enum_name(wire::unit_type_names, n); !name.empty()) return std::string(name);
  return std::to_string(n);
}

std::optional<unit_type> parse_unit_type(std::string_view s) {
  int n = 0;
  if (auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n); ec == std::errc() && p == s.data() + s.size())
    return n >= 0 && size_t(n) < wire::unit_type_names.size() ? std::optional(unit_type(n)) : std::nullopt;
  // No protobuf prefix: the SDK has always taken the short names only.
  if (auto v = wire::enum_from_name(wire::unit_type_names, s)) return unit_type(*v);
  return std::nullopt;
}

std::string error::describe() const {
  switch (what) {
    case kind::network: return "network: " + message;
    case kind::server: return "server " + std::to_string(status) + ": " + message;
    case kind::protocol: return "protocol: " + message;
    case kind::stopped: return "stopped: " + message;
  }
  return message;
}

namespace codec {
namespace {

error protocol(std::string message, unsigned status = 0) {
  return error{error::kind::protocol, status, std::move(message), {}};
}

// Reads typed fields of one JSON object, remembering the first one of a wrong type.
// Absent and null fields read as empty.
class reader {
 public:
  reader(const json& j, std::string_view what) : j_(j), what_(what) {
    if (!j.is_object()) bad_ = std::string(what) + " is not an object";
  }

  const json* find(std::string_view k) const {
    if (!j_.is_object()) return nullptr;
    auto it = j_.find(k);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  std::string str(std::string_view k) {
    const json* v = find(k);
    if (!v) return {};
    if (!v->is_string()) return wrong(k, "a string"), std::string();
    return v->get<std::string>();
  }
  uint64_t u64(std::string_view k) {
    const json* v = find(k);
    if (!v) return 0;
    if (!v->is_number_unsigned()) return wrong(k, "a non-negative integer"), 0;
    return v->get<uint64_t>();
  }
  std::optional<uint64_t> opt_u64(std::string_view k) {
    if (!find(k)) return std::nullopt;
    return u64(k);
  }
  double num(std::string_view k) {
    const json* v = find(k);
    if (!v) return 0;
    if (!v->is_number()) return wrong(k, "a number"), 0;
    return v->get<double>();
  }
  std::optional<double> opt_num(std::string_view k) {
    if (!find(k)) return std::nullopt;
    return num(k);
  }
  bool boolean(std::string_view k, bool fallback) {
    const json* v = find(k);
    if (!v) return fallback;
    if (!v->is_boolean()) return wrong(k, "a boolean"), fallback;
    return v->get<bool>();
  }
  timestamp ts(std::string_view k) {
    const json* v = find(k);
    if (!v) return {};
    if (!v->is_object()) return wrong(k, "a {seconds, nanos} object"), timestamp{};
    reader t(*v, k);
    const json* s = t.find("seconds");
    const json* n = t.find("nanos");
    if ((s && !s->is_number_integer()) || (n && !n->is_number_integer()))
      return wrong(k, "a {seconds, nanos} object"), timestamp{};
    return timestamp(std::chrono::seconds(s ? s->get<int64_t>() : 0) + std::chrono::nanoseconds(n ? n->get<int64_t>() : 0));
  }
  string_map map(std::string_view k) {
    string_map out;
    const json* v = find(k);
    if (!v) return out;
    if (!v->is_object()) return wrong(k, "an object of strings"), out;
    for (const auto& [key, val] : v->items()) {
      if (!val.is_string()) return wrong(k, "an object of strings"), out;
      out.emplace(key, val.get<std::string>());
    }
    return out;
  }
  std::vector<std::string> strings(std::string_view k) {
    std::vector<std::string> out;
    const json* v = find(k);
    if (!v) return out;
    if (!v->is_array()) return wrong(k, "an array of strings"), out;
    for (const auto& s : *v) {
      if (!s.is_string()) return wrong(k, "an array of strings"), out;
      out.push_back(s.get<std::string>());
    }
    return out;
  }

  void wrong(std::string_view k, std::string_view expected) {
    if (!bad_) bad_ = std::string(what_) + "." + std::string(k) + " is not " + std::string(expected);
  }
  void fail(std::string message) {
    if (!bad_) bad_ = std::move(message);
  }
  const std::optional<std::string>& bad() const { return bad_; }

 private:
  const json& j_;
  std::string_view what_;
  std::optional<std::string> bad_;
};

json ts_json(timestamp t) { return wire::timestamp_json(t.time_since_epoch().count()); }

json map_json(const string_map& m) {
  json out = json::object();
  for (const auto& [k, v] : m) out[k] = v;
  return out;
}

json relationships_json(const std::vector<relationship>& rels) {
  json out = json::array();
  for (const auto& r : rels) {
    json one{{"target_id", r.target_id}, {"type", int(r.type)}};
    if (!r.meta.empty()) one["meta"] = map_json(r.meta);
    out.push_back(std::move(one));
  }
  return out;
}

}  // namespace

std::string random_key() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const uint64_t hi = (rng() & ~0xf000ULL) | 0x4000ULL;  // version 4
  const uint64_t lo = (rng() & ~(3ULL << 62)) | (2ULL << 62);  // RFC 4122 variant
  char buf[37];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", unsigned(hi >> 32), unsigned(hi >> 16 & 0xffff),
                unsigned(hi & 0xffff), unsigned(lo >> 48), static_cast<unsigned long long>(lo & 0xffffffffffffULL));
  return buf;
}

result<json> parse_object(std::string_view body, unsigned status) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    std::string excerpt(body.substr(0, 200));
    return std::unexpected(protocol("the server answered " + std::to_string(status) +
                                        " with a body that is not a JSON object: " + excerpt,
                                    status));
  }
  return j;
}

result<work_unit> unit_from(const json& j) {
  reader r(j, "work_unit");
  work_unit u;
  u.id = r.str("id");
  u.context_id = r.str("context_id");
  u.seq = r.u64("seq");
  u.agent_id = r.str("agent_id");
  u.type = unit_type(int(r.u64("type")));
  u.ts = r.ts("ts");
  u.meta = r.map("meta");
  if (auto p = r.str("payload"); !p.empty()) {
    auto raw = base64_decode(p);
    if (!raw) r.fail("work_unit.payload is not base64");
    else u.payload = std::move(*raw);
  }
  if (const json* rels = r.find("relationships")) {
    if (!rels->is_array()) r.wrong("relationships", "an array");
    else
      for (const auto& one : *rels) {
        reader rr(one, "relationship");
        relationship rel{rr.str("target_id"), relationship_type(int(rr.u64("type"))), rr.map("meta")};
        if (rr.bad()) r.fail(*rr.bad());
        u.relationships.push_back(std::move(rel));
      }
  }
  u.idempotency_key = r.str("idempotency_key");
  u.call_id = r.str("call_id");
  if (r.find("tokens")) u.tokens = uint32_t(r.u64("tokens"));
  if (r.bad()) return std::unexpected(protocol(*r.bad()));
  return u;
}

result<context> context_from(const json& j) {
  reader r(j, "context");
  context c;
  c.id = r.str("id");
  c.display_name = r.str("display_name");
  c.agent_ids = r.strings("agent_ids");
  c.pinned_units = r.strings("pinned_units");
  c.meta = r.map("meta");
  c.created_at = r.ts("created_at");
  c.updated_at = r.ts("updated_at");
  c.head_seq = r.u64("head_seq");
  if (r.bad()) return std::unexpected(protocol(*r.bad()));
  return c;
}

result<lock> lock_from(const json& j) {
  reader r(j, "lock");
  lock l;
  l.resource_path = r.str("resource_path");
  l.holder_agent = r.str("holder_agent");
  l.lock_id = r.str("lock_id");
  l.fencing_token = r.u64("fencing_token");
  l.expires_at = r.ts("expires_at");
  l.acquired_at = r.ts("acquired_at");
  l.context_id = r.str("context_id");
  if (r.bad()) return std::unexpected(protocol(*r.bad()));
  return l;
}

result<task> task_from(const json& j) {
  reader r(j, "task");
  task t;
  const auto object_text = [&](std::string_view k) -> std::string {
    const json* v = r.find(k);
    if (!v) return {};
    if (!v->is_object()) return r.wrong(k, "an object"), std::string();
    return v->dump();
  };
  t.task_id = r.str("task_id");
  t.context_id = r.str("context_id");
  t.title = r.str("title");
  t.spec_json = object_text("spec");
  t.depends_on = r.strings("depends_on");
  t.status = r.str("status");
  t.holder_agent = r.str("holder_agent");
  t.fencing_token = r.u64("fencing_token");
  t.claim_expires_at = r.ts("claim_expires_at");
  t.progress_json = object_text("progress");
  t.result_json = object_text("result");
  t.error = r.str("error");
  t.attempts = uint32_t(r.u64("attempts"));
  t.max_attempts = uint32_t(r.u64("max_attempts"));
  t.last_holder = r.str("last_holder");
  t.created_by = r.str("created_by");
  t.created_at = r.ts("created_at");
  t.updated_at = r.ts("updated_at");
  if (r.bad()) return std::unexpected(protocol(*r.bad()));
  return t;
}

result<present_agent> present_agent_from(const json& j) {
  reader r(j, "agent");
  present_agent a;
  a.agent_id = r.str("agent_id");
  a.joined_at = r.ts("joined_at");
  a.last_seen = r.ts("last_seen");
  a.status = r.str("status");
  if (r.bad()) return std::unexpected(protocol(*r.bad()));
  return a;
}

result<search_result> search_from(const json& j) {
  reader r(j, "search");
  search_result out;
  out.ids = r.strings("results");
  out.total_count = r.u64("total_count");
  out.total_count_exact = r.boolean("total_count_exact", true);
  out.limit = r.u64("limit");
  out.offset = r.u64("offset");
  out.mode = r.str("mode");
  out.degraded = r.str("degraded");
  if (const json* hits = r.find("hits")) {
    if (!hits->is_array()) r.wrong("hits", "an array");
    else
      for (const auto& h : *hits) {
        reader hr(h, "hit");
        search_hit hit;
        hit.id = hr.str("id");
        hit.context_id = hr.str("context_id");
        hit.seq = hr.u64("seq");
        hit.score = hr.num("score");
        hit.keyword_rank = hr.opt_u64("keyword_rank");
        hit.vector_rank = hr.opt_u64("vector_rank");
        hit.keyword_score = hr.opt_num("keyword_score");
        hit.vector_score = hr.opt_num("vector_score");
        hit.ts = hr.ts("ts");
        hit.snippet = hr.str("snippet");
        hit.agent_id = hr.str("agent_id");
        if (const json* t = hr.find("type")) {  // as in units (an integer), or a name
          if (t->is_number_unsigned()) hit.type = unit_type(t->get<int>());
          else if (t->is_string()) hit.type = parse_unit_type(t->get_ref<const std::string&>());
          if (!hit.type) hr.wrong("type", "a unit type");
        }
        if (hr.bad()) r.fail(*hr.bad());
        out.hits.push_back(std::move(hit));
      }
  }
  if (r.bad()) return std::unexpected(protocol(*r.bad()));
  return out;
}

result<event> event_from(const json& j, std::string raw) {
  reader r(j, "event");
  event ev;
  ev.context_id = r.str("context_id");
  ev.seq = r.u64("seq");
  if (r.bad()) return std::unexpected(protocol(*r.bad()));
  if (ev.context_id.empty() || ev.seq == 0) return std::unexpected(protocol("stream message has no context_id and seq"));
  const json* type = r.find("type");
  if (type && type->is_string()) {
    ev.type = type->get<std::string>();
    if (const json* c = r.find("context")) {
      auto ctx = context_from(*c);
      if (!ctx) return std::unexpected(ctx.error());
      ev.context = std::move(*ctx);
    }
    if (const json* l = r.find("lock")) {
      auto lk = lock_from(*l);
      if (!lk) return std::unexpected(lk.error());
      ev.lock = std::move(*lk);
    }
  } else {  // a work unit is the bare unit object, with an integer type
    auto u = unit_from(j);
    if (!u) return std::unexpected(u.error());
    ev.type = "work_unit";
    ev.unit = std::move(*u);
  }
  ev.json = std::move(raw);
  return ev;
}

json unit_input_json(const unit_input& u, bool with_context) {
  json out{{"type", int(u.type)}};
  if (with_context) out["context_id"] = u.context_id;
  if (!u.agent_id.empty()) out["agent_id"] = u.agent_id;
  if (!u.payload.empty()) out["payload"] = base64_encode(u.payload);
  if (!u.meta.empty()) out["meta"] = map_json(u.meta);
  if (!u.relationships.empty()) out["relationships"] = relationships_json(u.relationships);
  if (u.fence) out["fence"] = json{{"resource", u.fence->resource}, {"token", u.fence->token}};
  if (!u.embedding.empty()) out["embedding"] = u.embedding;
  if (!u.embedding_model.empty()) out["embedding_model"] = u.embedding_model;
  if (!u.call_id.empty()) out["call_id"] = u.call_id;
  if (u.tokens) out["tokens"] = *u.tokens;
  return out;
}

json context_patch_json(const context_patch& p) {
  json out = json::object();
  if (p.display_name) out["display_name"] = *p.display_name;
  if (!p.add_agents.empty()) out["add_agents"] = p.add_agents;
  if (!p.remove_agents.empty()) out["remove_agents"] = p.remove_agents;
  if (!p.pin_units.empty()) out["pin_units"] = p.pin_units;
  if (!p.unpin_units.empty()) out["unpin_units"] = p.unpin_units;
  if (!p.meta.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : p.meta) meta[k] = v ? json(*v) : json(nullptr);
    out["meta"] = std::move(meta);
  }
  return out;
}

json search_request_json(const search_request& r) {
  json out{{"limit", r.limit}, {"offset", r.offset}};
  if (!r.query.empty()) out["query"] = r.query;
  if (!r.context_id.empty()) out["context_id"] = r.context_id;
  if (!r.agent_ids.empty()) out["agent_ids"] = r.agent_ids;
  if (!r.types.empty()) {
    json types = json::array();
    for (auto t : r.types) types.push_back(int(t));
    out["types"] = std::move(types);
  }
  if (!r.meta_filters.empty()) out["meta_filters"] = map_json(r.meta_filters);
  if (!r.relationships.empty()) {
    json rels = json::array();
    for (const auto& f : r.relationships) {
      json one{{"target_id", f.target_id}};
      if (f.type) one["type"] = int(*f.type);
      rels.push_back(std::move(one));
    }
    out["relationships"] = std::move(rels);
  }
  if (r.from) out["from"] = ts_json(*r.from);
  if (r.to) out["to"] = ts_json(*r.to);
  if (r.snippets) out["snippets"] = *r.snippets;
  if (!r.mode.empty()) out["mode"] = r.mode;
  if (!r.vector.empty()) out["vector"] = r.vector;
  if (!r.embedding_model.empty()) out["embedding_model"] = r.embedding_model;
  return out;
}

json to_wire(const work_unit& u) {
  json out{{"id", u.id},     {"context_id", u.context_id}, {"seq", u.seq},          {"agent_id", u.agent_id},
           {"type", int(u.type)}, {"ts", ts_json(u.ts)},   {"meta", map_json(u.meta)}, {"payload", base64_encode(u.payload)},
           {"relationships", relationships_json(u.relationships)}};
  if (!u.idempotency_key.empty()) out["idempotency_key"] = u.idempotency_key;
  if (!u.call_id.empty()) out["call_id"] = u.call_id;
  out["tokens"] = u.tokens;
  return out;
}

json to_wire(const context& c) {
  return json{{"id", c.id},
              {"display_name", c.display_name},
              {"agent_ids", c.agent_ids},
              {"pinned_units", c.pinned_units},
              {"meta", map_json(c.meta)},
              {"created_at", ts_json(c.created_at)},
              {"updated_at", ts_json(c.updated_at)},
              {"head_seq", c.head_seq}};
}

json to_wire(const lock& l) {
  json out{{"resource_path", l.resource_path}, {"holder_agent", l.holder_agent},
           {"lock_id", l.lock_id},             {"fencing_token", l.fencing_token},
           {"expires_at", ts_json(l.expires_at)}, {"acquired_at", ts_json(l.acquired_at)}};
  if (!l.context_id.empty()) out["context_id"] = l.context_id;
  return out;
}

json to_wire(const task& t) {
  const auto object = [](const std::string& text) { return text.empty() ? json() : json::parse(text, nullptr, false); };
  json out{{"task_id", t.task_id},        {"context_id", t.context_id},       {"title", t.title},
           {"spec", object(t.spec_json)}, {"depends_on", t.depends_on},       {"status", t.status},
           {"attempts", t.attempts},      {"max_attempts", t.max_attempts},   {"progress", object(t.progress_json)},
           {"created_by", t.created_by},  {"created_at", ts_json(t.created_at)}, {"updated_at", ts_json(t.updated_at)}};
  if (t.status == "claimed") {
    out["holder_agent"] = t.holder_agent;
    out["fencing_token"] = t.fencing_token;
    out["claim_expires_at"] = ts_json(t.claim_expires_at);
  }
  if (!t.last_holder.empty()) out["last_holder"] = t.last_holder;
  if (!t.result_json.empty()) out["result"] = object(t.result_json);
  if (!t.error.empty()) out["error"] = t.error;
  return out;
}

json to_wire(const search_result& r) {
  json hits = json::array();
  for (const auto& h : r.hits) {
    json one{{"id", h.id}, {"context_id", h.context_id}, {"seq", h.seq}, {"score", h.score}, {"ts", ts_json(h.ts)}};
    if (h.keyword_rank) one["keyword_rank"] = *h.keyword_rank;
    if (h.vector_rank) one["vector_rank"] = *h.vector_rank;
    if (h.keyword_score) one["keyword_score"] = *h.keyword_score;
    if (h.vector_score) one["vector_score"] = *h.vector_score;
    if (!h.snippet.empty()) one["snippet"] = h.snippet;
    if (!h.agent_id.empty()) one["agent_id"] = h.agent_id;
    if (h.type) one["type"] = int(*h.type);
    hits.push_back(std::move(one));
  }
  json out{{"results", r.ids},  {"total_count", r.total_count}, {"total_count_exact", r.total_count_exact},
           {"limit", r.limit},  {"offset", r.offset},           {"hits", std::move(hits)}};
  if (!r.mode.empty()) out["mode"] = r.mode;
  if (!r.degraded.empty()) out["degraded"] = r.degraded;
  return out;
}

}  // namespace codec

namespace {
std::string dump(const codec::json& j) { return j.dump(-1, ' ', false, codec::json::error_handler_t::replace); }
}  // namespace

std::string to_json(const work_unit& u) { return dump(codec::to_wire(u)); }
std::string to_json(const context& c) { return dump(codec::to_wire(c)); }
std::string to_json(const lock& l) { return dump(codec::to_wire(l)); }
std::string to_json(const search_result& r) { return dump(codec::to_wire(r)); }
std::string to_json(const task& t) { return dump(codec::to_wire(t)); }

}  // namespace engram::client
