#include "gateway/search_params.hpp"

#include <charconv>
#include <nlohmann/json.hpp>

#include "model/text.hpp"

namespace engram::gateway {
namespace {

using model::errc;
using model::fail;
using model::json;

model::status check_query_text(const std::string& text) {
  if (text.size() > max_query_bytes)
    return fail(errc::invalid_argument, "query is longer than " + std::to_string(max_query_bytes) + " bytes");
  if (!model::valid_utf8(text)) return fail(errc::invalid_argument, "query is not valid UTF-8");
  return {};
}

model::status check_context(const std::string& ctx) {
  if (ctx.empty() || ctx == "*") return {};
  const std::string_view id = ctx.ends_with('*') ? std::string_view(ctx).substr(0, ctx.size() - 1) : ctx;
  if (auto bad = model::check_identifier("context_id", id, model::max_id_bytes))
    return fail(errc::invalid_argument, *bad);
  return {};
}

model::status add_agent(search::query& q, const std::string& agent) {
  if (auto bad = model::check_identifier("agent_ids[]", agent, model::max_id_bytes))
    return fail(errc::invalid_argument, *bad);
  q.agent_ids.push_back(agent);
  return {};
}

model::status add_meta(search::query& q, std::string key, std::string value) {
  if (key.empty()) return fail(errc::invalid_argument, "meta_filters keys must not be empty");
  if (key.size() > model::max_id_bytes || value.size() > model::max_meta_value_bytes)
    return fail(errc::invalid_argument, "meta_filters entry '" + key.substr(0, 64) + "' is too long");
  if (!model::valid_utf8(key) || !model::valid_utf8(value))
    return fail(errc::invalid_argument, "meta_filters keys and values must be valid UTF-8");
  q.meta.emplace_back(std::move(key), std::move(value));
  return {};
}

model::status add_relationship(search::query& q, std::string target, std::optional<int> type) {
  if (auto bad = model::check_identifier("relationships[].target_id", target, model::max_id_bytes))
    return fail(errc::invalid_argument, *bad);
  q.relationships.push_back({std::move(target), type});
  return {};
}

model::status check_counts(const search::query& q) {
  if (q.agent_ids.size() > max_filter_values || q.types.size() > max_filter_values ||
      q.meta.size() > max_filter_values || q.relationships.size() > max_filter_values)
    return fail(errc::invalid_argument,
                "a filter lists at most " + std::to_string(max_filter_values) + " values");
  return {};
}

template <class Fn>
model::status each_string(const json& body, std::string_view field, Fn&& fn) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return {};
  if (!it->is_array()) return fail(errc::invalid_argument, std::string(field) + " must be an array of strings");
  for (const auto& v : *it) {
    if (!v.is_string()) return fail(errc::invalid_argument, std::string(field) + " must be an array of strings");
    if (auto ok = fn(v.get<std::string>()); !ok) return ok;
  }
  return {};
}

model::result<std::optional<size_t>> count_field(const json& body, std::string_view field) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::optional<size_t>();
  if (!it->is_number_integer() || it->get<int64_t>() < 0)
    return fail(errc::invalid_argument, std::string(field) + " must be a non-negative integer");
  return std::optional<size_t>(it->get<uint64_t>());
}

model::result<search::search_mode> mode_from(const json& mode) {
  if (mode.is_null() || mode == "auto") return search::search_mode::automatic;
  if (mode == "keyword") return search::search_mode::keyword;
  if (mode == "semantic") return search::search_mode::semantic;
  if (mode == "hybrid") return search::search_mode::hybrid;
  return fail(errc::invalid_argument, "mode must be \"keyword\", \"semantic\" or \"hybrid\"");
}

model::status set_model(search::query& q, const std::string& model) {
  if (auto bad = model::check_identifier("embedding_model", model, model::max_id_bytes))
    return fail(errc::invalid_argument, *bad);
  q.model = model;
  return {};
}

// A vector in a query string: comma-separated numbers.
model::status set_vector_param(search::query& q, const std::string& v) {
  json values = json::array();
  size_t start = 0;
  while (start <= v.size()) {
    const size_t end = std::min(v.find(',', start), v.size());
    const std::string item = v.substr(start, end - start);
    double d = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), d);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size())
      return fail(errc::invalid_argument, "vector must be comma-separated numbers, got '" + item + "'");
    values.push_back(d);
    if (values.size() > model::max_embedding_dimension) break;  // reported below
    start = end + 1;
  }
  auto parsed = model::vector_from_json(values, "vector");
  if (!parsed) return std::unexpected(parsed.error());
  q.vector = std::move(*parsed);
  return {};
}

model::result<uint64_t> count_param(std::string_view key, const std::string& v) {
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size())
    return fail(errc::invalid_argument, std::string(key) + " must be a non-negative integer, got '" + v + "'");
  return n;
}

// RFC 3339, or whole seconds since the epoch.
model::result<int64_t> time_param(std::string_view key, const std::string& v) {
  if (!v.empty() && v.find_first_not_of("0123456789") == std::string::npos) {
    auto s = count_param(key, v);
    if (!s || *s > uint64_t(INT64_MAX / 1'000'000'000 - 1))
      return fail(errc::invalid_argument, std::string(key) + " is out of range");
    return int64_t(*s) * 1'000'000'000;
  }
  auto ns = model::parse_rfc3339(v);
  if (!ns) return fail(errc::invalid_argument, std::string(key) + ": " + ns.error().message);
  return ns;
}

// A type given in a query string: a number or a name.
json enum_param(const std::string& v) {
  if (!v.empty() && v.size() < 10 && v.find_first_not_of("0123456789") == std::string::npos) return std::stoi(v);
  return v;
}

}  // namespace

model::result<search_request> parse_search_body(const json& body) {
  search_request out;
  auto& q = out.query;
  if (auto m = body.find("mode"); m != body.end()) {
    auto mode = mode_from(*m);
    if (!mode) return std::unexpected(mode.error());
    q.mode = *mode;
  }
  if (auto it = body.find("vector"); it != body.end() && !it->is_null()) {
    auto v = model::vector_from_json(*it, "vector");
    if (!v) return std::unexpected(v.error());
    q.vector = std::move(*v);
  }
  if (auto it = body.find("embedding_model"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return fail(errc::invalid_argument, "embedding_model must be a string");
    if (auto ok = set_model(q, it->get<std::string>()); !ok) return std::unexpected(ok.error());
  }
  if (auto it = body.find("query"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return fail(errc::invalid_argument, "query must be a string");
    q.text = it->get<std::string>();
    if (auto ok = check_query_text(q.text); !ok) return std::unexpected(ok.error());
  }
  if (auto it = body.find("context_id"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return fail(errc::invalid_argument, "context_id must be a string");
    q.context_id = it->get<std::string>();
    if (auto ok = check_context(q.context_id); !ok) return std::unexpected(ok.error());
  }
  if (auto ok = each_string(body, "agent_ids", [&](const std::string& a) { return add_agent(q, a); }); !ok)
    return std::unexpected(ok.error());
  if (auto it = body.find("types"); it != body.end() && !it->is_null()) {
    if (!it->is_array()) return fail(errc::invalid_argument, "types must be an array of integers or type names");
    for (const auto& t : *it) {
      auto type = model::unit_type_from_json(t, "types[]");
      if (!type) return std::unexpected(type.error());
      q.types.push_back(int(*type));
    }
  }
  if (auto it = body.find("meta_filters"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return fail(errc::invalid_argument, "meta_filters must be an object of strings");
    for (const auto& [k, v] : it->items()) {
      if (!v.is_string()) return fail(errc::invalid_argument, "meta_filters." + k.substr(0, 64) + " must be a string");
      if (auto ok = add_meta(q, k, v.get<std::string>()); !ok) return std::unexpected(ok.error());
    }
  }
  if (auto it = body.find("relationships"); it != body.end() && !it->is_null()) {
    if (!it->is_array())
      return fail(errc::invalid_argument, "relationships must be an array of {\"target_id\",\"type\"}");
    for (const auto& r : *it) {
      const auto target = r.is_object() ? r.find("target_id") : r.end();
      if (!r.is_object() || target == r.end() || !target->is_string())
        return fail(errc::invalid_argument, "relationships[] must be {\"target_id\":\"…\",\"type\":…}");
      std::optional<int> type;
      if (auto t = r.find("type"); t != r.end() && !t->is_null()) {
        auto parsed = model::relationship_type_from_json(*t, "relationships[].type");
        if (!parsed) return std::unexpected(parsed.error());
        type = int(*parsed);
      }
      if (auto ok = add_relationship(q, target->get<std::string>(), type); !ok) return std::unexpected(ok.error());
    }
  }
  for (auto [field, target] : {std::pair{"from", &q.from_ns}, std::pair{"to", &q.to_ns}}) {
    if (auto it = body.find(field); it != body.end() && !it->is_null()) {
      auto ns = model::timestamp_from_json(*it, field);
      if (!ns) return std::unexpected(ns.error());
      *target = *ns;
    }
  }
  auto limit = count_field(body, "limit");
  if (!limit) return std::unexpected(limit.error());
  out.limit = *limit;
  auto offset = count_field(body, "offset");
  if (!offset) return std::unexpected(offset.error());
  q.offset = offset->value_or(0);
  if (auto it = body.find("snippets"); it != body.end() && !it->is_null()) {
    if (!it->is_boolean()) return fail(errc::invalid_argument, "snippets must be true or false");
    q.snippets = it->get<bool>();
  }
  if (auto ok = check_counts(q); !ok) return std::unexpected(ok.error());
  return out;
}

model::result<search_request> parse_search_params(const std::vector<std::pair<std::string, std::string>>& params) {
  search_request out;
  auto& q = out.query;
  for (const auto& [key, value] : params) {
    model::status ok;
    if (key == "q" || key == "query") {
      q.text = value;
      ok = check_query_text(value);
    } else if (key == "context" || key == "context_id") {
      q.context_id = value;
      ok = check_context(value);
    } else if (key == "agent" || key == "agent_id") {
      ok = add_agent(q, value);
    } else if (key == "type") {
      auto type = model::unit_type_from_json(enum_param(value), "type");
      if (type) q.types.push_back(int(*type));
      else ok = std::unexpected(type.error());
    } else if (key == "meta") {
      const auto eq = value.find('=');
      if (eq == std::string::npos) ok = fail(errc::invalid_argument, "meta must be key=value, got '" + value + "'");
      else ok = add_meta(q, value.substr(0, eq), value.substr(eq + 1));
    } else if (key == "rel") {
      // [TYPE:]target — the part before ':' counts as a type only if it names one.
      std::optional<int> type;
      std::string target = value;
      if (const auto colon = value.find(':'); colon != std::string::npos) {
        if (auto t = model::relationship_type_from_json(enum_param(value.substr(0, colon)), "rel"); t) {
          type = int(*t);
          target = value.substr(colon + 1);
        }
      }
      ok = add_relationship(q, std::move(target), type);
    } else if (key == "from" || key == "to") {
      auto ns = time_param(key, value);
      if (ns) (key == "from" ? q.from_ns : q.to_ns) = *ns;
      else ok = std::unexpected(ns.error());
    } else if (key == "limit" || key == "offset") {
      auto n = count_param(key, value);
      if (!n) ok = std::unexpected(n.error());
      else if (key == "limit") out.limit = *n;
      else q.offset = *n;
    } else if (key == "snippets") {
      if (value == "true" || value == "1") q.snippets = true;
      else if (value == "false" || value == "0") q.snippets = false;
      else ok = fail(errc::invalid_argument, "snippets must be true or false");
    } else if (key == "mode") {
      auto mode = mode_from(json(value));
      if (mode) q.mode = *mode;
      else ok = std::unexpected(mode.error());
    } else if (key == "vector") {
      ok = set_vector_param(q, value);
    } else if (key == "model" || key == "embedding_model") {
      ok = set_model(q, value);
    }
    // Other parameters are ignored, as in the rest of the API.
    if (!ok) return std::unexpected(ok.error());
  }
  if (auto ok = check_counts(q); !ok) return std::unexpected(ok.error());
  return out;
}

}  // namespace engram::gateway
