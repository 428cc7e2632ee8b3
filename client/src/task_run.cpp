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

// The heartbeat is the renewal: one that does not renew the claim (it is gone) is a
// refusal. Progress not delivered is sent again with the next one.
void task_run::beat_loop(std::stop_token stop) {
  client beater = renewal_client(client_, ttl_ / 3, claim_.lease.holder_agent);
  const bool lost = keep_renewed(stop, ttl_, [&] {
    std::optional<std::string> progress;
    {
      std::lock_guard lock(mu_);
      progress = std::exchange(progress_, std::nullopt);
    }
    auto r = beater.heartbeat({}, {}, progress.value_or(""), claim_.claimed.task_id);
    if (r && !r->empty() && r->front().renewed) return renewal::renewed;
    if (progress) {
      std::lock_guard lock(mu_);
      if (!progress_) progress_ = std::move(progress);
    }
    return r ? renewal::refused : failed_renewal(r.error());
  });
  if (lost) lost_.request_stop();
}

}  // namespace engram::client
