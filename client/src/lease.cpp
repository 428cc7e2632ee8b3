#include <condition_variable>
#include <mutex>

#include "client_impl.hpp"
#include "engram/client.hpp"

namespace engram::client {

client renewal_client(const client& c, std::chrono::milliseconds interval, const std::string& agent) {
  client_options opts = c.options();
  if (!agent.empty()) opts.agent_id = agent;
  opts.retry.max_elapsed = interval;
  opts.retry.max_backoff = std::min(opts.retry.max_backoff, interval / 2 + std::chrono::milliseconds(1));
  opts.timeout = std::min(opts.timeout, interval + std::chrono::milliseconds(1));
  opts.max_idle_connections = 1;
  return std::move(*client::create(std::move(opts)));  // the URL already parsed once
}

lease::lease(client& c, lock granted, std::chrono::milliseconds ttl)
    : client_(c), granted_(std::move(granted)), ttl_(ttl) {
  if (ttl_.count() <= 0)  // the server's default TTL: read it off the grant
    ttl_ = std::chrono::duration_cast<std::chrono::milliseconds>(granted_.expires_at - granted_.acquired_at);
  ttl_ = std::max(ttl_, std::chrono::milliseconds(30));
  renewer_ = std::jthread([this](std::stop_token stop) { renew_loop(stop); });
}

lease::~lease() { release(); }

bool lease::lost() const { return lost_.stop_requested(); }

renewal failed_renewal(const error& e) {
  return e.is_server() && e.status != 503 ? renewal::refused : renewal::failed;
}

bool keep_renewed(std::stop_token stop, std::chrono::milliseconds ttl, const std::function<renewal()>& renew) {
  using steady = std::chrono::steady_clock;
  const auto interval = ttl / 3;
  // Until when the hold is surely ours, by our clock: a grant or renewal sent at t
  // lasts at least until t + ttl on the server.
  auto valid_until = steady::now() + ttl - interval / 4;
  std::mutex mu;
  std::condition_variable_any cv;
  auto next = steady::now() + interval;
  while (true) {
    {
      std::unique_lock lock(mu);
      cv.wait_until(lock, stop, next, [] { return false; });  // sleeps until `next` or stop
      if (stop.stop_requested()) return false;
    }
    const auto sent = steady::now();
    const auto outcome = renew();
    if (outcome == renewal::renewed) {
      valid_until = sent + ttl;
      next = sent + interval;
      continue;
    }
    if (outcome == renewal::refused) return true;   // gone for good
    if (steady::now() >= valid_until) return true;  // unreachable for too long
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(valid_until - steady::now());
    next = steady::now() + std::min(interval / 4 + std::chrono::milliseconds(1), left);
  }
}

void lease::renew_loop(std::stop_token stop) {
  client renewer = renewal_client(client_, ttl_ / 3);
  const bool lost = keep_renewed(stop, ttl_, [&] {
    auto r = renewer.renew(granted_, ttl_);
    return r ? renewal::renewed : failed_renewal(r.error());
  });
  if (lost) lost_.request_stop();
}

std::optional<error> lease::release() {
  if (released_.exchange(true)) return std::nullopt;
  renewer_.request_stop();
  if (renewer_.joinable()) renewer_.join();
  if (lost()) return std::nullopt;  // nothing left to release
  auto r = client_.release(granted_);
  if (!r) return r.error();
  return std::nullopt;
}

}  // namespace engram::client
