#include "gateway/lock_params.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

namespace engram::gateway {
namespace {

using model::errc;
using model::fail;
using model::json;
using std::chrono::milliseconds;

// Far beyond any configured maximum (which the lock manager applies), and far from
// int64 overflow once converted to nanoseconds and added to a clock.
constexpr double max_millis = 1e12;

// `field` as a duration when present: a number (any, as JSON has one kind) of
// units of `scale` milliseconds. Non-finite or huge values saturate instead of
// overflowing the conversion.
model::result<std::optional<milliseconds>> duration_field(const json& body, const char* field, double scale) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::optional<milliseconds>();
  if (!it->is_number()) return fail(errc::invalid_argument, std::string(field) + " must be a number");
  const double ms = it->get<double>() * scale;
  if (std::isnan(ms)) return fail(errc::invalid_argument, std::string(field) + " must be a number");
  return std::optional<milliseconds>(milliseconds(int64_t(std::clamp(ms, -max_millis, max_millis))));
}

}  // namespace

model::result<milliseconds> ttl_field(const json& body) {
  auto ms = duration_field(body, "ttl_ms", 1);
  if (!ms) return std::unexpected(ms.error());
  auto s = duration_field(body, "ttl_seconds", 1000);
  if (!s) return std::unexpected(s.error());
  return ms->value_or(s->value_or(milliseconds(0)));
}

model::result<std::string> agent_field(const json& body, std::string_view default_agent) {
  const auto a = body.find("agent_id");
  if (a == body.end() || a->is_null()) return std::string(default_agent);
  if (!a->is_string()) return fail(errc::invalid_argument, "agent_id must be a string");
  const auto& s = a->get_ref<const std::string&>();
  return s.empty() ? std::string(default_agent) : s;
}

model::result<acquire_body> parse_acquire_body(const json& body, std::string_view default_agent) {
  acquire_body out;
  auto& ar = out.request;
  auto agent = agent_field(body, default_agent);
  if (!agent) return std::unexpected(agent.error());
  ar.agent = std::move(*agent);
  out.multi = body.contains("resource_paths");
  if (out.multi) {
    const auto& list = body["resource_paths"];
    if (!list.is_array() || list.empty())
      return fail(errc::invalid_argument, "resource_paths must be a non-empty array of strings");
    for (const auto& r : list) {
      if (!r.is_string()) return fail(errc::invalid_argument, "resource_paths must be a non-empty array of strings");
      ar.resources.push_back(r.get<std::string>());
    }
  } else if (auto r = body.find("resource_path"); r != body.end() && r->is_string()) {
    if (r->get_ref<const std::string&>().empty()) return fail(errc::invalid_argument, "resource_path is required");
    ar.resources.push_back(r->get<std::string>());
  } else {
    return fail(errc::invalid_argument, "resource_path (a string) or resource_paths (an array) is required");
  }
  auto ttl = ttl_field(body);
  if (!ttl) return std::unexpected(ttl.error());
  ar.ttl = *ttl;
  auto wait = duration_field(body, "wait_ms", 1);
  if (!wait) return std::unexpected(wait.error());
  ar.wait = std::max(milliseconds(0), wait->value_or(milliseconds(0)));
  if (auto c = body.find("context_id"); c != body.end() && !c->is_null()) {
    if (!c->is_string()) return fail(errc::invalid_argument, "context_id must be a string");
    ar.context_id = c->get<std::string>();
  }
  return out;
}

model::result<renew_body> parse_renew_body(const json& body, std::string_view default_agent) {
  renew_body out;
  auto agent = agent_field(body, default_agent);
  if (!agent) return std::unexpected(agent.error());
  out.agent = std::move(*agent);
  const auto id = body.find("lock_id");
  if (id == body.end() || !id->is_string()) return fail(errc::invalid_argument, "lock_id is required");
  out.lock_id = id->get<std::string>();
  auto ttl = ttl_field(body);
  if (!ttl) return std::unexpected(ttl.error());
  out.ttl = *ttl;
  return out;
}

model::status parse_fence(const json& object, std::vector<storage::fence>& out) {
  auto it = object.find("fence");
  if (it == object.end() || it->is_null()) return {};
  if (!it->is_object()) return fail(errc::invalid_argument, "fence must be {\"resource\":…,\"token\":N}");
  auto r = it->find("resource");
  auto t = it->find("token");
  if (r == it->end() || !r->is_string() || r->get_ref<const std::string&>().empty())
    return fail(errc::invalid_argument, "fence.resource must be a non-empty string");
  if (t == it->end() || !t->is_number_unsigned())
    return fail(errc::invalid_argument, "fence.token must be a non-negative integer");
  out.push_back({r->get<std::string>(), t->get<uint64_t>()});
  return {};
}

}  // namespace engram::gateway
