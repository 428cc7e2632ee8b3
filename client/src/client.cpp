#include <boost/asio/post.hpp>
#include <boost/url/encode.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <charconv>
#include <random>
#include <thread>

#include "client_impl.hpp"
#include "codec.hpp"

namespace engram::client {

using codec::json;

namespace {

error server_error(const http_result& r) {
  error e{error::kind::server, r.status, {}, {}};
  json j = json::parse(r.body, nullptr, false);
  if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_string())
    e.message = j["error"].get<std::string>();
  else
    e.message = r.body.empty() ? "HTTP " + std::to_string(r.status) : r.body.substr(0, 500);
  const auto after = r.header("retry-after");
  unsigned seconds = 0;
  if (auto [p, ec] = std::from_chars(after.data(), after.data() + after.size(), seconds);
      ec == std::errc() && p == after.data() + after.size())
    e.retry_after = std::chrono::seconds(seconds);
  return e;
}

bool transient(const error& e, retry_mode mode, bool maybe_sent) {
  if (mode == retry_mode::none) return false;
  if (e.is_network()) return mode == retry_mode::safe || !maybe_sent;
  // 503 and 429 mean the request was not processed: always safe to repeat.
  if (e.is_server() && (e.status == 503 || e.status == 429)) return true;
  // 409 with Retry-After: the same idempotent request is still being processed.
  return e.is_server() && e.status == 409 && e.retry_after.count() > 0 && mode == retry_mode::safe;
}

// Decodes `field` of a 2xx JSON answer with `decode`.
template <class Decode>
auto decode_field(const result<http_result>& r, std::string_view field, Decode decode)
    -> decltype(decode(std::declval<const json&>())) {
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  auto it = j->find(field);
  if (it == j->end())
    return std::unexpected(error{error::kind::protocol, r->status, "answer has no \"" + std::string(field) + "\"", {}});
  return decode(*it);
}

template <class T, class Decode>
result<std::vector<T>> decode_list(const json& list, Decode decode) {
  if (!list.is_array()) return std::unexpected(error{error::kind::protocol, 0, "expected an array", {}});
  std::vector<T> out;
  out.reserve(list.size());
  for (const auto& item : list) {
    auto one = decode(item);
    if (!one) return std::unexpected(one.error());
    out.push_back(std::move(*one));
  }
  return out;
}

template <class T, class Decode>
result<page<T>> decode_page(const result<http_result>& r, std::string_view field, Decode decode) {
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  auto items = decode_list<T>(j->value(field, json::array()), decode);
  if (!items) return std::unexpected(items.error());
  page<T> out{std::move(*items), {}};
  if (auto c = j->find("next_cursor"); c != j->end() && c->is_string()) out.next_cursor = c->get<std::string>();
  return out;
}

}  // namespace

std::string encode_component(std::string_view s) {
  return boost::urls::encode(s, boost::urls::unreserved_chars);
}

std::chrono::milliseconds backoff_delay(const retry_policy& p, int attempt) {
  thread_local std::mt19937 rng{std::random_device{}()};
  auto d = p.initial_backoff;
  for (int i = 0; i < attempt && d < p.max_backoff; ++i) d *= 2;
  d = std::min(d, p.max_backoff);
  // Full jitter in [d/2, d]: retries of many clients after one outage spread out.
  std::uniform_int_distribution<int64_t> jitter(d.count() / 2, std::max<int64_t>(d.count(), 1));
  return std::chrono::milliseconds(jitter(rng));
}

client::impl::~impl() {
  if (workers) workers->join();
}

result<http_result> client::impl::send(std::string_view method, const std::string& route, std::string_view body,
                                       retry_mode mode, const header_list& extra,
                                       std::chrono::milliseconds timeout) {
  header_list all = headers;
  all.insert(all.end(), extra.begin(), extra.end());
  const std::string target = prefix + route;
  const auto started = std::chrono::steady_clock::now();
  for (int attempt = 0;; ++attempt) {
    std::unique_ptr<http_connection> conn;
    {
      std::lock_guard lock(pool_mu);
      if (!idle.empty()) {
        conn = std::move(idle.back());
        idle.pop_back();
      }
    }
    if (!conn) conn = std::make_unique<http_connection>(host, port, opts.timeout);
    conn->set_timeout(std::max(timeout, opts.timeout));
    auto r = conn->request(method, target, body, all);
    error err;
    bool maybe_sent = false;
    if (r) {
      {
        std::lock_guard lock(pool_mu);
        if (idle.size() < opts.max_idle_connections) idle.push_back(std::move(conn));
      }
      if (r->status >= 200 && r->status < 300) return std::move(*r);
      err = server_error(*r);
      maybe_sent = true;
    } else {
      err = error{error::kind::network, 0, r.error().message, {}};
      maybe_sent = r.error().maybe_sent;
    }
    if (attempt + 1 >= opts.retry.max_attempts || !transient(err, mode, maybe_sent)) return std::unexpected(err);
    const auto delay = std::max<std::chrono::milliseconds>(backoff_delay(opts.retry, attempt), err.retry_after);
    if (std::chrono::steady_clock::now() + delay - started > opts.retry.max_elapsed) return std::unexpected(err);
    std::this_thread::sleep_for(delay);
  }
}

// ---------------------------------------------------------------------------------
client::client(std::shared_ptr<impl> p) : impl_(std::move(p)) {}
client::client(client&&) noexcept = default;
client& client::operator=(client&&) noexcept = default;
client::~client() = default;

result<client> client::create(client_options opts) {
  auto bad = [&](std::string why) {
    return std::unexpected(error{error::kind::protocol, 0, "invalid server URL '" + opts.url + "': " + why, {}});
  };
  auto parsed = boost::urls::parse_uri(opts.url);
  if (!parsed) return bad(parsed.error().message());
  if (parsed->scheme() != "http") return bad("only http:// is supported");
  if (parsed->host().empty()) return bad("no host");
  auto p = std::make_shared<impl>();
  p->host = parsed->host();
  if (p->host.starts_with('[') && p->host.ends_with(']')) p->host = p->host.substr(1, p->host.size() - 2);
  p->port = parsed->has_port() ? parsed->port_number() : 80;
  if (parsed->has_port() && p->port == 0) return bad("port must be 1-65535");
  p->prefix = parsed->path();
  while (p->prefix.ends_with('/')) p->prefix.pop_back();
  if (opts.retry.max_attempts < 1) opts.retry.max_attempts = 1;
  if (!opts.agent_id.empty()) p->headers.emplace_back("X-Agent-ID", opts.agent_id);
  if (!opts.token.empty()) p->headers.emplace_back("Authorization", "Bearer " + opts.token);
  p->headers.insert(p->headers.end(), opts.headers.begin(), opts.headers.end());
  p->opts = std::move(opts);
  return client(std::move(p));
}

const client_options& client::options() const { return impl_->opts; }

void client::post_blocking(std::move_only_function<void()> job) {
  std::unique_lock lock(impl_->async_mu);
  if (!impl_->workers) impl_->workers.emplace(std::max<size_t>(1, impl_->opts.async_threads));
  auto& pool = *impl_->workers;
  lock.unlock();
  // thread_pool wants a copyable handler; share the move-only job.
  boost::asio::post(pool, [job = std::make_shared<std::move_only_function<void()>>(std::move(job))] { (*job)(); });
}

// -- work units ---------------------------------------------------------------------
result<work_unit> client::append(const unit_input& u, const append_options& opts) {
  const std::string key = opts.idempotency_key.empty() ? codec::random_key() : opts.idempotency_key;
  auto r = impl_->send("POST", "/workunit", codec::unit_input_json(u, true).dump(), retry_mode::safe,
                       {{"Idempotency-Key", key}});
  return decode_field(r, "work_unit", codec::unit_from);
}

result<std::vector<work_unit>> client::append_batch(const std::string& context_id, std::span<const unit_input> units,
                                                    const append_options& opts,
                                                    const std::optional<engram::client::fence>& fence) {
  json body{{"context_id", context_id}, {"work_units", json::array()}};
  if (!impl_->opts.agent_id.empty()) body["agent_id"] = impl_->opts.agent_id;
  if (fence) body["fence"] = json{{"resource", fence->resource}, {"token", fence->token}};
  for (const auto& u : units) body["work_units"].push_back(codec::unit_input_json(u, false));
  const std::string key = opts.idempotency_key.empty() ? codec::random_key() : opts.idempotency_key;
  auto r = impl_->send("POST", "/workunits", body.dump(), retry_mode::safe, {{"Idempotency-Key", key}});
  return decode_field(r, "work_units", [](const json& list) { return decode_list<work_unit>(list, codec::unit_from); });
}

result<work_unit> client::get_unit(const std::string& id) {
  auto r = impl_->send("GET", "/workunit/" + encode_component(id), {}, retry_mode::safe);
  return decode_field(r, "work_unit", codec::unit_from);
}

result<page<work_unit>> client::list_units_page(const std::string& context_id, const list_options& opts) {
  std::string route = "/workunits/" + encode_component(context_id) + "?limit=" + std::to_string(opts.limit);
  if (opts.reverse) route += "&reverse=true";
  if (opts.after_seq) route += "&after_seq=" + std::to_string(*opts.after_seq);
  if (!opts.cursor.empty()) route += "&cursor=" + encode_component(opts.cursor);
  return decode_page<work_unit>(impl_->send("GET", route, {}, retry_mode::safe), "work_units", codec::unit_from);
}

pager<work_unit> client::units(const std::string& context_id, list_options opts) {
  const std::string first = opts.cursor;
  // The pager shares the client's state rather than pointing at this client object,
  // so it stays valid if the client is moved.
  auto self = std::make_shared<client>(client(impl_));
  return pager<work_unit>(
      [self, context_id, opts](const std::string& cursor) mutable {
        opts.cursor = cursor;
        return self->list_units_page(context_id, opts);
      },
      first);
}

// -- contexts -------------------------------------------------------------------------
result<context> client::get_context(const std::string& id) {
  return decode_field(impl_->send("GET", "/contexts/" + encode_component(id), {}, retry_mode::safe), "context",
                      codec::context_from);
}

result<context> client::patch_context(const std::string& id, const context_patch& patch) {
  return decode_field(impl_->send("PATCH", "/contexts/" + encode_component(id),
                                  codec::context_patch_json(patch).dump(), retry_mode::unsent),
                      "context", codec::context_from);
}

result<page<context>> client::list_contexts_page(size_t limit, const std::string& cursor) {
  std::string route = "/contexts?limit=" + std::to_string(limit);
  if (!cursor.empty()) route += "&cursor=" + encode_component(cursor);
  return decode_page<context>(impl_->send("GET", route, {}, retry_mode::safe), "contexts", codec::context_from);
}

pager<context> client::contexts(size_t page_size) {
  auto self = std::make_shared<client>(client(impl_));
  return pager<context>(
      [self, page_size](const std::string& cursor) { return self->list_contexts_page(page_size, cursor); });
}

// -- locks ----------------------------------------------------------------------------
result<lock> client::acquire(const std::string& resource, std::chrono::milliseconds ttl,
                             std::chrono::milliseconds wait) {
  lock_request req;
  req.resources = {resource};
  req.ttl = ttl;
  req.wait = wait;
  auto all = acquire(req);
  if (!all) return std::unexpected(all.error());
  return std::move(all->front());
}

result<std::vector<lock>> client::acquire(const lock_request& req) {
  if (req.resources.empty())
    return std::unexpected(error{error::kind::protocol, 0, "acquire needs at least one resource", {}});
  json body = json::object();
  if (req.resources.size() == 1) body["resource_path"] = req.resources.front();
  else body["resource_paths"] = req.resources;
  const std::string& agent = req.agent_id.empty() ? impl_->opts.agent_id : req.agent_id;
  if (!agent.empty()) body["agent_id"] = agent;
  if (req.ttl.count() > 0) body["ttl_ms"] = req.ttl.count();
  if (req.wait.count() > 0) body["wait_ms"] = req.wait.count();
  if (!req.context_id.empty()) body["context_id"] = req.context_id;
  // The server may hold the request up to wait_ms; give the transport that much more.
  auto r = impl_->send("POST", "/locks", body.dump(), retry_mode::unsent, {}, impl_->opts.timeout + req.wait);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  if (auto one = j->find("lock"); one != j->end()) {
    auto l = codec::lock_from(*one);
    if (!l) return std::unexpected(l.error());
    return std::vector<lock>{std::move(*l)};
  }
  return decode_list<lock>(j->value("locks", json::array()), codec::lock_from);
}

result<lock> client::renew(const lock& held, std::chrono::milliseconds ttl) {
  json body{{"lock_id", held.lock_id}, {"agent_id", held.holder_agent}};
  if (ttl.count() > 0) body["ttl_ms"] = ttl.count();
  return decode_field(impl_->send("POST", "/locks/" + encode_component(held.resource_path) + "/renew", body.dump(),
                                  retry_mode::unsent),
                      "lock", codec::lock_from);
}

result<void> client::release(const lock& held) {
  auto r = impl_->send("DELETE",
                       "/locks/" + encode_component(held.resource_path) + "?agent_id=" +
                           encode_component(held.holder_agent) + "&lock_id=" + encode_component(held.lock_id),
                       {}, retry_mode::unsent);
  if (!r) return std::unexpected(r.error());
  return {};
}

result<lock> client::get_lock(const std::string& resource) {
  return decode_field(impl_->send("GET", "/locks/" + encode_component(resource), {}, retry_mode::safe), "lock",
                      codec::lock_from);
}

result<std::vector<lock>> client::list_locks(const std::string& agent_id, const std::string& prefix) {
  std::string route = "/locks";
  char sep = '?';
  if (!agent_id.empty()) route += std::exchange(sep, '&') + std::string("agent_id=") + encode_component(agent_id);
  if (!prefix.empty()) route += sep + std::string("prefix=") + encode_component(prefix);
  return decode_field(impl_->send("GET", route, {}, retry_mode::safe), "locks",
                      [](const json& list) { return decode_list<lock>(list, codec::lock_from); });
}

// -- search and health ---------------------------------------------------------------
result<search_result> client::search(const search_request& req) {
  auto r = impl_->send("POST", "/search", codec::search_request_json(req).dump(), retry_mode::safe);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  return codec::search_from(*j);
}

result<events_page> client::list_events(const std::string& context_id, uint64_t after_seq, size_t limit) {
  auto r = impl_->send("GET",
                       "/contexts/" + encode_component(context_id) + "/events?after_seq=" + std::to_string(after_seq) +
                           "&limit=" + std::to_string(limit),
                       {}, retry_mode::safe);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  const auto list = j->find("events");
  if (list == j->end() || !list->is_array())
    return std::unexpected(error{error::kind::protocol, r->status, "answer has no \"events\" array", {}});
  events_page out;
  for (const auto& e : *list) out.events.push_back(e.dump());
  out.head_seq = j->value("head_seq", uint64_t(0));
  out.next_after_seq = j->value("next_after_seq", after_seq);
  out.more = j->value("more", false);
  return out;
}

namespace {

result<checkpoint> checkpoint_from(result<http_result> r) {
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  const auto cp = j->value("checkpoint", json());
  if (!cp.is_object() || !cp.contains("version"))
    return std::unexpected(error{error::kind::protocol, r->status, "answer has no \"checkpoint\"", {}});
  checkpoint out;
  out.context_id = cp.value("context_id", "");
  out.agent_id = cp.value("agent_id", "");
  out.version = cp.value("version", uint64_t(0));
  out.cursor_seq = cp.value("cursor_seq", uint64_t(0));
  out.seq = cp.value("seq", uint64_t(0));
  out.state_json = cp.value("state", json::object()).dump();
  return out;
}

}  // namespace

result<checkpoint> client::save_checkpoint(const std::string& context_id, const std::string& agent_id,
                                           uint64_t cursor_seq, const std::string& state_json, uint64_t replaces) {
  auto state = json::parse(state_json, nullptr, false);
  if (!state.is_object())
    return std::unexpected(error{error::kind::protocol, 0, "checkpoint state must be a JSON object", {}});
  const json body{{"cursor_seq", cursor_seq}, {"state", state}};
  // A save is compare-and-set on `replaces`: a retry after a lost answer gets 412
  // and can read the latest, so it is safe to resend once unsent only.
  return checkpoint_from(impl_->send("PUT",
                                     "/contexts/" + encode_component(context_id) + "/agents/" +
                                         encode_component(agent_id) + "/checkpoint",
                                     body.dump(), retry_mode::unsent, {{"If-Match", "\"" + std::to_string(replaces) + "\""}}));
}

result<checkpoint> client::get_checkpoint(const std::string& context_id, const std::string& agent_id,
                                          std::optional<uint64_t> version) {
  std::string target = "/contexts/" + encode_component(context_id) + "/agents/" + encode_component(agent_id) + "/checkpoint";
  if (version) target += "?version=" + std::to_string(*version);
  return checkpoint_from(impl_->send("GET", target, {}, retry_mode::safe));
}

result<tool_call> client::get_tool_call(const std::string& context_id, const std::string& call_id) {
  auto r = impl_->send("GET", "/contexts/" + encode_component(context_id) + "/tool-calls/" + encode_component(call_id),
                       {}, retry_mode::safe);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  tool_call out;
  auto call = codec::unit_from(j->value("call", json()));
  if (!call) return std::unexpected(call.error());
  out.call = std::move(*call);
  if (const auto it = j->find("result"); it != j->end() && !it->is_null()) {
    auto result = codec::unit_from(*it);
    if (!result) return std::unexpected(result.error());
    out.result = std::move(*result);
  }
  out.claimed_by = j->value("claimed_by", "");
  return out;
}

namespace {

// {"task": {…}} from an answer.
result<task> task_answer(result<http_result> r) {
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  return codec::task_from(j->value("task", json()));
}

std::string task_path(const std::string& task_id, std::string_view action = {}) {
  std::string p = "/tasks/" + encode_component(task_id);
  if (!action.empty()) p.append("/").append(action);
  return p;
}

}  // namespace

result<task> client::create_task(const task_input& t) {
  json body{{"title", t.title}};
  if (!t.task_id.empty()) body["task_id"] = t.task_id;
  if (!t.spec_json.empty()) {
    auto spec = json::parse(t.spec_json, nullptr, false);
    if (!spec.is_object())
      return std::unexpected(error{error::kind::protocol, 0, "a task's spec must be a JSON object", {}});
    body["spec"] = std::move(spec);
  }
  if (!t.depends_on.empty()) body["depends_on"] = t.depends_on;
  if (t.max_attempts) body["max_attempts"] = t.max_attempts;
  if (!impl_->opts.agent_id.empty()) body["agent_id"] = impl_->opts.agent_id;
  // Resent only when unsent: a resent create of a named task would find it (409).
  return task_answer(impl_->send("POST", "/contexts/" + encode_component(t.context_id) + "/tasks", body.dump(),
                                 retry_mode::unsent));
}

result<task> client::get_task(const std::string& task_id) {
  return task_answer(impl_->send("GET", task_path(task_id), {}, retry_mode::safe));
}

result<std::vector<task>> client::list_tasks(const std::string& context_id, const std::string& status, size_t limit) {
  std::vector<task> out;
  std::string after;
  while (out.size() < limit) {
    std::string target = "/contexts/" + encode_component(context_id) +
                         "/tasks?limit=" + std::to_string(std::min<size_t>(1000, limit - out.size()));
    if (!status.empty()) target += "&status=" + encode_component(status);
    if (!after.empty()) target += "&after=" + encode_component(after);
    auto r = impl_->send("GET", target, {}, retry_mode::safe);
    if (!r) return std::unexpected(r.error());
    auto j = codec::parse_object(r->body, r->status);
    if (!j) return std::unexpected(j.error());
    auto page = decode_list<task>(j->value("tasks", json::array()), codec::task_from);
    if (!page) return std::unexpected(page.error());
    for (auto& t : *page) out.push_back(std::move(t));
    const auto next = j->find("next_after");
    if (!j->value("more", false) || next == j->end() || !next->is_string()) break;
    after = next->get<std::string>();
  }
  return out;
}

result<task_claim> client::claim_task(const std::string& task_id, std::chrono::milliseconds ttl) {
  json body = json::object();
  if (!impl_->opts.agent_id.empty()) body["agent_id"] = impl_->opts.agent_id;
  if (ttl.count() > 0) body["ttl_ms"] = ttl.count();
  // Safe to resend: the holder claiming again gets its claim back (same token), so a
  // claim whose answer was lost is not left held unknown to its agent.
  auto r = impl_->send("POST", task_path(task_id, "claim"), body.dump(), retry_mode::safe);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  auto t = codec::task_from(j->value("task", json()));
  if (!t) return std::unexpected(t.error());
  auto l = codec::lock_from(j->value("lock", json()));
  if (!l) return std::unexpected(l.error());
  return task_claim{std::move(*t), std::move(*l)};
}

result<task> client::complete_task(const std::string& task_id, uint64_t fence, const std::string& result_json) {
  json body{{"fence", fence}};
  if (!impl_->opts.agent_id.empty()) body["agent_id"] = impl_->opts.agent_id;
  if (!result_json.empty()) {
    auto result = json::parse(result_json, nullptr, false);
    if (!result.is_object())
      return std::unexpected(error{error::kind::protocol, 0, "a task's result must be a JSON object", {}});
    body["result"] = std::move(result);
  }
  return task_answer(impl_->send("POST", task_path(task_id, "complete"), body.dump(), retry_mode::unsent));
}

result<task> client::fail_task(const std::string& task_id, uint64_t fence, const std::string& why) {
  json body{{"fence", fence}, {"error", why}};
  if (!impl_->opts.agent_id.empty()) body["agent_id"] = impl_->opts.agent_id;
  return task_answer(impl_->send("POST", task_path(task_id, "fail"), body.dump(), retry_mode::unsent));
}

result<std::vector<claim_renewal>> client::heartbeat(const std::vector<std::string>& contexts, const std::string& status,
                                                     const std::string& progress_json, const std::string& task_id) {
  if (impl_->opts.agent_id.empty())
    return std::unexpected(error{error::kind::protocol, 0, "heartbeats need client_options::agent_id", {}});
  json body{{"contexts", contexts}};
  if (!status.empty()) body["status"] = status;
  if (!task_id.empty()) body["task_id"] = task_id;
  if (!progress_json.empty()) {
    auto progress = json::parse(progress_json, nullptr, false);
    if (!progress.is_object())
      return std::unexpected(error{error::kind::protocol, 0, "progress must be a JSON object", {}});
    body["progress"] = std::move(progress);
  }
  auto r = impl_->send("POST", "/agents/" + encode_component(impl_->opts.agent_id) + "/heartbeat", body.dump(),
                       retry_mode::safe);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  std::vector<claim_renewal> out;
  for (const auto& c : j->value("claims", json::array())) {
    if (!c.is_object() || !c.value("task_id", json()).is_string())
      return std::unexpected(error{error::kind::protocol, r->status, "a heartbeat claim is not an object with a task_id", {}});
    out.push_back({c["task_id"].get<std::string>(), c.value("renewed", false)});
  }
  return out;
}

result<bool> client::leave(const std::string& context_id) {
  if (impl_->opts.agent_id.empty())
    return std::unexpected(error{error::kind::protocol, 0, "leaving needs client_options::agent_id", {}});
  auto r = impl_->send("DELETE",
                       "/agents/" + encode_component(impl_->opts.agent_id) + "/presence?context=" +
                           encode_component(context_id),
                       {}, retry_mode::safe);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  return j->value("left", false);
}

namespace {

fact fact_from(const json& j) {
  fact f;
  f.key = j.value("key", "");
  f.value_json = j.contains("value") ? j["value"].dump() : "null";
  f.status = j.value("status", "");
  f.agent_id = j.value("agent_id", "");
  if (auto src = j.find("sources"); src != j.end() && src->is_array())
    for (const auto& v : *src)
      if (v.is_number_unsigned()) f.sources.push_back(v.get<uint64_t>());
  if (auto c = j.find("confidence"); c != j.end() && c->is_number()) f.confidence = c->get<double>();
  f.set_at_seq = j.value("set_at_seq", uint64_t(0));
  f.superseded_at_seq = j.value("superseded_at_seq", uint64_t(0));
  f.ended_by = j.value("ended_by", "");
  f.json = j.dump();
  return f;
}

result<fact> fact_answer(result<http_result> r) {
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  const auto f = j->find("fact");
  if (f == j->end() || !f->is_object())
    return std::unexpected(error{error::kind::protocol, r->status, "answer has no \"fact\"", {}});
  return fact_from(*f);
}

result<facts_read> facts_answer(result<http_result> r, const char* member) {
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  facts_read out;
  out.as_of_seq = j->value("as_of_seq", uint64_t(0));
  if (auto list = j->find(member); list != j->end() && list->is_array())
    for (const auto& f : *list) out.facts.push_back(fact_from(f));
  else if (auto one = j->find("fact"); one != j->end() && one->is_object())
    out.facts.push_back(fact_from(*one));
  return out;
}

std::string fact_query_string(const fact_query& q) {
  std::string out;
  auto add = [&](std::string_view k, const std::string& v) {
    out += out.empty() ? "?" : "&";
    out.append(k).append("=").append(encode_component(v));
  };
  if (!q.prefix.empty()) add("prefix", q.prefix);
  if (q.as_of_seq) add("as_of_seq", std::to_string(*q.as_of_seq));
  if (!q.valid_at.empty()) add("valid_at", q.valid_at);
  if (q.include_superseded) add("include_superseded", "true");
  return out;
}

}  // namespace

result<fact> client::set_fact(const std::string& context_id, const std::string& key, const fact_input& in) {
  auto value = json::parse(in.value_json, nullptr, false);
  if (value.is_discarded())
    return std::unexpected(error{error::kind::protocol, 0, "the fact's value is not JSON: " + in.value_json, {}});
  json body{{"value", std::move(value)}};
  if (!in.sources.empty()) body["sources"] = in.sources;
  if (in.confidence) body["confidence"] = *in.confidence;
  if (in.disputed) body["status"] = "disputed";
  if (!in.valid_from.empty()) body["valid_from"] = in.valid_from;
  if (!in.valid_to.empty()) body["valid_to"] = in.valid_to;
  return fact_answer(impl_->send("PUT", "/contexts/" + encode_component(context_id) + "/facts/" + encode_component(key),
                                 body.dump(), retry_mode::unsent));
}

result<fact> client::retract_fact(const std::string& context_id, const std::string& key) {
  return fact_answer(impl_->send("DELETE", "/contexts/" + encode_component(context_id) + "/facts/" + encode_component(key),
                                 {}, retry_mode::unsent));
}

result<facts_read> client::facts(const std::string& context_id, const fact_query& q) {
  return facts_answer(impl_->send("GET", "/contexts/" + encode_component(context_id) + "/facts" + fact_query_string(q), {},
                                  retry_mode::safe),
                      "facts");
}

result<facts_read> client::fact_versions(const std::string& context_id, const std::string& key, const fact_query& q) {
  fact_query one = q;
  one.prefix.clear();
  return facts_answer(impl_->send("GET",
                                  "/contexts/" + encode_component(context_id) + "/facts/" + encode_component(key) +
                                      fact_query_string(one),
                                  {}, retry_mode::safe),
                      "versions");
}

result<memory_packet> client::packet(const std::string& context_id, const packet_request& r) {
  json body = json::object();
  if (!r.agent_id.empty()) body["agent_id"] = r.agent_id;
  if (!r.purpose.empty()) body["purpose"] = r.purpose;
  if (!r.query.empty() || !r.query_vector.empty()) {
    json q = json::object();
    if (!r.query.empty()) q["text"] = r.query;
    if (!r.query_vector.empty()) q["vector"] = r.query_vector;
    body["query"] = std::move(q);
  }
  body["budget"] = {{"max_tokens", r.max_tokens}};
  if (!r.section_budgets.empty()) body["budget"]["sections"] = r.section_budgets;
  json policy = json::object();
  if (!r.policy_json.empty()) {
    policy = json::parse(r.policy_json, nullptr, false);
    if (!policy.is_object())
      return std::unexpected(error{error::kind::protocol, 0, "policy_json is not a JSON object: " + r.policy_json, {}});
  }
  if (!r.policy.empty()) policy["name"] = r.policy;
  if (!policy.empty()) body["policy"] = std::move(policy);
  if (r.as_of_seq) body["as_of_seq"] = *r.as_of_seq;
  if (r.since_seq) body["since_seq"] = *r.since_seq;
  if (r.text) body["format"] = "text";
  auto answer = impl_->send("POST", "/contexts/" + encode_component(context_id) + "/packet", body.dump(), retry_mode::safe);
  if (!answer) return std::unexpected(answer.error());
  memory_packet out;
  if (r.text && answer->status / 100 == 2) {
    out.body = std::move(answer->body);
    out.etag = answer->header("etag");
    return out;
  }
  auto j = codec::parse_object(answer->body, answer->status);
  if (!j) return std::unexpected(j.error());
  out.etag = answer->header("etag");
  const json meta = j->value("meta", json::object());
  out.as_of_seq = meta.value("as_of_seq", uint64_t(0));
  const json report = j->value("budget_report", json::object());
  out.max_tokens = report.value("max_tokens", 0u);
  out.used_tokens = report.value("used_tokens", 0u);
  for (const auto& i : j->value("items", json::array())) {
    packet_item item{i.value("section", ""), i.value("kind", ""), i.value("seq", uint64_t(0)),
                     i.value("kind", "") == "unit" ? i.value("id", "") : i.value("key", ""), i.value("tokens", 0u),
                     i.value("why", json::object()).value("score", 0.0), i.dump()};
    out.items.push_back(std::move(item));
  }
  for (const auto& o : report.value("omitted", json::array())) {
    out.omitted.push_back(packet_omission{o.value("section", ""), o.value("kind", ""),
                                          o.value("kind", "") == "unit" ? o.value("id", "") : o.value("key", ""),
                                          o.value("seq", uint64_t(0)), o.value("tokens", 0u), o.value("score", 0.0),
                                          o.value("reason", ""), o.value("by_seq", uint64_t(0))});
  }
  out.body = std::move(answer->body);
  return out;
}

result<std::string> client::mcp(const std::string& message) {
  auto r = impl_->send("POST", "/mcp", message, retry_mode::unsent);
  if (!r) return std::unexpected(r.error());
  if (r->status == 202) return std::string();
  // A JSON-RPC answer (200, or 400 for a malformed message) is the client's to read;
  // anything else (401, 403, 5xx) is an error of the transport.
  if (r->status == 200 || (r->status == 400 && r->body.find("\"jsonrpc\"") != std::string::npos))
    return std::move(r->body);
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  return std::unexpected(error{error::kind::protocol, r->status, "unexpected answer from /mcp", {}});
}

result<std::vector<present_agent>> client::presence(const std::string& context_id) {
  auto r = impl_->send("GET", "/contexts/" + encode_component(context_id) + "/presence", {}, retry_mode::safe);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  return decode_list<present_agent>(j->value("agents", json::array()), codec::present_agent_from);
}

result<uint64_t> client::import_events(const std::string& context_id, const std::vector<std::string>& events) {
  std::string body = "{\"events\":[";
  for (size_t i = 0; i < events.size(); ++i) {
    if (i) body.push_back(',');
    body.append(events[i]);
  }
  body.append("]}");
  auto r = impl_->send("POST", "/contexts/" + encode_component(context_id) + "/import", body, retry_mode::none);
  if (!r) return std::unexpected(r.error());
  auto j = codec::parse_object(r->body, r->status);
  if (!j) return std::unexpected(j.error());
  const auto head = j->find("head_seq");
  if (head == j->end() || !head->is_number_unsigned())
    return std::unexpected(error{error::kind::protocol, r->status, "import answer has no \"head_seq\"", {}});
  return head->get<uint64_t>();
}

result<backup_info> client::backup(const std::string& dir) {
  return decode_field(impl_->send("POST", "/admin/backup", json{{"dir", dir}}.dump(), retry_mode::none), "backup",
                      [](const json& j) -> result<backup_info> {
                        if (!j.is_object() || !j.contains("dir") || !j["dir"].is_string())
                          return std::unexpected(error{error::kind::protocol, 0, "backup answer has no \"dir\"", {}});
                        return backup_info{j["dir"].get<std::string>(), j.value("seconds", 0.0)};
                      });
}

result<health_status> client::health() {
  health_status out;
  auto live = impl_->send("GET", "/healthz", {}, retry_mode::none);
  if (!live && !live.error().is_server()) return std::unexpected(live.error());
  out.live = live.has_value();
  // /readyz answers 503 while recovering: that is a state, not a failure.
  auto ready = impl_->send("GET", "/readyz", {}, retry_mode::none);
  if (!ready && !ready.error().is_server()) return std::unexpected(ready.error());
  out.ready = ready.has_value();
  out.readyz_json = ready ? ready->body : ready.error().message;
  json j = json::parse(out.readyz_json, nullptr, false);
  if (j.is_object()) {
    out.status = j.value("status", "");
    if (auto s = j.find("search"); s != j.end() && s->is_object()) {
      if (auto st = s->find("state"); st != s->end() && st->is_string()) out.search_state = st->get<std::string>();
      if (auto lag = s->find("lag"); lag != s->end() && lag->is_number_unsigned()) out.search_lag = lag->get<uint64_t>();
    }
  }
  if (out.status.empty()) out.status = out.ready ? "ready" : "recovering";
  return out;
}

}  // namespace engram::client
