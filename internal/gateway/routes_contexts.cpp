// /contexts: list, read and patch contexts.
#include <nlohmann/json.hpp>

#include <charconv>

#include "engine/presence.hpp"
#include "engine/tasks.hpp"
#include "gateway/routes.hpp"
#include "model/codec.hpp"
#include "model/json_writer.hpp"
#include "gateway/stream_registry.hpp"
#include "router/router.hpp"

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

// Deletes the context and everything of it (storage::store::delete_context).
void delete_context(services& s, call& c, responder respond) {
  std::string by = c.who.principal ? c.who.principal->agent : std::string();
  s.eng.delete_context(c.subject, std::move(by),
                       [id = c.subject, respond = std::move(respond)](model::result<storage::trim_result> r) {
                         if (!r) return respond(error_response(r.error()));
                         respond(json_response(200, json{{"context_id", id},
                                                         {"deleted", true},
                                                         {"removed_events", r->removed_events},
                                                         {"seq", r->first_seq}}));
                       });
}

// A tool call of the ledger with its result; who holds the lease
// "call:<context_id>/<call_id>" (the README's run-exactly-once pattern) is `claimed_by`.
void get_tool_call(services& s, call& c, responder respond) {
  const std::string call_id = *c.param("call_id");
  if (auto bad = model::check_identifier("call_id", call_id, model::max_id_bytes)) return respond(bad_request(*bad));
  // The lease's holder, for callers who may see leases on it.
  const std::string lease_path = "call:" + c.subject + "/" + call_id;
  std::string claimed_by;
  if (c.who.can(auth::lock, lease_path))
    if (auto lease = s.eng.get_lock(lease_path)) claimed_by = lease->holder_agent();
  s.eng.get_tool_call(c.subject, call_id,
                      [claimed_by, respond = std::move(respond)](model::result<storage::tool_call> r) {
                        if (!r) return respond(error_response(r.error()));
                        response out;
                        model::json_object body(out.body);
                        body.member("call").append(model::unit_json(r->call));
                        if (r->result) body.member("result").append(model::unit_json(*r->result));
                        else body.member("result").append("null");
                        body.string("status", r->result ? "done" : "pending");
                        if (!claimed_by.empty()) body.string("claimed_by", claimed_by);
                        body.close();
                        respond(std::move(out));
                      });
}

// Events exported from another server, appended with their seqs, ids and times
// (storage::store::import_events): `engramctl import` sends an export in chunks.
void import_events(services& s, call& c, responder respond) {
  constexpr size_t max_events = 10'000;
  auto body = parse_body(s, c.req, fields::import, "the import");
  if (!body) return respond(error_response(body.error()));
  const auto list = body->find("events");
  if (list == body->end() || !list->is_array() || list->empty() || list->size() > max_events)
    return respond(bad_request("events must be an array of 1-" + std::to_string(max_events) +
                               " events as GET /contexts/{id}/events gives them"));
  std::vector<api::Event> events;
  events.reserve(list->size());
  for (const auto& e : *list) {
    auto ev = model::event_from_json(e, c.subject);
    if (!ev) return respond(bad_request("events[" + std::to_string(events.size()) + "]: " + ev.error().message));
    if (!events.empty() && ev->seq() != events.back().seq() + 1)
      return respond(bad_request("events[" + std::to_string(events.size()) + "]: seq " + std::to_string(ev->seq()) +
                                 " does not follow " + std::to_string(events.back().seq()) +
                                 " (an import is consecutive events of one context)"));
    events.push_back(std::move(*ev));
  }
  const size_t n = events.size();
  s.eng.import_events(c.subject, std::move(events), [n, respond = std::move(respond)](model::result<api::Context> r) {
    if (!r) return respond(error_response(r.error()));
    respond(json_response(200, json{{"context_id", r->id()}, {"imported", n}, {"head_seq", r->head_seq()}}));
  });
}

// The context's whole log, every kind of event, each in the form the streams
// deliver it; 404 for a context that does not exist (unlike v3's GET /workunits).
void list_events(services& s, call& c, responder respond) {
  auto limit = uint_param(c.query, "limit");
  auto after = uint_param(c.query, "after_seq");
  auto text = bool_param(c.query, "text");
  if (!limit) return respond(error_response(limit.error()));
  if (!after) return respond(error_response(after.error()));
  if (!text) return respond(error_response(text.error()));
  const uint64_t from = after->value_or(0);
  s.eng.list_events(std::move(c.subject), from, *limit,
                    [from, with_text = *text, respond = std::move(respond)](model::result<engine::events_page> page) {
                      if (!page) return respond(error_response(page.error()));
                      response r;
                      r.body.reserve(256 * page->events.size() + 64);
                      model::json_object body(r.body);
                      auto& list = body.member("events");
                      list.push_back('[');
                      for (size_t i = 0; i < page->events.size(); ++i) {
                        if (i) list.push_back(',');
                        auto w = router::to_wire(page->events[i]);
                        list.append(with_text && w->sse_event.empty() ? model::with_text_json(w->json) : w->json);
                      }
                      list.push_back(']');
                      body.number("head_seq", page->head_seq);
                      body.number("next_after_seq", page->events.empty() ? from : page->events.back().seq());
                      body.boolean("more", page->more);
                      body.close();
                      respond(std::move(r));
                    });
}

// Open streams that receive this context, with how far behind each one is; 404 for
// a context that does not exist.
void list_subscribers(services& s, call& c, responder respond) {
  auto* streams = s.streams;
  // Where a subscriber connects from is for operators (admin) and the agent itself.
  const bool admin = c.who.can(auth::admin, "*");
  const std::string me = c.who.principal ? c.who.principal->agent : std::string();
  s.eng.get_context(c.subject, [streams, admin, me, id = c.subject, respond = std::move(respond)](model::result<api::Context> ctx) {
    if (!ctx) return respond(error_response(ctx.error()));
    json list = json::array();
    if (streams) {
      for (auto sub : streams->subscribers_of(id)) {
        if (!admin && sub.agent != me) sub.ip = sub.request_id = "";
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(sub.opened.time_since_epoch()).count();
        list.push_back({{"stream_id", sub.id},
                        {"transport", sub.transport},
                        {"agent_id", sub.agent},
                        {"ip", sub.ip},
                        {"request_id", sub.request_id},
                        {"opened_at", model::timestamp_json(ns)},
                        {"subscribed_as", sub.subscribed_as},
                        {"delivered_seq", sub.delivered},
                        {"head_seq", sub.head},
                        {"lag", sub.lag},
                        {"catching_up", sub.catching_up},
                        {"events_sent", sub.events},
                        {"bytes_sent", sub.bytes}});
      }
    }
    respond(json_response(200, json{{"context_id", id}, {"head_seq", ctx->head_seq()}, {"subscribers", std::move(list)}}));
  });
}

// Lists only readable contexts; a page may hold fewer than `limit` (next_cursor
// still says whether more follow).
void list_contexts(services& s, call& c, responder respond) {
  auto limit = uint_param(c.query, "limit");
  if (!limit) return respond(error_response(limit.error()));
  const auto* cursor = c.query.get("cursor");
  const auto* prefix = c.query.get("prefix");
  if (prefix && prefix->size() > model::max_id_bytes)
    return respond(bad_request("prefix is longer than a context id (" + std::to_string(model::max_id_bytes) + " bytes)"));
  s.eng.list_contexts(cursor ? *cursor : std::string(), *limit, prefix ? *prefix : std::string(),
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

// ---- checkpoints: where an agent left off in a context ----

namespace engram::gateway {
namespace {

using model::errc;

// The agent a route names (its {agent_id}): valid, and the caller's own unless the
// token has `admin` on `admin_scope` (auth on).
model::result<std::string> own_agent(const call& c, std::string_view admin_scope, std::string_view what) {
  std::string agent = *c.param("agent_id");
  if (auto bad = model::check_identifier("agent_id", agent, model::max_id_bytes))
    return model::fail(errc::invalid_argument, *bad);
  if (c.who.principal && c.who.principal->agent != agent && !c.who.can(auth::admin, admin_scope))
    return model::fail(errc::forbidden, std::string(what) + " of agent '" + agent + "' belong to that agent (your token is '" +
                                            c.who.principal->agent + "')");
  return agent;
}

model::result<std::string> checkpoint_agent(const call& c) { return own_agent(c, c.subject, "checkpoints"); }

response checkpoint_response(const api::Event& ev) {
  response out;
  model::json_object body(out.body);
  body.member("checkpoint").append(router::to_wire(ev)->json);
  body.close();
  out.headers.emplace_back("ETag", "\"" + std::to_string(ev.checkpoint().version()) + "\"");
  return out;
}

}  // namespace

void put_checkpoint(services& s, call& c, responder respond) {
  auto agent = checkpoint_agent(c);
  if (!agent) return respond(error_response(agent.error()));
  auto body = parse_body(s, c.req, fields::checkpoint, "the checkpoint");
  if (!body) return respond(error_response(body.error()));
  storage::checkpoint_request req;
  req.context_id = c.subject;
  req.agent_id = std::move(*agent);
  const auto cursor = body->find("cursor_seq");
  if (cursor == body->end() || !cursor->is_number_unsigned())
    return respond(bad_request("cursor_seq must be a non-negative integer: the last seq the agent has dealt with"));
  req.cursor_seq = cursor->get<uint64_t>();
  const auto state = body->find("state");
  if (state != body->end() && !state->is_null() && !state->is_object())
    return respond(bad_request("state must be a JSON object"));
  req.state_json = state == body->end() || state->is_null() ? "{}" : model::dump(*state);
  const auto max = s.eng.opts().checkpoints.max_bytes;
  if (req.state_json.size() > max)
    return respond(error_response({errc::payload_too_large, "state is " + std::to_string(req.state_json.size()) +
                                                                " bytes as JSON; checkpoints.max_bytes is " +
                                                                std::to_string(max)}));
  if (auto m = c.req.header("if-match"); !m.empty()) {
    std::string_view v = m;
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
    uint64_t version = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), version);
    if (ec != std::errc() || p != v.data() + v.size() || v.empty())
      return respond(bad_request("If-Match must be a checkpoint version, e.g. \"3\" (0: there is none yet)"));
    req.if_match = version;
  }
  s.eng.put_checkpoint(std::move(req), [respond = std::move(respond)](model::result<api::Event> r) {
    if (!r) return respond(error_response(r.error()));
    respond(checkpoint_response(*r));
  });
}

void get_checkpoint(services& s, call& c, responder respond) {
  auto agent = checkpoint_agent(c);
  if (!agent) return respond(error_response(agent.error()));
  auto version = uint_param(c.query, "version");
  if (!version) return respond(error_response(version.error()));
  s.eng.get_checkpoint(c.subject, std::move(*agent), *version, [respond = std::move(respond)](model::result<api::Event> r) {
    if (!r) return respond(error_response(r.error()));
    respond(checkpoint_response(*r));
  });
}

void list_checkpoints(services& s, call& c, responder respond) {
  auto agent = checkpoint_agent(c);
  if (!agent) return respond(error_response(agent.error()));
  s.eng.list_checkpoints(c.subject, std::move(*agent),
                         [respond = std::move(respond)](model::result<std::vector<api::Event>> r) {
                           if (!r) return respond(error_response(r.error()));
                           response out;
                           model::json_object body(out.body);
                           auto& list = body.member("checkpoints");
                           list.push_back('[');
                           for (size_t i = 0; i < r->size(); ++i) {
                             if (i) list.push_back(',');
                             list.append(router::to_wire((*r)[i])->json);
                           }
                           list.push_back(']');
                           body.close();
                           respond(std::move(out));
                         });
}

}  // namespace engram::gateway

// ---- presence: which agents are in a context ----

namespace engram::gateway {
namespace {

// Presence is about the agent itself: speaking for another needs admin on everything.
model::result<std::string> presence_agent(const call& c) { return own_agent(c, "*", "heartbeats and presence"); }

}  // namespace

void heartbeat(services& s, call& c, responder respond) {
  auto agent = presence_agent(c);
  if (!agent) return respond(error_response(agent.error()));
  auto body = parse_body(s, c.req, fields::heartbeat, "the heartbeat");
  if (!body) return respond(error_response(body.error()));
  std::vector<std::string> contexts;
  if (const auto list = body->find("contexts"); list != body->end() && !list->is_null()) {
    if (!list->is_array() || list->size() > 100)
      return respond(bad_request("contexts must be an array of at most 100 context ids"));
    for (const auto& v : *list) {
      if (!v.is_string()) return respond(bad_request("contexts must be an array of context ids (strings)"));
      const auto& id = v.get_ref<const std::string&>();
      if (auto bad = model::check_identifier("contexts[] entry", id, model::max_id_bytes))
        return respond(bad_request(*bad));
      if (!c.who.can(auth::write, id)) return respond(forbidden(auth::write, id));
      contexts.push_back(id);
    }
  }
  std::string status;
  if (auto st = body->find("status"); st != body->end() && !st->is_null()) {
    if (!st->is_string() || st->get_ref<const std::string&>().size() > 1024)
      return respond(bad_request("status must be a string of at most 1024 bytes"));
    status = st->get<std::string>();
  }
  auto p = s.eng.presence_manager();
  if (!p) return respond(error_response(p.error()));
  auto t = s.eng.task_manager();
  if (!t) return respond(error_response(t.error()));
  std::optional<std::string> progress;
  if (body->contains("progress")) {
    auto text = task_json_member(*body, "progress", (*t)->options().max_json_bytes);
    if (!text) return respond(error_response(text.error()));
    if (!text->empty()) progress = std::move(*text);
  }
  std::string only_task;
  if (auto id = body->find("task_id"); id != body->end() && !id->is_null()) {
    if (!id->is_string()) return respond(bad_request("task_id must be a string"));
    only_task = id->get<std::string>();
    if (auto bad = model::check_identifier("task_id", only_task, model::max_id_bytes))
      return respond(bad_request(*bad));
  }
  // Presence first, then the claims; one answer for both.
  (*p)->heartbeat(*agent, contexts, status,
                  [tasks = *t, agent = *agent, progress = std::move(progress), only_task = std::move(only_task),
                   n = contexts.size(), respond = std::move(respond)](model::status ok) mutable {
                    if (!ok) return respond(error_response(ok.error()));
                    tasks->renew_claims(
                        agent, std::move(progress), std::move(only_task),
                        [n, respond = std::move(respond)](model::result<std::vector<engine::claim_renewal>> r) {
                          if (!r) return respond(error_response(r.error()));
                          json claims = json::array();
                          for (const auto& c : *r) {
                            json one{{"task_id", c.task_id}, {"renewed", c.renewed}};
                            if (c.renewed) one["expires_at"] = model::timestamp_json(c.expires_at_ns);
                            claims.push_back(std::move(one));
                          }
                          respond(json_response(200, json{{"present_in", n}, {"claims", std::move(claims)}}));
                        });
                  });
}

void leave_context(services& s, call& c, responder respond) {
  auto agent = presence_agent(c);
  if (!agent) return respond(error_response(agent.error()));
  const auto* ctx = c.query.get("context");
  if (!ctx || ctx->empty()) return respond(bad_request("context is required: ?context=<id>"));
  if (auto bad = model::check_identifier("context", *ctx, model::max_id_bytes)) return respond(bad_request(*bad));
  if (!c.who.can(auth::write, *ctx)) return respond(forbidden(auth::write, *ctx));
  auto p = s.eng.presence_manager();
  if (!p) return respond(error_response(p.error()));
  (*p)->leave(*agent, *ctx, [respond = std::move(respond)](model::result<bool> r) {
    if (!r) return respond(error_response(r.error()));
    respond(json_response(200, json{{"left", *r}}));
  });
}

void list_presence(services& s, call& c, responder respond) {
  auto p = s.eng.presence_manager();
  if (!p) return respond(error_response(p.error()));
  json agents = json::array();
  for (const auto& a : (*p)->in_context(c.subject)) {
    if (!a.joined_at_ns) continue;  // joining: not committed yet
    agents.push_back({{"agent_id", a.agent_id},
                      {"joined_at", model::timestamp_json(a.joined_at_ns)},
                      {"last_seen", model::timestamp_json(a.last_seen_ns)},
                      {"status", a.status}});
  }
  respond(json_response(200, json{{"context_id", c.subject}, {"agents", std::move(agents)}}));
}

}  // namespace engram::gateway
