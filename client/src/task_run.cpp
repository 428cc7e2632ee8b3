#include <condition_variable>

#include "client_impl.hpp"
#include "engram/client.hpp"

namespace engram::client {

task_run::task_run(client& c, task_claim claim) : client_(c), claim_(std::move(claim)) {
  // What the server granted (its default when none was asked, clamped to its
  // maximum), read off the lease: heartbeats must come within it.
  ttl_ = std::chrono::duration_cast<std::chrono::milliseconds>(claim_.lease.expires_at - claim_.lease.acquired_at);
  ttl_ = std::max(ttl_, std::chrono::milliseconds(30));
  beater_ = std::jthread([this](std::stop_token stop) { beat_loop(stop); });
}

task_run::~task_run() { stop(); }

void task_run::progress(std::string json_object) {
  std::lock_guard lock(mu_);
  progress_ = std::move(json_object);
}

void task_run::stop() {
  beater_.request_stop();
  if (beater_.joinable()) beater_.join();
}

// Like lease::renew_loop, with the heartbeat as the renewal: a refusal (the claim
// is gone) or no success before the claim would have run out ends it as lost.
void task_run::beat_loop(std::stop_token stop) {
  using steady = std::chrono::steady_clock;
  const auto interval = ttl_ / 3;
  client beater = renewal_client(client_, interval, claim_.lease.holder_agent);
  auto valid_until = steady::now() + ttl_ - interval / 4;
  std::mutex mu;
  std::condition_variable_any cv;
  auto next = steady::now() + interval;
  while (true) {
    {
      std::unique_lock lock(mu);
      cv.wait_until(lock, stop, next, [] { return false; });
      if (stop.stop_requested()) return;
    }
    std::optional<std::string> progress;
    {
      std::lock_guard lock(mu_);
      progress = std::exchange(progress_, std::nullopt);
    }
    const auto sent = steady::now();
    auto r = beater.heartbeat({}, {}, progress.value_or(""), claim_.claimed.task_id);
    if (r && !r->empty() && r->front().renewed) {
      valid_until = sent + ttl_;
      next = sent + interval;
      continue;
    }
    if (progress) {  // send it again next time
      std::lock_guard lock(mu_);
      if (!progress_) progress_ = std::move(progress);
    }
    if (r || (r.error().is_server() && r.error().status != 503)) break;  // refused: the claim is gone
    if (steady::now() >= valid_until) break;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(valid_until - steady::now());
    next = steady::now() + std::min(interval / 4 + std::chrono::milliseconds(1), left);
  }
  lost_.request_stop();
}

}  // namespace engram::client
