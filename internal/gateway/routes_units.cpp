// /workunit and /workunits: append (single, batch; idempotent, optionally
// fenced), fetch and page work units.
#include <xxhash.h>

#include <nlohmann/json.hpp>

#include "gateway/lock_params.hpp"
#include "gateway/routes.hpp"
#include "model/codec.hpp"
#include "model/json_writer.hpp"

namespace engram::gateway {

namespace {

using model::errc;

// Idempotency-Key: 1-255 visible ASCII characters (as in the IETF draft's examples).
model::result<std::string> idempotency_key_header(const request& req) {
  const auto key = req.header("idempotency-key");
  if (key.empty()) return std::string();
  if (key.size() > 255) return model::fail(errc::invalid_argument, "Idempotency-Key is longer than 255 characters");
  for (char c : key)
    if (c < 0x21 || c > 0x7E)
      return model::fail(errc::invalid_argument, "Idempotency-Key must be visible ASCII characters");
  return std::string(key);
}

// Hash of everything that makes two requests "the same" for an idempotency key.
std::string fingerprint(const request& req, std::string_view path) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  auto feed = [&](std::string_view s) {
    XXH3_128bits_update(st, s.data(), s.size());
    XXH3_128bits_update(st, "\0", 1);
  };
  feed(req.method);
  feed(path);
  feed(req.header("x-agent-id"));
  feed(req.body);
  const XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  std::string out(16, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = char(h.high64 >> (8 * i));
    out[8 + i] = char(h.low64 >> (8 * i));
  }
  return out;
}

// The request's Idempotency-Key with its fingerprint; without a key there is
// nothing to compare a retry with, so the body is not hashed.
model::result<engine::idempotency> idempotency_of(const call& c) {
  auto key = idempotency_key_header(c.req);
  if (!key) return std::unexpected(key.error());
  if (key->empty()) return engine::idempotency{};
  return engine::idempotency{std::move(*key), fingerprint(c.req, c.path)};
}

void respond_appended(const responder& respond, model::result<storage::append_result> r, bool single) {
  if (!r) return respond(error_response(r.error()));
  response resp;
  resp.status = 201;
  // One allocation for the body (the batch's append_units_json reserves its own).
  if (single) resp.body.reserve(16 + model::unit_json_size_hint(r->units.front()));
  model::json_object body(resp.body);
  if (single) model::append_unit_json(body.member("work_unit"), r->units.front());
  else model::append_units_json(body.member("work_units"), r->units);
  body.close();
  if (r->replayed) resp.headers.emplace_back("Idempotent-Replayed", "true");
  respond(std::move(resp));
}

std::string item(size_t i) { return "work_units[" + std::to_string(i) + "]: "; }

}  // namespace

void append_unit(services& s, call& c, responder respond) {
  auto body = parse_body(c.req);
  if (!body) return respond(error_response(body.error()));
  if (auto ok = check_unit(s, *body, "the work unit"); !ok) return respond(error_response(ok.error()));
  auto unit = model::unit_from_json(*body, {"", c.req.header("x-agent-id")});
  if (!unit) return respond(error_response(unit.error()));
  if (auto ok = acting_as(c.who, unit->agent_id()); !ok) return respond(error_response(ok.error()));
  if (!c.who.can(auth::write, unit->context_id())) return respond(forbidden(auth::write, unit->context_id()));
  auto idem = idempotency_of(c);
  if (!idem) return respond(error_response(idem.error()));
  std::vector<storage::fence> fences;
  if (auto ok = parse_fence(*body, fences); !ok) return respond(error_response(ok.error()));
  std::string ctx = unit->context_id();
  std::vector<api::WorkUnit> units;
  units.push_back(std::move(*unit));
  s.eng.append(std::move(ctx), std::move(units), std::move(*idem),
               [respond = std::move(respond)](auto r) { respond_appended(respond, std::move(r), true); },
               std::move(fences));
}

// {"context_id":"…","agent_id"?:"…","work_units":[{…},…]}: one context, all or none.
// The engine bounds the batch size.
void append_units(services& s, call& c, responder respond) {
  auto body = parse_body(s, c.req, fields::batch, "the batch");
  if (!body) return respond(error_response(body.error()));
  if (auto f = body->find("fence"); f != body->end() && s.opts.reject_unknown_fields)
    if (auto ok = check_fields(*f, fields::fence, "the batch's fence"); !ok) return respond(error_response(ok.error()));
  const auto ctx_it = body->find("context_id");
  if (ctx_it == body->end() || !ctx_it->is_string())
    return respond(bad_request("context_id is required and must be a string"));
  const std::string ctx = ctx_it->get<std::string>();
  if (auto bad = model::check_identifier("context_id", ctx, model::max_id_bytes)) return respond(bad_request(*bad));
  std::string agent(c.req.header("x-agent-id"));
  if (auto a = body->find("agent_id"); a != body->end() && !a->is_null()) {
    if (!a->is_string()) return respond(bad_request("agent_id must be a string"));
    if (!a->get_ref<const std::string&>().empty()) agent = a->get<std::string>();
  }
  if (auto ok = acting_as(c.who, agent); !ok) return respond(error_response(ok.error()));
  if (!c.who.can(auth::write, ctx)) return respond(forbidden(auth::write, ctx));
  const auto list = body->find("work_units");
  if (list == body->end() || !list->is_array())
    return respond(bad_request("work_units is required and must be an array of work units"));
  if (list->empty()) return respond(bad_request("work_units must not be empty"));
  std::vector<api::WorkUnit> units;
  units.reserve(list->size());
  std::vector<storage::fence> fences;
  if (auto ok = parse_fence(*body, fences); !ok) return respond(error_response(ok.error()));
  for (size_t i = 0; i < list->size(); ++i) {
    if (auto ok = check_unit(s, (*list)[i], "the work unit"); !ok)
      return respond(bad_request(item(i) + ok.error().message));
    if ((*list)[i].is_object())
      if (auto ok = parse_fence((*list)[i], fences); !ok) return respond(bad_request(item(i) + ok.error().message));
    auto unit = model::unit_from_json((*list)[i], {ctx, agent});
    if (!unit) return respond(bad_request(item(i) + unit.error().message));
    if (unit->context_id() != ctx) return respond(bad_request(item(i) + "context_id differs from the batch's context_id"));
    if (auto ok = acting_as(c.who, unit->agent_id()); !ok)
      return respond(error_response({errc::forbidden, item(i) + ok.error().message}));
    units.push_back(std::move(*unit));
  }
  auto idem = idempotency_of(c);
  if (!idem) return respond(error_response(idem.error()));
  s.eng.append(ctx, std::move(units), std::move(*idem),
               [respond = std::move(respond)](auto r) { respond_appended(respond, std::move(r), false); },
               std::move(fences));
}

void get_unit(services& s, call& c, responder respond) {
  bool with_embedding = false;
  if (const auto* include = c.query.get("include")) {
    if (*include == "embedding") with_embedding = true;
    else if (!include->empty()) return respond(bad_request("include must be \"embedding\""));
  }
  auto text = bool_param(c.query, "text");
  if (!text) return respond(error_response(text.error()));
  auto readable = [who = c.who](std::string_view context) { return who.can(auth::read, context); };
  s.eng.get_unit(std::move(c.subject), with_embedding, std::move(readable),
                 [with_embedding, with_text = *text, respond = std::move(respond)](model::result<engine::unit_read> r) {
                   if (!r) return respond(error_response(r.error()));
                   response resp;
                   model::json_object body(resp.body);
                   model::append_unit_json(body.member("work_unit"), r->unit, [&](std::string& out) {
                     if (with_text) model::append_text_json(out, r->unit.payload());
                     if (!with_embedding) return;
                     if (r->embedding) model::append_embedding_json(out, *r->embedding);
                     else out.append(",\"embedding\":null,\"embedding_model\":null");
                   });
                   body.close();
                   respond(std::move(resp));
                 });
}

void list_units(services& s, call& c, responder respond) {
  engine::list_request lr;
  auto limit = uint_param(c.query, "limit");
  auto reverse = bool_param(c.query, "reverse");
  auto after = uint_param(c.query, "after_seq");
  auto text = bool_param(c.query, "text");
  if (!limit) return respond(error_response(limit.error()));
  if (!text) return respond(error_response(text.error()));
  if (!reverse) return respond(error_response(reverse.error()));
  if (!after) return respond(error_response(after.error()));
  lr.limit = *limit;
  lr.reverse = *reverse;
  lr.after_seq = after->value_or(0);
  lr.with_text = *text;
  if (const auto* cursor = c.query.get("cursor")) lr.cursor = *cursor;
  s.eng.list_units(std::move(c.subject), std::move(lr),
                   [respond = std::move(respond)](model::result<engine::units_page> page) {
                     if (!page) return respond(error_response(page.error()));
                     response r;
                     r.body.reserve(page->units_json.size() + 128);
                     model::json_object body(r.body);
                     body.member("work_units").append(page->units_json);
                     body.string("next_cursor", page->next_cursor);
                     body.boolean("context_exists", page->context_exists);
                     body.close();
                     respond(std::move(r));
                   });
}

}  // namespace engram::gateway
