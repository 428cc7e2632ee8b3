#include "gateway/packet_params.hpp"

#include <cmath>
#include <nlohmann/json.hpp>

#include "gateway/search_params.hpp"
#include "model/text.hpp"

namespace engram::gateway {
namespace {

using model::errc;
using model::fail;
using model::json;

model::error bad(std::string message) { return {errc::invalid_argument, std::move(message)}; }

std::string join(std::span<const std::string_view> names) {
  std::string out;
  for (auto n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

// "pinned, facts, …" and "section, keyword_rank, …", for messages.
template <class E, size_t N>
std::string names_of() {
  std::vector<std::string_view> names;
  for (size_t i = 0; i < N; ++i) names.push_back(engine::to_string(E(i)));
  return join(names);
}

// An integer from `min` to `max`.
model::result<uint64_t> count(const json& v, const std::string& field, uint64_t max, uint64_t min = 0) {
  const bool negative = v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0;
  if (!v.is_number_integer() || negative || v.get<uint64_t>() < min || v.get<uint64_t>() > max)
    return std::unexpected(
        bad(field + " must be an integer from " + std::to_string(min) + " to " + std::to_string(max)));
  return v.get<uint64_t>();
}

model::status parse_query(const json& v, engine::packet_request& r, bool check_nested) {
  if (v.is_null()) return {};
  if (v.is_string()) {
    r.query_text = v.get<std::string>();
  } else if (v.is_object()) {
    if (check_nested)
      if (auto ok = check_fields(v, fields::packet_query, "query"); !ok) return ok;
    if (auto t = v.find("text"); t != v.end() && !t->is_null()) {
      if (!t->is_string()) return std::unexpected(bad("query.text must be a string"));
      r.query_text = t->get<std::string>();
    }
    if (auto vec = v.find("vector"); vec != v.end() && !vec->is_null()) {
      auto values = model::vector_from_json(*vec, "query.vector");
      if (!values) return std::unexpected(values.error());
      r.query_vector = std::move(*values);
    }
    if (auto m = v.find("model"); m != v.end() && !m->is_null()) {
      if (!m->is_string() || m->get_ref<const std::string&>().size() > model::max_id_bytes)
        return std::unexpected(bad("query.model must be a string of at most 256 bytes"));
      r.query_model = m->get<std::string>();
    }
  } else {
    return std::unexpected(bad("query must be a string or an object {\"text\", \"vector\", \"model\"}"));
  }
  if (r.query_text.size() > max_query_bytes)
    return std::unexpected(bad("query.text must be at most " + std::to_string(max_query_bytes) + " bytes"));
  return {};
}

model::status parse_budget(const json& v, engine::packet_request& r, bool check_nested) {
  if (v.is_null()) return {};
  if (!v.is_object()) return std::unexpected(bad("budget must be an object {\"max_tokens\", \"sections\"}"));
  if (check_nested)
    if (auto ok = check_fields(v, fields::packet_budget, "budget"); !ok) return ok;
  if (auto m = v.find("max_tokens"); m != v.end() && !m->is_null()) {
    auto n = count(*m, "budget.max_tokens", engine::max_packet_tokens, 1);
    if (!n) return std::unexpected(n.error());
    r.max_tokens = uint32_t(*n);
  }
  if (auto s = v.find("sections"); s != v.end() && !s->is_null()) {
    if (!s->is_object()) return std::unexpected(bad("budget.sections must be an object of section: tokens"));
    for (const auto& [name, tokens] : s->items()) {
      auto sec = engine::packet_section_from(name);
      if (!sec)
        return std::unexpected(bad("budget.sections." + name + ": unknown section; the sections are " +
                                   names_of<engine::packet_section, engine::packet_section_count>()));
      auto n = count(tokens, "budget.sections." + name, engine::max_packet_tokens);
      if (!n) return std::unexpected(n.error());
      r.section_budget[size_t(*sec)] = uint32_t(*n);
    }
  }
  return {};
}

model::status parse_policy(const json& v, engine::packet_request& r, bool check_nested) {
  if (!v.is_object()) return std::unexpected(bad("policy must be an object or a policy's name"));
  if (check_nested)
    if (auto ok = check_fields(v, fields::packet_policy, "policy"); !ok) return ok;
  auto& p = r.policy;
  struct limit {
    const char* field;
    size_t* target;
  };
  for (auto [field, target] : {limit{"recent_window", &p.recent_window}, limit{"retrieve_limit", &p.retrieve_limit},
                               limit{"summaries_limit", &p.summaries_limit}}) {
    auto it = v.find(field);
    if (it == v.end() || it->is_null()) continue;
    auto n = count(*it, std::string("policy.") + field, engine::max_packet_window);
    if (!n) return std::unexpected(n.error());
    *target = *n;
  }
  if (auto t = v.find("types"); t != v.end() && !t->is_null()) {
    if (!t->is_array() || t->empty() || t->size() > 10)
      return std::unexpected(bad("policy.types must be a non-empty array of work unit types"));
    p.types.clear();
    for (const auto& type : *t) {
      auto parsed = model::unit_type_from_json(type, "policy.types");
      if (!parsed) return std::unexpected(parsed.error());
      p.types.push_back(int(*parsed));
    }
  }
  if (auto h = v.find("half_life_s"); h != v.end() && !h->is_null()) {
    if (!h->is_number() || !(h->get<double>() > 0) || h->get<double>() > 1e10)
      return std::unexpected(bad("policy.half_life_s must be a number of seconds above 0"));
    p.half_life_s = h->get<double>();
  }
  if (auto w = v.find("weights"); w != v.end() && !w->is_null()) {
    if (!w->is_object()) return std::unexpected(bad("policy.weights must be an object of signal: weight"));
    for (const auto& [name, weight] : w->items()) {
      auto sig = engine::packet_signal_from(name);
      if (!sig)
        return std::unexpected(bad("policy.weights." + name + ": unknown signal; the signals are " +
                                   names_of<engine::packet_signal, engine::packet_signal_count>()));
      if (!weight.is_number() || !std::isfinite(weight.get<double>()) || std::fabs(weight.get<double>()) > 1000)
        return std::unexpected(bad("policy.weights." + name + " must be a number from -1000 to 1000"));
      p.weights[size_t(*sig)] = weight.get<double>();
    }
  }
  return {};
}

}  // namespace

model::result<engine::packet_request> parse_packet_body(const json& body, bool check_nested) {
  engine::packet_request r;
  if (auto p = body.find("purpose"); p != body.end() && !p->is_null()) {
    if (!p->is_string() || p->get_ref<const std::string&>().size() > 1024)
      return std::unexpected(bad("purpose must be a string of at most 1024 bytes"));
    r.purpose = p->get<std::string>();
  }
  // The policy: policy.name, else a purpose that names one, else "default"; then
  // the request's overrides.
  std::string name = "default";
  const auto pol = body.find("policy");
  const bool has_policy = pol != body.end() && !pol->is_null();
  if (has_policy && pol->is_string()) {
    name = pol->get<std::string>();
  } else if (has_policy && pol->is_object() && pol->contains("name") && !(*pol)["name"].is_null()) {
    if (!(*pol)["name"].is_string()) return std::unexpected(bad("policy.name must be a string"));
    name = (*pol)["name"].get<std::string>();
  } else if (engine::named_packet_policy(r.purpose)) {
    name = r.purpose;
  }
  const auto* base = engine::named_packet_policy(name);
  if (!base)
    return std::unexpected(bad("policy.name: unknown policy '" + name + "'; the named policies are " +
                               join(engine::packet_policy_names())));
  r.policy = *base;
  if (has_policy && !pol->is_string())
    if (auto ok = parse_policy(*pol, r, check_nested); !ok) return std::unexpected(ok.error());
  if (auto q = body.find("query"); q != body.end())
    if (auto ok = parse_query(*q, r, check_nested); !ok) return std::unexpected(ok.error());
  if (auto b = body.find("budget"); b != body.end())
    if (auto ok = parse_budget(*b, r, check_nested); !ok) return std::unexpected(ok.error());
  for (auto [field, target] : {std::pair{"as_of_seq", &r.as_of_seq}, std::pair{"since_seq", &r.since_seq}}) {
    auto it = body.find(field);
    if (it == body.end() || it->is_null()) continue;
    auto n = count(*it, field, UINT64_MAX);
    if (!n) return std::unexpected(n.error());
    *target = *n;
  }
  if (auto n = body.find("now"); n != body.end() && !n->is_null()) {
    auto ns = model::timestamp_from_json(*n, "now");
    if (!ns) return std::unexpected(ns.error());
    r.now_ns = *ns;
  }
  if (auto f = body.find("format"); f != body.end() && !f->is_null()) {
    if (!f->is_string() || (*f != "json" && *f != "text"))
      return std::unexpected(bad("format must be \"json\" or \"text\""));
    r.text = *f == "text";
  }
  return r;
}

}  // namespace engram::gateway
