#include "gateway/stream_registry.hpp"

#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <unordered_map>

#include "engine/stream.hpp"
#include "gateway/access_log.hpp"

namespace engram::gateway {

namespace {

// The pattern of `e` that names `context_id`, or empty.
std::string matching(std::string_view context_id, const std::vector<std::string>& contexts,
                     const std::vector<std::string>& prefixes) {
  for (const auto& c : contexts)
    if (c == context_id) return c;
  for (const auto& p : prefixes)
    if (context_id.starts_with(p)) return p + "*";
  return {};
}

}  // namespace

void stream_registry::entry::subscribe(std::shared_ptr<engine::stream> s, std::vector<std::string> c,
                                       std::vector<std::string> p) {
  std::lock_guard lock(mu);
  stream = std::move(s);
  contexts = std::move(c);
  prefixes = std::move(p);
}

void stream_registry::entry::unsubscribe() {
  std::lock_guard lock(mu);
  stream.reset();
}

stream_registry::stream_registry(prometheus::Registry* r) {
  if (!r) return;
  subscribers_ = &prometheus::BuildGauge()
                      .Name("engram_stream_context_subscribers")
                      .Help("Open streams subscribed to a context (refreshed at each scrape)")
                      .Register(*r);
  max_lag_ = &prometheus::BuildGauge()
                  .Name("engram_stream_context_max_lag_events")
                  .Help("Events of a context published but not yet handed to its slowest subscriber")
                  .Register(*r);
}

stream_registry::~stream_registry() = default;

void stream_registry::register_stream(const std::shared_ptr<entry>& e) {
  std::lock_guard lock(mu_);
  e->id = ++next_id_;
  open_[e->id] = e;
}

void stream_registry::close_stream(const std::shared_ptr<entry>& e, unsigned status, std::string_view ended_by,
                                   bool access_log) {
  {
    std::lock_guard lock(mu_);
    if (!open_.erase(e->id)) return;  // already closed
  }
  e->unsubscribe();
  if (!access_log) return;
  const auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - e->opened_steady).count();
  access_line line;
  line.request_id = e->request_id;
  line.method = "GET";
  line.path = e->transport == "sse" ? "/stream-sse" : "/stream";
  line.status = status;
  line.bytes = e->bytes.load();
  line.seconds = seconds;
  line.agent = e->agent;
  line.ip = e->ip;
  line.stream = e->transport;
  line.events = e->events.load();
  line.ended_by = ended_by;
  log_access(line);
}

std::vector<std::shared_ptr<stream_registry::entry>> stream_registry::live_entries() const {
  std::vector<std::shared_ptr<entry>> out;
  std::lock_guard lock(mu_);
  out.reserve(open_.size());
  for (const auto& [id, weak] : open_)
    if (auto e = weak.lock()) out.push_back(std::move(e));
  return out;
}

size_t stream_registry::stop_streams(std::string_view owner_key) {
  size_t stopped = 0;
  for (const auto& e : live_entries())
    if (!e->owner_key.empty() && e->owner_key == owner_key && e->stop) {
      e->stop();
      ++stopped;
    }
  return stopped;
}

size_t stream_registry::open_streams() const {
  std::lock_guard lock(mu_);
  return open_.size();
}

std::vector<stream_registry::subscriber> stream_registry::subscribers_of(std::string_view context_id) const {
  const auto entries = live_entries();
  std::vector<subscriber> out;
  for (const auto& e : entries) {
    std::shared_ptr<engine::stream> s;
    std::string as;
    {
      std::lock_guard lock(e->mu);
      as = matching(context_id, e->contexts, e->prefixes);
      s = e->stream;
    }
    if (as.empty() || !s) continue;
    subscriber sub{e->id, e->transport, e->agent, e->ip, e->request_id, e->opened, as};
    bool receives = false;
    for (const auto& p : s->progress()) {
      if (p.context_id != context_id) continue;
      receives = true;
      sub.delivered = p.delivered;
      sub.head = p.head;
      sub.lag = p.lag;
    }
    // A pattern counts once the stream follows the context (its grants may exclude
    // it); a context named exactly is followed from the start.
    if (!receives && as.ends_with('*')) continue;
    sub.catching_up = s->catching_up();
    sub.events = e->events.load();
    sub.bytes = e->bytes.load();
    out.push_back(std::move(sub));
  }
  return out;
}

void stream_registry::refresh_metrics() {
  if (!subscribers_) return;
  const auto entries = live_entries();
  // Per context: subscribers and the largest lag. A context a stream asked for by
  // name counts from the start; one matched by a pattern once it has events.
  std::unordered_map<std::string, std::pair<uint64_t, uint64_t>> by_context;
  for (const auto& e : entries) {
    std::shared_ptr<engine::stream> s;
    std::vector<std::string> named;
    {
      std::lock_guard lock(e->mu);
      s = e->stream;
      named = e->contexts;
    }
    if (!s) continue;
    for (const auto& p : s->progress()) {
      auto& [subs, lag] = by_context[p.context_id];
      ++subs;
      lag = std::max(lag, p.lag);
      std::erase(named, p.context_id);
    }
    for (const auto& c : named) ++by_context[c].first;
  }
  std::vector<std::pair<std::string, std::pair<uint64_t, uint64_t>>> ranked(by_context.begin(), by_context.end());
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return a.second.first != b.second.first ? a.second.first > b.second.first : a.first < b.first;
  });
  std::map<std::string, std::pair<uint64_t, uint64_t>> shown;
  for (size_t i = 0; i < ranked.size(); ++i) {
    auto& slot = shown[i < max_labelled_contexts ? ranked[i].first : std::string("_other")];
    slot.first += ranked[i].second.first;
    slot.second = std::max(slot.second, ranked[i].second.second);
  }
  std::lock_guard lock(mu_);
  for (auto it = labelled_.begin(); it != labelled_.end();) {  // contexts nobody watches any more
    if (shown.count(it->first)) {
      ++it;
      continue;
    }
    subscribers_->Remove(it->second.first);
    max_lag_->Remove(it->second.second);
    it = labelled_.erase(it);
  }
  for (const auto& [context, value] : shown) {
    auto [it, added] = labelled_.try_emplace(context);
    if (added)
      it->second = {&subscribers_->Add({{"context", context}}), &max_lag_->Add({{"context", context}})};
    it->second.first->Set(double(value.first));
    it->second.second->Set(double(value.second));
  }
}

}  // namespace engram::gateway
