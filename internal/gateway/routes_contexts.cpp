// /contexts: list, read and patch contexts.
#include <nlohmann/json.hpp>

#include "gateway/routes.hpp"
#include "model/codec.hpp"

namespace engram::gateway {

using nlohmann::json;

void get_context(services& s, call& c, responder respond) {
  s.eng.get_context(std::move(c.subject), [respond = std::move(respond)](model::result<api::Context> ctx) {
    if (!ctx) return respond(error_response(ctx.error()));
    respond(json_response(200, json{{"context", model::to_json(*ctx)}}));
  });
}

void patch_context(services& s, call& c, responder respond) {
  auto body = parse_body(s, c.req, fields::context_patch, "the context patch");
  if (!body) return respond(error_response(body.error()));
  auto patch = model::patch_from_json(*body);
  if (!patch) return respond(error_response(patch.error()));
  s.eng.patch_context(std::move(c.subject), std::move(*patch),
                      [respond = std::move(respond)](model::result<api::Context> r) {
                        if (!r) return respond(error_response(r.error()));
                        respond(json_response(200, json{{"context", model::to_json(*r)}}));
                      });
}

// Lists only readable contexts; a page may hold fewer than `limit` (next_cursor
// still says whether more follow).
void list_contexts(services& s, call& c, responder respond) {
  auto limit = uint_param(c.query, "limit");
  if (!limit) return respond(error_response(limit.error()));
  const auto* cursor = c.query.get("cursor");
  s.eng.list_contexts(cursor ? *cursor : std::string(), *limit,
                      [who = c.who, respond = std::move(respond)](model::result<engine::contexts_page> page) {
                        if (!page) return respond(error_response(page.error()));
                        json list = json::array();
                        for (const auto& ctx : page->contexts)
                          if (who.can(auth::read, ctx.id())) list.push_back(model::to_json(ctx));
                        respond(json_response(200, json{{"contexts", std::move(list)},
                                                        {"next_cursor", page->next_cursor}}));
                      });
}

}  // namespace engram::gateway
