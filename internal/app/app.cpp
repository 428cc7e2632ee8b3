#include "app/app.hpp"

#include <prometheus/registry.h>
#include <signal.h>
#include <unistd.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "engine/engine.hpp"
#include "engine/presence.hpp"
#include "engine/retention.hpp"
#include "engine/tasks.hpp"
#include "app/log_sink.hpp"
#include "gateway/access_log.hpp"
#include "gateway/handler.hpp"
#include "gateway/server.hpp"
#include "gateway/stream_registry.hpp"
#include "locks/manager.hpp"
#include "model/codec.hpp"
#include "model/log_context.hpp"
#include "model/thread_name.hpp"
#include "router/router.hpp"
#include "search/index.hpp"
#include "storage/store.hpp"

namespace engram::app {

// The committer's publisher: hands committed events to the router (live streams)
// and to the search indexer.
class log_publisher final : public storage::publisher {
 public:
  log_publisher(router::router& r, search::index* index) : router_(r), index_(index) {}
  void publish(const std::vector<std::shared_ptr<const api::Event>>& events) override {
    router_.publish(events);
    if (index_) index_->on_committed(events);
  }
  void vectors_committed(uint64_t last_vseq) override {
    if (index_) index_->on_vectors(last_vseq);
  }
  void removed(const std::string& context_id, uint64_t first_seq, const std::vector<std::string>& unit_ids) override {
    if (index_) index_->on_removed(context_id, first_seq, unit_ids);
  }

 private:
  router::router& router_;
  search::index* index_;
};

struct app::impl {
  config::config cfg;
  std::shared_ptr<const model::clock> clock;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  // Declared before the server: streams owned by sessions unsubscribe from the
  // router when the server's io_contexts are destroyed.
  std::unique_ptr<router::router> router;
  std::unique_ptr<log_publisher> publisher;
  std::unique_ptr<engine::engine> eng;
  std::unique_ptr<locks::manager> locks;
  std::unique_ptr<gateway::stream_registry> stream_log;  // outlives the sessions that register in it
  std::unique_ptr<gateway::api_handler> handler;
  std::unique_ptr<gateway::server> http;
  std::unique_ptr<storage::store> store;
  std::unique_ptr<search::index> index;  // null when search is disabled
  std::unique_ptr<engine::retention> retention;
  std::unique_ptr<engine::presence> presence;
  std::unique_ptr<engine::tasks> tasks;  // the lock manager's observer: stopped with it
  std::thread recovery;

  std::mutex mu;
  std::condition_variable cv;
  bool recovered = false;
  std::optional<model::error> recovery_error;
  bool stopped = false;

  void recover() {
    const auto t0 = std::chrono::steady_clock::now();
    spdlog::info("storage: opening {} (durability={})", cfg.storage.data_dir,
                 cfg.storage.mode == storage::durability::sync ? "sync" : "relaxed");
    auto opened = storage::store::open(cfg.storage, registry.get(), clock,
                                       [this](int home, std::function<void()> f) { http->post(home, std::move(f)); });
    std::lock_guard lock(mu);
    if (auto ok = attach_modules(std::move(opened)); !ok) {
      recovery_error = ok.error();
    } else {
      spdlog::info("storage: ready after {} ms",
                   std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
    }
    recovered = true;
    cv.notify_all();
  }

  // Store opened → search index opened → publisher set (before any write) → lock
  // manager recovered → engine serves.
  model::status attach_modules(model::result<std::unique_ptr<storage::store>> opened) {
    if (!opened) {
      spdlog::critical("storage: recovery failed: {}", opened.error().message);
      return std::unexpected(opened.error());
    }
    store = std::move(*opened);
    if (cfg.search.enabled) {
      search::options so = cfg.search;
      if (so.index_dir.empty()) so.index_dir = cfg.storage.data_dir + "/search";
      if (!so.vector_snapshots) so.vectors.snapshot_dir.clear();
      else if (so.vectors.snapshot_dir.empty()) so.vectors.snapshot_dir = cfg.storage.data_dir + "/vectors";
      auto idx = search::index::open(so, *store, registry.get());
      if (!idx) {
        spdlog::critical("search: cannot open the index: {}", idx.error().message);
        return std::unexpected(idx.error());
      }
      index = std::move(*idx);
    }
    publisher = std::make_unique<log_publisher>(*router, index.get());
    store->set_publisher(publisher.get());
    tasks = std::make_unique<engine::tasks>(cfg.tasks, *store, *locks, clock);
    if (auto ok = tasks->start(); !ok) {  // before the leases: reaping one may strand a task
      spdlog::critical("tasks: recovery failed: {}", ok.error().message);
      return ok;
    }
    if (auto ok = locks->attach(store.get()); !ok) {
      spdlog::critical("locks: recovery failed: {}", ok.error().message);
      return ok;
    }
    eng->attach_search(index.get());
    eng->attach_locks(locks.get());
    presence = std::make_unique<engine::presence>(cfg.presence, *store, clock);
    if (auto ok = presence->start(); !ok) {
      spdlog::critical("presence: recovery failed: {}", ok.error().message);
      return ok;
    }
    eng->attach_presence(presence.get());
    eng->attach_tasks(tasks.get());
    retention = std::make_unique<engine::retention>(cfg.retention, *store, clock, registry.get());
    retention->start();
    eng->attach(store.get());  // last: the engine reports ready once everything is attached
    return {};
  }
};

app::app(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
app::~app() { stop(); }

model::result<std::unique_ptr<app>> app::start(const config::config& cfg,
                                               std::shared_ptr<const model::clock> clock) {
  auto p = std::make_unique<impl>();
  p->cfg = cfg;
  p->clock = clock ? std::move(clock) : model::default_clock();
  p->router = std::make_unique<router::router>(p->registry.get());
  p->eng = std::make_unique<engine::engine>(cfg.engine, p->clock, p->router.get(), p->registry.get());
  p->locks = std::make_unique<locks::manager>(cfg.locks, p->clock, p->registry.get());
  // One authenticator (it holds the verification key) for REST and streams.
  auto authn = gateway::authenticator::create(cfg.server.auth, p->clock);
  if (!authn) {
    const auto& a = cfg.server.auth;
    const char* key = a.alg != auth::algorithm::hs256 ? "auth.public_key_file" : "auth.secret";
    return model::fail(model::errc::invalid_argument, "auth: " + cfg.explain(key, authn.error().message));
  }
  auto shared_authn = std::make_shared<const gateway::authenticator>(std::move(*authn));
  p->stream_log = std::make_unique<gateway::stream_registry>(p->registry.get());
  p->handler = std::make_unique<gateway::api_handler>(*p->eng, cfg.server, p->registry, shared_authn,
                                                      p->stream_log.get());
  auto* h = p->handler.get();
  p->http = std::make_unique<gateway::server>(
      cfg.server, [h](gateway::request req, gateway::responder r) { h->handle(std::move(req), std::move(r)); },
      shared_authn, p->registry.get(), p->eng.get(), p->stream_log.get());
  if (auto ok = p->http->start(); !ok) {
    // Its errors are about server.addr or the TLS files: say where those came from.
    const auto& m = ok.error().message;
    const char* key = m.starts_with("server.tls.cert") ? "server.tls.cert"
                      : m.starts_with("server.tls.key") ? "server.tls.key"
                                                        : "server.addr";
    return model::fail(ok.error().code, cfg.explain(key, m));
  }
  spdlog::info("http: listening on {}:{}", cfg.server.host, p->http->port());
  {
    // Where a person goes next: the API, the page, the metrics (IPv6 hosts in brackets).
    const auto& host = cfg.server.host;
    const std::string shown = host == "0.0.0.0" || host == "::" ? "127.0.0.1"
                              : host.find(':') != std::string::npos ? "[" + host + "]"
                                                                    : host;
    const std::string base =
        fmt::format("{}://{}:{}", cfg.server.tls_cert_file.empty() ? "http" : "https", shown, p->http->port());
    spdlog::info("http: API {}/ (described at {}/openapi.yaml), page {}/ui/live, metrics {}/metrics", base, base,
                 base, base);
  }
  if (cfg.server.auth.enabled) {
    spdlog::info("auth: enabled ({} bearer tokens)", auth::to_string(cfg.server.auth.alg));
  } else {
    const auto& host = cfg.server.host;
    const bool loopback = host == "localhost" || host == "::1" || host.starts_with("127.");
    if (!loopback)
      spdlog::warn("auth: DISABLED while listening on {}: ANYONE who can reach this address can read, write and "
                   "lock everything. Set auth.enabled: true (see README, Security) before exposing Engram.",
                   host);
  }
  auto* raw = p.get();
  p->recovery = std::thread([raw] {
    model::name_this_thread("recovery");
    raw->recover();
  });
  return std::unique_ptr<app>(new app(std::move(p)));
}

uint16_t app::port() const { return impl_->http->port(); }

model::status app::wait_ready(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mu);
  if (!impl_->cv.wait_for(lock, timeout, [&] { return impl_->recovered; }))
    return model::fail(model::errc::unavailable, "recovery did not finish in time");
  if (impl_->recovery_error) return std::unexpected(*impl_->recovery_error);
  return {};
}

int app::run_until_signal() {
  // Block the signals in this thread (and threads started later) and wait for them
  // synchronously; the I/O threads started earlier have them blocked too because
  // main() blocks them before start().
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A recovery failure ends the wait too: post a signal to ourselves.
  std::thread watcher([this] {
    std::unique_lock lock(impl_->mu);
    impl_->cv.wait(lock, [&] { return impl_->recovered || impl_->stopped; });
    if (impl_->recovery_error) kill(getpid(), SIGTERM);
  });
  int sig = 0;
  sigwait(&set, &sig);
  const bool failed = [&] {
    std::lock_guard lock(impl_->mu);
    return impl_->recovery_error.has_value();
  }();
  if (!failed) spdlog::info("received {}, shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
  stop();
  watcher.join();
  return failed ? 1 : 0;
}

void app::stop() {
  auto& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    if (s.stopped) return;
    s.stopped = true;
    s.cv.notify_all();
  }
  // Recovery must be finished before the HTTP side stops, since it posts to it.
  if (s.recovery.joinable()) s.recovery.join();
  // Before the HTTP side: a trim's completion runs on its I/O threads.
  if (s.retention) s.retention->stop();
  s.eng->attach_presence(nullptr);
  if (s.presence) s.presence->stop();
  s.http->stop(s.cfg.shutdown_timeout);
  s.eng->attach(nullptr);
  s.eng->attach_search(nullptr);
  s.eng->attach_locks(nullptr);
  s.eng->attach_tasks(nullptr);
  s.eng->drain_reads();  // reads in flight finish before the store closes
  s.locks->stop();
  // The indexer commits what it has; the rest is caught up from the logs at start.
  if (s.index) s.index->close();
  // Queued writes still commit; their completions are dropped with the I/O threads.
  if (s.store) {
    s.store->close();
    s.store.reset();
  }
  s.index.reset();
  gateway::flush_access_log();
  spdlog::info("stopped");
}

namespace {

// %* : the message as a JSON string literal (quotes included).
class json_message_flag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    thread_local std::string out;  // keeps its capacity from line to line
    out.clear();
    model::append_json_string(out, std::string_view(msg.payload.data(), msg.payload.size()));
    dest.append(out.data(), out.data() + out.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<json_message_flag>(); }
};

// %+ : the fields of the thread's log scopes (model::log_scope): `,"k":v` in JSON,
// ` k=v` in text (values with spaces or quotes are quoted).
class fields_flag final : public spdlog::custom_flag_formatter {
 public:
  explicit fields_flag(bool json) : json_(json) {}
  void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
    thread_local std::string out;  // keeps its capacity from line to line
    out.clear();
    model::log_scope::for_each([&](const model::log_field& f) {
      if (json_) {
        out.append(",\"").append(f.key).append("\":");
        if (f.quoted || f.value.empty()) model::append_json_string(out, f.value);
        else out.append(f.value);
      } else {
        out.append(" ").append(f.key).append("=");
        if (f.value.empty() || f.value.find_first_of(" \"=") != std::string_view::npos) model::append_json_string(out, f.value);
        else out.append(f.value);
      }
    });
    dest.append(out.data(), out.data() + out.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<fields_flag>(json_); }

 private:
  bool json_;
};

}  // namespace

std::unique_ptr<spdlog::formatter> log_formatter(std::string_view format) {
  const bool json = format == "json";
  auto formatter = std::make_unique<spdlog::pattern_formatter>(json ? spdlog::pattern_time_type::utc
                                                                     : spdlog::pattern_time_type::local);
  formatter->add_flag<json_message_flag>('*').add_flag<fields_flag>('+', json);
  formatter->set_pattern(json ? R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","msg":%*%+})"
                              : "%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ %v%+");
  return formatter;
}

void setup_logging(const config::log_options& opts) {
  auto make = [&](const char* name, std::size_t buffer) {
    auto logger = std::make_shared<spdlog::logger>(name, std::make_shared<fd_sink>(STDERR_FILENO, buffer));
    logger->set_formatter(log_formatter(opts.format));
    logger->set_level(spdlog::level::from_str(opts.level));
    return logger;
  };
  spdlog::set_default_logger(make("engram", 0));
  auto access = make("access", opts.access_buffer_bytes);
  spdlog::register_logger(access);  // flushed by flush_every with the rest
  gateway::set_access_logger(std::move(access));
  if (opts.access_buffer_bytes > 0) spdlog::flush_every(std::chrono::seconds(1));
}

}  // namespace engram::app
