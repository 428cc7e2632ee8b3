#pragma once
// Shared test helpers: temp dirs, waiting on conditions with deadlines, and booting
// the real server (app::start, the same wiring cmd/engram uses) on 127.0.0.1:0.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "app/app.hpp"
#include "config/config.hpp"
#include "engram/http_connection.hpp"
#include "storage/store.hpp"

namespace engram::test {

using json = nlohmann::json;

// A fresh directory under $TMPDIR, removed at the end of the test.
class temp_dir {
 public:
  temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "engram-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// Sanitizer builds (make asan / make tsan) are Debug builds and run vector maths
// without SIMD (search/vectors.cpp); the few CPU-bound tests shrink their data there.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool sanitized_build = true;
#else
inline constexpr bool sanitized_build = false;
#endif

// How long a test waits for something that must happen (an index to catch up, a
// server to end a stream), or sees no progress towards it, before it calls it a
// hang. Only a guard: a verdict must not depend on the machine's speed, so this is
// far beyond any healthy run on a loaded machine. Slow tests scale their work down
// in sanitizer builds rather than wait longer; their CTest TIMEOUT
// (tests/CMakeLists.txt) is above the guards they may spend, so a hang fails with
// the test's own message.
inline constexpr std::chrono::seconds hang_guard{300};

// Polls `cond` until it holds or the deadline passes (no sleeps as synchronisation).
inline bool wait_until(const std::function<bool()>& cond,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // poll interval
  }
  return cond();
}

// Polls `observe` until `done` holds for what it returns. Work that is merely slow on
// a loaded machine (merging an index at low priority, say) may take long: only
// `guard` without any change in what `observe` returns counts as a hang, and ends
// the wait with false. `last` receives the last observation, for the message.
inline bool wait_while_progressing(const std::function<json()>& observe, const std::function<bool(const json&)>& done,
                                   json* last = nullptr, std::chrono::milliseconds guard = hang_guard) {
  json seen = observe();
  auto changed = std::chrono::steady_clock::now();
  bool ok = true;
  while (!done(seen)) {
    if (std::chrono::steady_clock::now() - changed > guard) {
      ok = false;
      break;
    }
    // Slower than wait_until: polling a server must not take the CPU from the work.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    json now = observe();
    if (now != seen) {
      seen = std::move(now);
      changed = std::chrono::steady_clock::now();
    }
  }
  if (last) *last = std::move(seen);
  return ok;
}

// A real store in `dir`/db with small caches. No completion executor: completions
// run on the committer thread (or at once, on a refusal).
inline model::result<std::unique_ptr<storage::store>> open_test_store(
    const temp_dir& dir, std::shared_ptr<const model::clock> clock = nullptr) {
  storage::options o;
  o.data_dir = dir.str() + "/db";
  o.block_cache_bytes = 8 << 20;
  o.write_buffer_bytes = 8 << 20;
  return storage::store::open(o, nullptr, std::move(clock), nullptr);
}

inline config::config test_config(const std::string& data_dir) {
  config::config cfg;
  cfg.server.host = "127.0.0.1";
  cfg.server.port = 0;
  cfg.server.threads = 2;
  cfg.storage.data_dir = data_dir;
  cfg.storage.block_cache_bytes = 8 << 20;
  cfg.storage.write_buffer_bytes = 4 << 20;
  cfg.shutdown_timeout = std::chrono::seconds(5);
  return cfg;
}

// The real server in-process, listening on an ephemeral loopback port.
class test_server {
 public:
  explicit test_server(config::config cfg, std::shared_ptr<const model::clock> clock = nullptr)
      : cfg_(std::move(cfg)), clock_(std::move(clock)) {
    start();
  }
  explicit test_server(const temp_dir& dir) : test_server(test_config(dir.str() + "/data")) {}

  void start() {
    auto started = app::app::start(cfg_, clock_);
    if (!started) throw std::runtime_error("server start failed: " + started.error().message);
    app_ = std::move(*started);
    if (auto ok = app_->wait_ready(std::chrono::seconds(30)); !ok)
      throw std::runtime_error("server not ready: " + ok.error().message);
  }
  void stop() { app_.reset(); }
  void restart() {
    stop();
    start();
  }

  uint16_t port() const { return app_->port(); }
  client::http_connection connect() const { return client::http_connection("127.0.0.1", port()); }
  config::config& cfg() { return cfg_; }

 private:
  config::config cfg_;
  std::shared_ptr<const model::clock> clock_;  // null: the real one
  std::unique_ptr<app::app> app_;
};

// Request helper that fails the test on transport errors and parses JSON bodies.
struct reply {
  unsigned status = 0;
  json body;
  std::string raw;
  client::http_result http;
};

inline reply call(client::http_connection& c, std::string_view method, std::string_view target,
                  std::string_view body = {}, const client::header_list& headers = {}) {
  auto r = c.request(method, target, body, headers);
  if (!r) {
    ADD_FAILURE() << "transport error: " << r.error().message;
    return {};
  }
  reply out;
  out.status = r->status;
  out.raw = r->body;
  out.body = json::parse(r->body, nullptr, false);
  out.http = std::move(*r);
  return out;
}

// The value of an unlabelled metric from GET /metrics; -1 when absent.
// Waits until /readyz's body satisfies `done` (an index catching up, say) at the
// machine's pace (see wait_while_progressing); `last` receives the last body seen.
inline bool wait_readyz(client::http_connection& c, const std::function<bool(const json&)>& done,
                        json* last = nullptr) {
  return wait_while_progressing(
      [&] {
        auto r = call(c, "GET", "/readyz");
        return r.status == 200 ? r.body : json();
      },
      done, last);
}

// Waits until everything written so far is searchable (lag 0 on /readyz), at this
// machine's pace: only a status that stops changing is a hang.
inline void wait_indexed(client::http_connection& c) {
  json status;
  ASSERT_TRUE(wait_readyz(
      c,
      [](const json& r) {
        return r.contains("search") && r["search"].value("lag", -1) == 0 && r["search"].value("state", "") == "ready";
      },
      &status))
      << "the index stopped catching up (a hang?): " << status.dump();
}

inline double metric(client::http_connection& c, const std::string& name) {
  auto r = call(c, "GET", "/metrics");
  const auto pos = r.raw.find("\n" + name + " ");
  return pos == std::string::npos ? -1 : std::stod(r.raw.substr(pos + name.size() + 2));
}

}  // namespace engram::test
