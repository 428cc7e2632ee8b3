#include "gateway/stream_params.hpp"

#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>
#include <charconv>
#include <nlohmann/json.hpp>

#include "model/text.hpp"

namespace engram::gateway {
namespace {

using model::errc;
using model::fail;

std::optional<uint64_t> to_u64(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

model::status add_context(engine::stream_request& out, std::string_view item) {
  if (item.ends_with('*')) {
    std::string prefix(item.substr(0, item.size() - 1));
    if (prefix.find('*') != std::string::npos)
      return fail(errc::invalid_argument, "a context pattern may only end with '*': '" + std::string(item) + "'");
    if (!prefix.empty())
      if (auto bad = model::check_identifier("context pattern", prefix, model::max_id_bytes))
        return fail(errc::invalid_argument, *bad);
    out.prefixes.push_back(std::move(prefix));
  } else {
    if (auto bad = model::check_identifier("context", item, model::max_id_bytes))
      return fail(errc::invalid_argument, *bad);
    out.contexts.emplace_back(item);
  }
  if (out.contexts.size() + out.prefixes.size() > max_stream_contexts)
    return fail(errc::invalid_argument, "at most " + std::to_string(max_stream_contexts) +
                                            " contexts or patterns per subscription");
  return {};
}

model::status parse_token(engine::stream_request& out, std::string_view token) {
  // Token: base64url of "ctx\tseq\n" lines.
  auto raw = model::base64url_decode(token);
  if (!raw) return fail(errc::invalid_argument, "Last-Event-ID is not a cursor this server issued");
  std::string_view rest = *raw;
  while (!rest.empty()) {
    const auto nl = rest.find('\n');
    const auto line = rest.substr(0, nl);
    const auto tab = line.find('\t');
    auto seq = tab == std::string_view::npos ? std::nullopt : to_u64(line.substr(tab + 1));
    if (!seq) return fail(errc::invalid_argument, "Last-Event-ID is not a cursor this server issued");
    out.since_by_context[std::string(line.substr(0, tab))] = *seq;
    if (nl == std::string_view::npos) break;
    rest.remove_prefix(nl + 1);
  }
  return {};
}

}  // namespace

model::result<engine::stream_request> parse_stream_query(const request& req, bool sse) {
  auto parsed = boost::urls::parse_origin_form(req.target);
  if (!parsed) return fail(errc::invalid_argument, "malformed request target");
  engine::stream_request out;
  bool have_context = false;
  for (auto p : parsed->params()) {
    if (p.key == "context") {
      have_context = true;
      std::string_view list = p.value;
      while (true) {
        const auto comma = list.find(',');
        const auto item = list.substr(0, comma);
        if (!item.empty())
          if (auto ok = add_context(out, item); !ok) return std::unexpected(ok.error());
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
      }
    } else if (p.key == "agent_id") {
      if (auto bad = model::check_identifier("agent_id", p.value, model::max_id_bytes))
        return fail(errc::invalid_argument, *bad);
      out.agent_id = p.value;
    } else if (p.key == "presence") {
      if (p.value == "1" || p.value == "true") out.presence = true;
      else if (p.value == "0" || p.value == "false" || p.value.empty()) out.presence = false;
      else return fail(errc::invalid_argument, "presence must be true or false, got '" + p.value.substr(0, 64) + "'");
    } else if (p.key == "since") {
      auto v = to_u64(p.value);
      if (!v) return fail(errc::invalid_argument, "since must be a non-negative integer, got '" + p.value + "'");
      out.since = *v;
    }
  }
  if (!have_context || (out.contexts.empty() && out.prefixes.empty()))
    return fail(errc::invalid_argument, "context is required: ?context=<id>[,<id>…] (a trailing * matches a prefix)");
  if (sse && out.presence)
    return fail(errc::invalid_argument, "presence is for WebSocket subscribers; SSE clients send heartbeats "
                                        "(POST /agents/{agent_id}/heartbeat)");
  if (sse) {
    const auto last = req.header("last-event-id");
    if (!last.empty()) {
      if (auto seq = to_u64(last)) {
        out.since = *seq;  // a plain seq, as issued for single-context streams
      } else if (auto ok = parse_token(out, last); !ok) {
        return std::unexpected(ok.error());
      }
    }
  }
  return out;
}

model::result<bool> parse_stream_text(const request& req) {
  auto parsed = boost::urls::parse_origin_form(req.target);
  if (!parsed) return fail(errc::invalid_argument, "malformed request target");
  bool text = false;
  for (auto p : parsed->params()) {
    if (p.key != "text") continue;
    if (p.value == "1" || p.value == "true") text = true;
    else if (p.value == "0" || p.value == "false" || p.value.empty()) text = false;
    else return fail(errc::invalid_argument, "text must be true or false, got '" + p.value.substr(0, 64) + "'");
  }
  return text;
}

model::result<engine::stream_request> parse_subscribe_message(const model::json& msg) {
  engine::stream_request out;
  const auto contexts = msg.find("contexts");
  if (contexts == msg.end() || !contexts->is_array() || contexts->empty())
    return fail(errc::invalid_argument, "subscribe needs \"contexts\": a non-empty array of ids or patterns");
  for (const auto& c : *contexts) {
    if (!c.is_string()) return fail(errc::invalid_argument, "contexts must be strings");
    if (auto ok = add_context(out, c.get_ref<const std::string&>()); !ok) return std::unexpected(ok.error());
  }
  if (auto since = msg.find("since"); since != msg.end() && !since->is_null()) {
    if (since->is_number_unsigned()) {
      out.since = since->get<uint64_t>();
    } else if (since->is_object()) {
      for (const auto& [ctx, seq] : since->items()) {
        if (!seq.is_number_unsigned())
          return fail(errc::invalid_argument, "since." + ctx + " must be a non-negative integer");
        out.since_by_context[ctx] = seq.get<uint64_t>();
      }
    } else {
      return fail(errc::invalid_argument, "since must be a seq or an object of {context: seq}");
    }
  }
  if (auto agent = msg.find("agent_id"); agent != msg.end() && !agent->is_null()) {
    if (!agent->is_string()) return fail(errc::invalid_argument, "agent_id must be a string");
    if (auto bad = model::check_identifier("agent_id", agent->get_ref<const std::string&>(), model::max_id_bytes))
      return fail(errc::invalid_argument, *bad);
    out.agent_id = agent->get<std::string>();
  }
  if (auto presence = msg.find("presence"); presence != msg.end() && !presence->is_null()) {
    if (!presence->is_boolean()) return fail(errc::invalid_argument, "presence must be true or false");
    out.presence = presence->get<bool>();
  }
  // "cursors" sets per-context resume points next to a numeric "since", which then
  // covers only the contexts not listed (a resuming pattern subscriber sends
  // since 0 so that contexts created while it was away are replayed whole).
  if (auto cursors = msg.find("cursors"); cursors != msg.end() && !cursors->is_null()) {
    if (!cursors->is_object()) return fail(errc::invalid_argument, "cursors must be an object of {context: seq}");
    for (const auto& [ctx, seq] : cursors->items()) {
      if (!seq.is_number_unsigned())
        return fail(errc::invalid_argument, "cursors." + ctx + " must be a non-negative integer");
      out.since_by_context[ctx] = seq.get<uint64_t>();
    }
  }
  return out;
}

std::string resume_token(const std::map<std::string, uint64_t>& cursors) {
  std::string raw;
  for (const auto& [ctx, seq] : cursors) {
    if (!raw.empty()) raw.push_back('\n');
    raw.append(ctx).push_back('\t');
    raw.append(std::to_string(seq));
  }
  return model::base64url_encode(raw);
}

model::status authorize_stream(engine::stream_request& sub, const caller& who) {
  if (sub.presence) {
    if (sub.agent_id.empty() && who.principal) sub.agent_id = who.principal->agent;
    if (sub.agent_id.empty())
      return fail(errc::invalid_argument, "presence needs agent_id: the agent that is present while connected");
    if (sub.contexts.empty())
      return fail(errc::invalid_argument, "presence needs exact contexts (a pattern names no context to be present in)");
    if (who.principal && who.principal->agent != sub.agent_id && !who.can(auth::admin, "*"))
      return fail(errc::forbidden, "agent_id '" + sub.agent_id + "' is not the token's subject '" +
                                       who.principal->agent + "'");
    for (const auto& c : sub.contexts)
      if (!who.can(auth::write, c))
        return fail(errc::forbidden, "presence in context '" + c + "' needs the write grant there");
  }
  if (!who.principal) return {};
  for (const auto& c : sub.contexts)
    if (!who.can(auth::read, c)) return model::fail(model::errc::forbidden, "not allowed to read context '" + c + "'");
  // A token that may read everything needs no per-event check where events are offered.
  if (who.principal->scope(auth::read))
    sub.permit = [p = *who.principal](std::string_view id) { return p.can(auth::read, id); };
  return {};
}

}  // namespace engram::gateway
