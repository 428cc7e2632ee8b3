#include "search/embedder.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/url/parse.hpp>
#include <condition_variable>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>

#include "engram/http_connection.hpp"
#include "model/codec.hpp"
#include "model/thread_name.hpp"
#include "search/terms.hpp"
#include "storage/store.hpp"

namespace engram::search {
namespace {

using model::errc;
using model::fail;
using model::json;
using steady = std::chrono::steady_clock;

constexpr size_t read_chunk = 256;  // events read from a log at a time

struct endpoint {
  std::string host;
  uint16_t port = 80;
  std::string target;  // path and query
};

model::result<endpoint> parse_endpoint(const std::string& url) {
  auto u = boost::urls::parse_uri(url);
  if (!u) return fail(errc::invalid_argument, "search.embeddings.url is not a URL: " + url);
  if (u->scheme() != "http")
    return fail(errc::invalid_argument,
                "search.embeddings.url must be http:// (TLS to the endpoint is not supported yet; put a local "
                "proxy in front of a hosted API): " + url);
  endpoint e;
  e.host = u->host();
  if (e.host.empty()) return fail(errc::invalid_argument, "search.embeddings.url has no host: " + url);
  if (u->has_port()) {
    if (u->port_number() == 0) return fail(errc::invalid_argument, "search.embeddings.url has a bad port: " + url);
    e.port = u->port_number();
  }
  e.target = u->encoded_target().empty() ? "/" : std::string(u->encoded_target());
  return e;
}

struct metrics_set {
  std::shared_ptr<prometheus::Registry> own;
  prometheus::Gauge* up;
  prometheus::Gauge* backlog;
  prometheus::Counter* embedded;
  prometheus::Counter* calls_ok;
  prometheus::Counter* calls_failed;

  explicit metrics_set(prometheus::Registry* r) {
    if (!r) {
      own = std::make_shared<prometheus::Registry>();
      r = own.get();
    }
    using namespace prometheus;
    up = &BuildGauge().Name("engram_search_embedder_up")
              .Help("1 when the last call to the embedding endpoint succeeded").Register(*r).Add({});
    backlog = &BuildGauge().Name("engram_search_embedder_backlog_events")
                   .Help("Log events the embedder has not looked at yet").Register(*r).Add({});
    embedded = &BuildCounter().Name("engram_search_embedder_vectors_total")
                    .Help("Vectors computed by the embedding endpoint and stored").Register(*r).Add({});
    auto& calls = BuildCounter().Name("engram_search_embedder_requests_total")
                      .Help("Calls to the embedding endpoint by outcome").Register(*r);
    calls_ok = &calls.Add({{"outcome", "ok"}});
    calls_failed = &calls.Add({{"outcome", "error"}});
    up->Set(1);
  }
};

}  // namespace

struct embedder::impl {
  embedder_options opts;
  endpoint ep;
  storage::store& store;
  metrics_set metrics;

  mutable std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::unordered_map<std::string, uint64_t> heads;    // last committed seq, per context
  std::unordered_map<std::string, uint64_t> cursors;  // last seq looked at, per context (loaded lazily)
  std::unordered_map<std::string, uint64_t> pending;  // contexts with events to look at → head
  bool up = true;
  std::string last_error;
  steady::time_point last_failure{};
  std::atomic<uint64_t> embedded{0};
  // The model's dimension, fixed by the first vector stored in its space (by the
  // embedder or a client); 0 while none is.
  std::atomic<uint32_t> dimension{0};
  std::thread worker;

  std::mutex pool_mu;  // idle connections for query embedding
  std::vector<client::http_connection> pool;

  impl(const embedder_options& o, endpoint e, storage::store& s, prometheus::Registry* r)
      : opts(o), ep(std::move(e)), store(s), metrics(r) {}

  // ---- the endpoint ------------------------------------------------------------

  // Vectors for `texts`, in order. An entry the endpoint answered with an unusable
  // vector (wrong type, all zeros) is left empty.
  model::result<std::vector<std::vector<float>>> call(client::http_connection& conn,
                                                      const std::vector<std::string>& texts) {
    json body{{"model", opts.model}, {"input", texts}};
    client::header_list headers;
    if (!opts.api_key.empty()) headers.emplace_back("Authorization", "Bearer " + opts.api_key);
    auto r = conn.request("POST", ep.target, model::dump(body), headers);
    if (!r) return fail(errc::unavailable, "embedding endpoint: " + r.error().message);
    if (r->status != 200)
      return fail(errc::unavailable, "embedding endpoint answered " + std::to_string(r->status) + ": " +
                                         std::string(cut_utf8(r->body, 200)));
    auto parsed = model::parse_json(r->body);
    if (!parsed || !parsed->is_object() || !parsed->contains("data") || !(*parsed)["data"].is_array())
      return fail(errc::unavailable, "embedding endpoint: the answer has no \"data\" array");
    const auto& data = (*parsed)["data"];
    if (data.size() != texts.size())
      return fail(errc::unavailable, "embedding endpoint returned " + std::to_string(data.size()) +
                                         " embeddings for " + std::to_string(texts.size()) + " inputs");
    std::vector<std::vector<float>> out(texts.size());
    for (size_t i = 0; i < data.size(); ++i) {
      const auto& item = data[i];
      if (!item.is_object()) return fail(errc::unavailable, "embedding endpoint: data[] must hold objects");
      size_t at = i;
      if (auto idx = item.find("index"); idx != item.end() && idx->is_number_unsigned()) at = idx->get<size_t>();
      if (at >= out.size()) return fail(errc::unavailable, "embedding endpoint: an index is out of range");
      auto it = item.find("embedding");
      if (it == item.end()) return fail(errc::unavailable, "embedding endpoint: data[] without \"embedding\"");
      if (auto v = model::vector_from_json(*it, "embedding")) out[at] = std::move(*v);
    }
    if (auto ok = check_dimension(out); !ok) return std::unexpected(ok.error());
    return out;
  }

  // Vectors of another dimension than the model's mean another model is answering
  // behind the URL: the endpoint is as good as down (searches degrade to keyword,
  // /readyz and the metric say so) rather than every query failing as a client error.
  model::status check_dimension(const std::vector<std::vector<float>>& vectors) {
    uint32_t want = known_dimension();
    for (const auto& v : vectors) {
      if (v.empty()) continue;
      if (want == 0) want = uint32_t(v.size());  // a first batch must agree with itself
      if (v.size() != want)
        return fail(errc::unavailable, "embedding endpoint returned vectors of dimension " + std::to_string(v.size()) +
                                           " but model '" + opts.model + "' has dimension " + std::to_string(want) +
                                           " (is another model answering at " + opts.url + "?)");
    }
    return {};
  }

  uint32_t known_dimension() {
    if (const uint32_t d = dimension.load()) return d;
    auto models = store.vector_models();  // a handful of records; read until one exists
    if (!models) return 0;
    for (const auto& [name, dim] : *models)
      if (name == opts.model) dimension = dim;
    return dimension.load();
  }

  void record_outcome(const model::status& outcome) {
    std::lock_guard lock(mu);
    if (outcome) {
      metrics.calls_ok->Increment();
      if (!up) spdlog::info("search: the embedding endpoint answers again");
      up = true;
      last_error.clear();
    } else {
      metrics.calls_failed->Increment();
      if (up) spdlog::warn("search: embedding endpoint failing ({}); semantic search degrades to keyword results",
                           outcome.error().message);
      up = false;
      last_error = outcome.error().message;
      last_failure = steady::now();
    }
    metrics.up->Set(up ? 1 : 0);
  }

  // ---- following the logs --------------------------------------------------------

  model::result<uint64_t> cursor(const std::string& context_id) {
    {
      std::lock_guard lock(mu);
      if (auto it = cursors.find(context_id); it != cursors.end()) return it->second;
    }
    auto pos = store.vector_cursor(opts.model, context_id);
    if (!pos) return std::unexpected(pos.error());
    std::lock_guard lock(mu);
    return cursors.emplace(context_id, *pos).first->second;
  }

  model::status scan() {
    std::string after;
    for (;;) {
      auto page = store.list_contexts(after, 1000);
      if (!page) return fail(page.error().code, "listing contexts: " + page.error().message);
      for (const auto& c : page->contexts) {
        const auto cur = cursor(c.id());
        if (!cur) return std::unexpected(cur.error());
        const uint64_t pos = *cur;
        std::lock_guard lock(mu);
        auto& head = heads[c.id()];
        head = std::max(head, c.head_seq());
        if (pos < head) pending[c.id()] = head;
      }
      if (!page->more || page->contexts.empty()) break;
      after = page->contexts.back().id();
    }
    update_backlog();
    return {};
  }

  uint64_t backlog_locked() const {
    uint64_t total = 0;
    for (const auto& [ctx, head] : pending) {
      auto it = cursors.find(ctx);
      const uint64_t pos = it == cursors.end() ? 0 : it->second;
      if (head > pos) total += head - pos;
    }
    return total;
  }

  void update_backlog() {
    std::lock_guard lock(mu);
    metrics.backlog->Set(double(backlog_locked()));
  }

  struct batch {
    std::vector<std::string> unit_ids;
    std::vector<std::string> texts;
    std::unordered_map<std::string, uint64_t> cursors;  // new positions
  };

  // Up to batch_size units that need a vector, and how far that reading goes.
  model::result<batch> collect(const std::unordered_map<std::string, uint64_t>& work) {
    batch b;
    for (const auto& [context_id, head] : work) {
      auto cur = cursor(context_id);
      if (!cur) return std::unexpected(cur.error());
      uint64_t pos = *cur;
      bool full = false;
      while (pos < head && !full) {
        auto events = store.read_events(context_id, pos, std::min<uint64_t>(read_chunk, head - pos));
        if (!events)
          return fail(events.error().code, "reading context '" + context_id + "': " + events.error().message);
        if (events->empty()) break;
        for (const auto& ev : *events) {
          if (b.texts.size() == opts.batch_size) {
            full = true;
            break;
          }
          pos = ev.seq();
          if (!ev.has_work_unit()) continue;
          const auto& unit = ev.work_unit();
          const auto text = payload_text(unit, opts.max_input_bytes);
          if (!text) continue;  // binary or empty: nothing to embed
          auto existing = store.get_vector(unit.id());
          if (!existing) return std::unexpected(existing.error());
          if (*existing) continue;  // the client supplied one
          b.unit_ids.push_back(unit.id());
          b.texts.emplace_back(*text);
        }
      }
      b.cursors[context_id] = pos;
      if (b.texts.size() == opts.batch_size) break;
    }
    return b;
  }

  void run() {
    client::http_connection conn(ep.host, ep.port, opts.timeout);
    int failures = 0;
    bool scanned = false;
    for (;;) {
      std::unordered_map<std::string, uint64_t> work;
      {
        std::unique_lock lock(mu);
        if (failures > 0) {
          const auto delay = std::min<std::chrono::milliseconds>(opts.max_backoff,
                                                                 opts.min_backoff * (1LL << std::min(failures, 16)));
          cv.wait_for(lock, delay, [&] { return stopping; });
        } else if (scanned) {
          cv.wait(lock, [&] { return stopping || !pending.empty(); });
        }
        if (stopping) return;
        work = pending;
      }
      // Errors are values here; the catch is for allocation failures and the like,
      // which must not end the thread.
      try {
        if (!scanned) {
          if (auto ok = scan(); !ok) {
            spdlog::error("search: embedder: {}", ok.error().message);
            ++failures;
            continue;
          }
          scanned = true;
          continue;
        }
        if (!step(conn, work)) ++failures;
        else failures = 0;
      } catch (const std::exception& e) {
        spdlog::error("search: embedder: {}", e.what());
        ++failures;
      }
    }
  }

  // One batch: embed, store with the new positions. False on failure (retried).
  bool step(client::http_connection& conn, const std::unordered_map<std::string, uint64_t>& work) {
    auto collected = collect(work);
    if (!collected) {
      spdlog::error("search: embedder: {}", collected.error().message);
      return false;
    }
    auto& b = *collected;
    storage::vector_write write;
    write.cursor_model = opts.model;
    if (!b.texts.empty()) {
      auto vectors = call(conn, b.texts);
      record_outcome(vectors ? model::status{} : model::status(std::unexpected(vectors.error())));
      if (!vectors) {
        conn.close();
        return false;
      }
      for (size_t i = 0; i < vectors->size(); ++i) {
        if ((*vectors)[i].empty()) continue;
        storage::vector_write::item item;
        item.unit_id = b.unit_ids[i];
        item.embedding.set_model(opts.model);
        item.embedding.mutable_values()->Add((*vectors)[i].begin(), (*vectors)[i].end());
        write.vectors.push_back(std::move(item));
      }
    }
    write.cursors.assign(b.cursors.begin(), b.cursors.end());
    const size_t stored = write.vectors.size();
    std::promise<model::status> done;
    auto result = done.get_future();
    store.put_vectors(std::move(write), [&done](model::status s) { done.set_value(std::move(s)); });
    if (auto ok = result.get(); !ok) {
      spdlog::error("search: embedder: storing {} vectors: {}", stored, ok.error().message);
      return false;
    }
    embedded += stored;
    metrics.embedded->Increment(double(stored));
    {
      std::lock_guard lock(mu);
      for (const auto& [ctx, pos] : b.cursors) {
        cursors[ctx] = pos;
        if (auto it = pending.find(ctx); it != pending.end() && it->second <= pos) pending.erase(it);
      }
    }
    update_backlog();
    return true;
  }
};

embedder::embedder(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
embedder::~embedder() { close(); }

model::result<std::unique_ptr<embedder>> embedder::open(const embedder_options& opts, storage::store& store,
                                                        prometheus::Registry* metrics) {
  auto ep = parse_endpoint(opts.url);
  if (!ep) return std::unexpected(ep.error());
  if (opts.model.empty()) return fail(errc::invalid_argument, "search.embeddings.model must be set");
  if (opts.batch_size == 0) return fail(errc::invalid_argument, "search.embeddings.batch_size must be positive");
  auto p = std::make_unique<impl>(opts, std::move(*ep), store, metrics);
  auto* raw = p.get();
  p->worker = std::thread([raw] {
    model::name_this_thread("embedder");
    raw->run();
  });
  spdlog::info("search: embedding units with model '{}' at {}", opts.model, opts.url);
  return std::unique_ptr<embedder>(new embedder(std::move(p)));
}

const std::string& embedder::model() const { return impl_->opts.model; }

void embedder::on_committed(const std::vector<std::shared_ptr<const api::Event>>& events) {
  auto& s = *impl_;
  bool grew = false;
  {
    std::lock_guard lock(s.mu);
    if (s.stopping) return;
    for (const auto& ev : events) {
      if (!ev->has_work_unit()) continue;
      auto& head = s.heads[ev->context_id()];
      if (ev->seq() <= head) continue;
      head = ev->seq();
      s.pending[ev->context_id()] = head;
      grew = true;
    }
  }
  if (grew) s.cv.notify_one();
}

model::result<std::vector<float>> embedder::embed_query(const std::string& text) {
  auto& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    // While the endpoint is failing, do not make every search wait for it: try
    // again at most once a second.
    if (!s.up && steady::now() - s.last_failure < std::chrono::seconds(1))
      return fail(errc::unavailable, "the embedding endpoint is failing: " + s.last_error);
  }
  std::optional<client::http_connection> conn;
  {
    std::lock_guard lock(s.pool_mu);
    if (!s.pool.empty()) {
      conn.emplace(std::move(s.pool.back()));
      s.pool.pop_back();
    }
  }
  if (!conn) conn.emplace(s.ep.host, s.ep.port, s.opts.query_timeout);
  auto out = s.call(*conn, {std::string(cut_utf8(text, s.opts.max_input_bytes))});
  s.record_outcome(out ? model::status{} : model::status(std::unexpected(out.error())));
  if (!out) return std::unexpected(out.error());
  {
    std::lock_guard lock(s.pool_mu);
    if (s.pool.size() < 8) s.pool.push_back(std::move(*conn));
  }
  if (out->front().empty()) return fail(errc::unavailable, "the embedding endpoint returned no usable vector");
  return std::move(out->front());
}

embedder_status embedder::status() const {
  const auto& s = *impl_;
  embedder_status st;
  std::lock_guard lock(s.mu);
  st.up = s.up;
  st.error = s.last_error;
  st.backlog = s.backlog_locked();
  st.embedded = s.embedded.load();
  return st;
}

void embedder::close() {
  auto& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    s.stopping = true;
  }
  s.cv.notify_all();
  if (s.worker.joinable()) s.worker.join();
}

}  // namespace engram::search
