// Tasks (README "Tasks"): created in a context, claimed through a lease on
// task:<id>, completed or failed by the holder with the claim's fencing token. The
// `write` grant on the task's context creates, claims and ends; `read` lists and
// reads. Routes under /tasks/{task_id} find the context from the task.
#include <nlohmann/json.hpp>

#include "engine/tasks.hpp"
#include "gateway/lock_params.hpp"
#include "gateway/routes.hpp"
#include "model/codec.hpp"
#include "model/text.hpp"

namespace engram::gateway {
namespace {

using model::errc;
using nlohmann::json;

constexpr size_t max_title_bytes = 4096;
constexpr size_t max_error_bytes = 64 * 1024;

}  // namespace

// A JSON object member as its JSON text ("" when absent or null), within the
// configured size.
model::result<std::string> task_json_member(const json& body, const char* field, size_t max_bytes) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::string();
  if (!it->is_object()) return model::fail(errc::invalid_argument, std::string(field) + " must be a JSON object");
  auto text = model::dump(*it);
  if (text.size() > max_bytes)
    return model::fail(errc::payload_too_large, std::string(field) + " is " + std::to_string(text.size()) +
                                                    " bytes as JSON; tasks.max_json_bytes is " +
                                                    std::to_string(max_bytes));
  return text;
}

namespace {

// The route's task, if the caller may see it (`need` on its context); a task in a
// context the caller cannot read is reported as missing.
model::result<api::Task> visible_task(services& s, const call& c, auth::capability need) {
  const std::string& id = *c.param("task_id");
  if (auto bad = model::check_identifier("task_id", id, model::max_id_bytes))
    return model::fail(errc::invalid_argument, *bad);
  auto mgr = s.eng.task_manager();
  if (!mgr) return std::unexpected(mgr.error());
  auto t = (*mgr)->get(id);
  if (!t || !c.who.can(auth::read, t->context_id())) return model::fail(errc::not_found, "no task '" + id + "'");
  if (!c.who.can(need, t->context_id()))
    return model::fail(errc::forbidden, "not allowed to write to context '" + t->context_id() + "' (task '" + id + "')");
  return std::move(*t);
}

json task_body(const api::Task& t) { return json{{"task", model::to_json(t)}}; }

model::result<uint64_t> fence_member(const json& body) {
  const auto it = body.find("fence");
  if (it == body.end() || !it->is_number_unsigned() || it->get<uint64_t>() == 0)
    return model::fail(errc::invalid_argument, "fence must be the claim's fencing token (a positive integer)");
  return it->get<uint64_t>();
}

}  // namespace

void create_task(services& s, call& c, responder respond) {
  auto body = parse_body(s, c.req, fields::task_create, "the task");
  if (!body) return respond(error_response(body.error()));
  auto mgr = s.eng.task_manager();
  if (!mgr) return respond(error_response(mgr.error()));
  engine::task_create req;
  req.context_id = c.subject;
  if (auto id = body->find("task_id"); id != body->end() && !id->is_null()) {
    if (!id->is_string()) return respond(bad_request("task_id must be a string"));
    req.task_id = id->get<std::string>();
    if (auto bad = model::check_identifier("task_id", req.task_id, model::max_id_bytes))
      return respond(bad_request(*bad));
  }
  const auto title = body->find("title");
  if (title == body->end() || !title->is_string() || title->get_ref<const std::string&>().empty() ||
      title->get_ref<const std::string&>().size() > max_title_bytes)
    return respond(bad_request("title is required: a string of 1-" + std::to_string(max_title_bytes) + " bytes"));
  req.title = title->get<std::string>();
  auto spec = task_json_member(*body, "spec", (*mgr)->options().max_json_bytes);
  if (!spec) return respond(error_response(spec.error()));
  req.spec_json = std::move(*spec);
  if (auto deps = body->find("depends_on"); deps != body->end() && !deps->is_null()) {
    if (!deps->is_array()) return respond(bad_request("depends_on must be an array of task ids"));
    for (const auto& d : *deps) {
      if (!d.is_string()) return respond(bad_request("depends_on must be an array of task ids (strings)"));
      req.depends_on.push_back(d.get<std::string>());
    }
  }
  if (auto m = body->find("max_attempts"); m != body->end() && !m->is_null()) {
    if (!m->is_number_unsigned() || m->get<uint64_t>() < 1 || m->get<uint64_t>() > 1'000'000)
      return respond(bad_request("max_attempts must be an integer between 1 and 1000000"));
    req.max_attempts = uint32_t(m->get<uint64_t>());
  }
  auto agent = agent_field(*body, c.req.header("x-agent-id"));
  if (!agent) return respond(error_response(agent.error()));
  if (!agent->empty()) {
    if (auto bad = model::check_identifier("agent_id", *agent, model::max_id_bytes)) return respond(bad_request(*bad));
    if (auto ok = acting_as(c.who, *agent); !ok) return respond(error_response(ok.error()));
  }
  req.created_by = c.who.principal ? c.who.principal->agent : *agent;
  (*mgr)->create(std::move(req), [respond = std::move(respond)](model::result<api::Task> t) {
    if (!t) return respond(error_response(t.error()));
    respond(json_response(201, task_body(*t)));
  });
}

void list_tasks(services& s, call& c, responder respond) {
  auto mgr = s.eng.task_manager();
  if (!mgr) return respond(error_response(mgr.error()));
  std::string status;
  if (const auto* st = c.query.get("status"); st && !st->empty()) {
    status = *st;
    if (status != "open" && status != "claimed" && status != "stranded" && status != "done" && status != "failed")
      return respond(bad_request("status must be open, claimed, stranded, done or failed, got '" + status + "'"));
  }
  auto limit = uint_param(c.query, "limit");
  if (!limit) return respond(error_response(limit.error()));
  const size_t max = s.eng.opts().max_page_limit;
  const size_t n = limit->value_or(s.eng.opts().default_page_limit);
  if (n < 1 || n > max) return respond(bad_request("limit must be between 1 and " + std::to_string(max)));
  const auto* after = c.query.get("after");
  auto page = (*mgr)->list(c.subject, status, after ? *after : "", n);
  // The records as committed; a status filter was applied to the state in memory,
  // which may be a transition ahead of them.
  auto records = (*mgr)->read(page.task_ids);
  if (!records) return respond(error_response(records.error()));
  json list = json::array();
  for (const auto& t : *records) list.push_back(model::to_json(t));
  json body{{"context_id", c.subject}, {"tasks", std::move(list)}, {"more", page.more}};
  if (page.more && !page.task_ids.empty()) body["next_after"] = page.task_ids.back();
  respond(json_response(200, body));
}

void get_task(services& s, call& c, responder respond) {
  auto t = visible_task(s, c, auth::read);
  if (!t) return respond(error_response(t.error()));
  respond(json_response(200, task_body(*t)));
}

void claim_task(services& s, call& c, responder respond) {
  auto body = parse_body(s, c.req, fields::task_claim, "the claim");
  if (!body) return respond(error_response(body.error()));
  auto t = visible_task(s, c, auth::write);
  if (!t) return respond(error_response(t.error()));
  auto agent = acting_agent(c, *body);
  if (!agent) return respond(error_response(agent.error()));
  auto ttl = ttl_field(*body);
  if (!ttl) return respond(error_response(ttl.error()));
  auto mgr = s.eng.task_manager();
  if (!mgr) return respond(error_response(mgr.error()));
  (*mgr)->claim(t->task_id(), std::move(*agent), *ttl,
                [respond = std::move(respond)](model::result<engine::task_claim> r) {
                  if (!r) return respond(error_response(r.error()));
                  respond(json_response(200, json{{"task", model::to_json(r->task)}, {"lock", model::to_json(r->lock)}}));
                });
}

namespace {

void end_task(services& s, call& c, responder respond, bool completed) {
  auto body = parse_body(s, c.req, completed ? field_names(fields::task_complete) : field_names(fields::task_fail),
                         completed ? "the completion" : "the failure");
  if (!body) return respond(error_response(body.error()));
  auto t = visible_task(s, c, auth::write);
  if (!t) return respond(error_response(t.error()));
  auto agent = acting_agent(c, *body);
  if (!agent) return respond(error_response(agent.error()));
  auto fence = fence_member(*body);
  if (!fence) return respond(error_response(fence.error()));
  auto mgr = s.eng.task_manager();
  if (!mgr) return respond(error_response(mgr.error()));
  auto done = [respond = std::move(respond)](model::result<api::Task> r) {
    if (!r) return respond(error_response(r.error()));
    respond(json_response(200, task_body(*r)));
  };
  if (completed) {
    auto result = task_json_member(*body, "result", (*mgr)->options().max_json_bytes);
    if (!result) return done(std::unexpected(result.error()));
    return (*mgr)->complete(t->task_id(), std::move(*agent), *fence, std::move(*result), std::move(done));
  }
  const auto error = body->find("error");
  if (error == body->end() || !error->is_string() || error->get_ref<const std::string&>().empty() ||
      error->get_ref<const std::string&>().size() > max_error_bytes)
    return done(model::fail(errc::invalid_argument,
                            "error is required: why the task failed (a string of 1-" + std::to_string(max_error_bytes) +
                                " bytes)"));
  (*mgr)->fail(t->task_id(), std::move(*agent), *fence, error->get<std::string>(), std::move(done));
}

}  // namespace

void complete_task(services& s, call& c, responder respond) { end_task(s, c, std::move(respond), true); }
void fail_task(services& s, call& c, responder respond) { end_task(s, c, std::move(respond), false); }

}  // namespace engram::gateway
