// POST /contexts/{id}/packet: the memory packet (README "Memory packet";
// engine/packet.hpp). Served with an ETag that covers everything but generated_at,
// so a client holding one can ask again with If-None-Match and get a 304.
#include <nlohmann/json.hpp>

#include "gateway/packet_params.hpp"
#include "gateway/routes.hpp"
#include "model/text.hpp"

namespace engram::gateway {
namespace {

std::string_view strip_weak(std::string_view tag) {
  while (!tag.empty() && tag.front() == ' ') tag.remove_prefix(1);
  while (!tag.empty() && tag.back() == ' ') tag.remove_suffix(1);
  if (tag.starts_with("W/")) tag.remove_prefix(2);
  return tag;
}

// If-None-Match: "*" or a list of tags, compared weakly (RFC 9110 §13.1.2).
bool matches(std::string_view if_none_match, std::string_view etag) {
  if (if_none_match.empty()) return false;
  if (strip_weak(if_none_match) == "*") return true;
  while (!if_none_match.empty()) {
    auto comma = if_none_match.find(',');
    if (strip_weak(if_none_match.substr(0, comma)) == strip_weak(etag)) return true;
    if (comma == std::string_view::npos) break;
    if_none_match.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace

void build_packet(services& s, call& c, responder respond) {
  auto body = parse_body(s, c.req, fields::packet, "the packet request");
  if (!body) return respond(error_response(body.error()));
  auto req = parse_packet_body(*body, s.opts.reject_unknown_fields);
  if (!req) return respond(error_response(req.error()));
  req->context_id = c.subject;
  // Whose packet: agent_id, else X-Agent-ID (the token's subject with auth on), else
  // nobody's. A reader may see what another agent would be shown.
  if (auto a = body->find("agent_id"); a != body->end() && !a->is_null()) {
    if (!a->is_string()) return respond(bad_request("agent_id must be a string"));
    req->agent_id = a->get<std::string>();
  } else {
    req->agent_id = c.req.header("x-agent-id");
  }
  if (!req->agent_id.empty())
    if (auto bad = model::check_identifier("agent_id", req->agent_id, model::max_id_bytes))
      return respond(bad_request(*bad));
  std::string if_none_match(c.req.header("if-none-match"));
  s.eng.packet(std::move(*req), [respond = std::move(respond), if_none_match = std::move(if_none_match)](
                                    model::result<engine::packet_output> r) {
    if (!r) return respond(error_response(r.error()));
    response out;
    out.headers.emplace_back("ETag", r->etag);
    out.headers.emplace_back("Cache-Control", "no-cache");
    if (matches(if_none_match, r->etag)) {
      out.status = 304;
      out.content_type.clear();
      return respond(std::move(out));
    }
    out.body = std::move(r->body);
    out.content_type = r->text ? "text/plain; charset=utf-8" : "application/json";
    respond(std::move(out));
  });
}

}  // namespace engram::gateway
