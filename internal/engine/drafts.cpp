#include "engine/drafts.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "model/codec.hpp"
#include "model/text.hpp"
#include "model/thread_name.hpp"

namespace engram::engine {

using model::errc;
using model::json;

namespace {

std::string_view reason_name(draft_end r) {
  switch (r) {
    case draft_end::committed: return "committed";
    case draft_end::aborted: return "aborted";
    case draft_end::expired: return "expired";
  }
  return "ended";
}

// The members every draft message carries.
json draft_json(std::string_view type, const draft_info& d) {
  return json{{"type", type}, {"context_id", d.context_id}, {"draft_id", d.draft_id}, {"agent_id", d.agent_id}};
}

// Content as "text" (a text draft) or base64 "payload".
void put_content(json& j, std::string_view data, bool binary) {
  if (binary) j["payload"] = model::base64_encode(data);
  else j["text"] = data;
}

router::event_ptr message(const draft_info& d, std::string sse_event, json body, router::wire_event::draft_tag tag) {
  auto w = std::make_shared<router::wire_event>();
  w->context_id = d.context_id;
  w->sse_event = std::move(sse_event);
  w->json = model::dump(body);
  w->published = std::chrono::steady_clock::now();
  w->draft = std::move(tag);
  return w;
}

}  // namespace

drafts::drafts(draft_options opts, router::router& router, std::shared_ptr<const model::clock> clock,
               prometheus::Registry* metrics)
    : opts_(opts), router_(router), clock_(std::move(clock)) {
  if (metrics) {
    open_gauge_ = &prometheus::BuildGauge().Name("engram_drafts_open").Help("Drafts open (partial output being streamed)")
                       .Register(*metrics).Add({});
    bytes_gauge_ = &prometheus::BuildGauge().Name("engram_drafts_bytes").Help("Content bytes held by open drafts")
                        .Register(*metrics).Add({});
    deltas_ = &prometheus::BuildCounter().Name("engram_draft_deltas_total").Help("Draft deltas published")
                   .Register(*metrics).Add({});
  }
  sweeper_ = std::thread([this] {
    model::name_this_thread("draft-sweeper");
    run();
  });
}

drafts::~drafts() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  sweeper_.join();
}

model::result<bool> drafts::add(draft_delta d) {
  if (d.data.size() > opts_.max_delta_bytes)
    return model::fail(errc::payload_too_large, "a delta carries at most " + std::to_string(opts_.max_delta_bytes) +
                                                    " bytes (drafts.max_delta_bytes); send smaller deltas");
  const auto now = clock_->steady_now();
  std::lock_guard publishing(stripe(d.context_id, d.draft_id));
  std::unique_lock lock(mu_);
  auto it = open_.find(key{d.context_id, d.draft_id});
  if (it == open_.end()) {
    if (d.index != 0)
      return model::fail(errc::conflict, "draft '" + d.draft_id + "' is not open; its first delta must have index 0"
                                         " (it may have been committed, aborted or expired)");
    if (open_.size() >= opts_.max_drafts)
      return model::fail(errc::rate_limited, "the server holds " + std::to_string(opts_.max_drafts) +
                                                 " open drafts (drafts.max_drafts); commit or abort some");
    if (auto n = per_owner_.find(d.owner); n != per_owner_.end() && n->second >= opts_.max_per_owner)
      return model::fail(errc::rate_limited, "at most " + std::to_string(opts_.max_per_owner) +
                                                 " open drafts per connection or agent (drafts.max_per_owner); "
                                                 "commit or abort one first");
  } else {
    auto& info = it->second.info;
    if (info.agent_id != d.agent_id)
      return model::fail(errc::conflict, "draft '" + d.draft_id + "' belongs to agent '" + info.agent_id + "'");
    if (d.index < info.next_index) return false;  // a retry of a delta already applied
    if (d.index > info.next_index)
      return model::fail(errc::conflict, "draft '" + d.draft_id + "' expects index " + std::to_string(info.next_index) +
                                             " next, got " + std::to_string(d.index));
    if (info.binary != d.binary)
      return model::fail(errc::conflict, std::string("draft '") + d.draft_id + "' carries " +
                                             (info.binary ? "base64 payload" : "text") + "; every delta must");
    if (it->second.content.size() + d.data.size() > opts_.max_bytes)
      return model::fail(errc::payload_too_large, "draft '" + d.draft_id + "' would exceed " +
                                                      std::to_string(opts_.max_bytes) +
                                                      " bytes (drafts.max_bytes); commit it as a unit");
  }
  if (total_bytes_ + d.data.size() > opts_.max_total_bytes)
    return model::fail(errc::rate_limited, "open drafts hold " + std::to_string(total_bytes_) +
                                               " bytes, the most the server keeps (drafts.max_total_bytes); retry later");

  if (it == open_.end()) {
    draft fresh;
    fresh.info = {d.context_id, d.draft_id, d.agent_id, 0, 0, d.binary, clock_->now_ns(), 0};
    fresh.owner = d.owner;
    it = open_.emplace(key{d.context_id, d.draft_id}, std::move(fresh)).first;
    ++per_owner_[d.owner];
    if (open_gauge_) open_gauge_->Increment();
  }
  auto& dr = it->second;
  dr.content += d.data;
  dr.info.bytes = dr.content.size();
  dr.info.next_index = d.index + 1;
  dr.info.updated_ns = clock_->now_ns();
  dr.deadline = now + opts_.idle;
  total_bytes_ += d.data.size();
  if (bytes_gauge_) bytes_gauge_->Increment(double(d.data.size()));
  if (deltas_) deltas_->Increment();

  auto body = draft_json("delta", dr.info);
  body["index"] = d.index;
  put_content(body, d.data, d.binary);
  auto ev = message(dr.info, "delta", std::move(body), {router::wire_event::draft_tag::delta, d.draft_id, d.index});
  lock.unlock();
  router_.publish_draft(ev);  // still under the draft's stripe: in index order
  return true;
}

model::result<bool> drafts::end(const std::string& context_id, const std::string& draft_id, const std::string& agent,
                                draft_end reason, uint64_t seq, const std::string& unit_id) {
  std::lock_guard publishing(stripe(context_id, draft_id));
  router::event_ptr ended;
  {
    std::lock_guard lock(mu_);
    auto it = open_.find(key{context_id, draft_id});
    if (it == open_.end()) return false;
    if (!agent.empty() && it->second.info.agent_id != agent)
      return model::fail(errc::conflict, "draft '" + draft_id + "' belongs to agent '" + it->second.info.agent_id + "'");
    ended = finish(it, reason, seq, unit_id);
  }
  router_.publish_draft(ended);
  return true;
}

router::event_ptr drafts::finish(std::map<key, draft>::iterator it, draft_end reason, uint64_t seq,
                                 const std::string& unit_id) {
  const draft_info info = it->second.info;
  total_bytes_ -= it->second.content.size();
  if (bytes_gauge_) bytes_gauge_->Decrement(double(it->second.content.size()));
  if (auto n = per_owner_.find(it->second.owner); n != per_owner_.end() && --n->second == 0) per_owner_.erase(n);
  open_.erase(it);
  if (open_gauge_) open_gauge_->Decrement();
  auto body = draft_json("draft_end", info);
  body["reason"] = reason_name(reason);
  body["deltas"] = info.next_index;
  if (reason == draft_end::committed) {
    body["unit_seq"] = seq;  // not "seq": draft messages are not log events, and clients key on "seq"
    body["unit_id"] = unit_id;
  }
  return message(info, "draft_end", std::move(body), {router::wire_event::draft_tag::end, info.draft_id, info.next_index});
}

router::event_ptr drafts::snapshot_of(const draft& d) const {
  auto body = draft_json("draft", d.info);
  body["index"] = d.info.next_index - 1;  // the last delta it includes
  put_content(body, d.content, d.info.binary);
  body["started_at"] = model::timestamp_json(d.info.started_ns);
  body["updated_at"] = model::timestamp_json(d.info.updated_ns);
  return message(d.info, "draft", std::move(body),
                 {router::wire_event::draft_tag::snapshot, d.info.draft_id, d.info.next_index - 1});
}

router::event_ptr drafts::snapshot(const std::string& context_id, const std::string& draft_id) const {
  std::lock_guard lock(mu_);
  auto it = open_.find(key{context_id, draft_id});
  return it == open_.end() ? nullptr : snapshot_of(it->second);
}

std::vector<router::event_ptr> drafts::snapshots(const router::topic_filter& filter) const {
  std::vector<router::event_ptr> out;
  std::lock_guard lock(mu_);
  for (const auto& [k, d] : open_)
    if (filter.matches(k.first)) out.push_back(snapshot_of(d));
  return out;
}

std::optional<draft_info> drafts::get(const std::string& context_id, const std::string& draft_id) const {
  std::lock_guard lock(mu_);
  auto it = open_.find(key{context_id, draft_id});
  if (it == open_.end()) return std::nullopt;
  return it->second.info;
}

std::vector<draft_info> drafts::in_context(const std::string& context_id) const {
  std::vector<draft_info> out;
  std::lock_guard lock(mu_);
  for (auto it = open_.lower_bound(key{context_id, ""}); it != open_.end() && it->first.first == context_id; ++it)
    out.push_back(it->second.info);
  return out;
}

void drafts::run() {
  const auto tick = std::clamp<std::chrono::milliseconds>(opts_.idle / 4, std::chrono::milliseconds(10),
                                                           std::chrono::milliseconds(1000));
  for (;;) {
    std::vector<key> idle;
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, tick, [&] { return stopping_; })) return;
      const auto now = clock_->steady_now();
      for (const auto& [k, d] : open_)
        if (d.deadline <= now) idle.push_back(k);
    }
    // Each under its stripe, checked again: a delta may have come meanwhile.
    for (const auto& k : idle) {
      std::lock_guard publishing(stripe(k.first, k.second));
      router::event_ptr ended;
      {
        std::lock_guard lock(mu_);
        auto it = open_.find(k);
        if (it == open_.end() || it->second.deadline > clock_->steady_now()) continue;
        ended = finish(it, draft_end::expired, 0, {});
      }
      router_.publish_draft(ended);
    }
  }
}

std::mutex& drafts::stripe(const std::string& context_id, const std::string& draft_id) {
  const size_t h = std::hash<std::string>{}(context_id) * 31 + std::hash<std::string>{}(draft_id);
  return publish_stripes_[h % publish_stripes_.size()];
}

}  // namespace engram::engine
