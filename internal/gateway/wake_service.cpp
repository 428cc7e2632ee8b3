#include "gateway/wake_service.hpp"

#include <boost/asio/post.hpp>

namespace engram::gateway {

void wake_service::wake(std::weak_ptr<wakeable> w) {
  {
    std::lock_guard lock(mu_);
    pending_.push_back(std::move(w));
    if (posted_) return;
    posted_ = true;
  }
  boost::asio::post(ioc_, [this] { run(); });
}

void wake_service::run() {
  std::vector<std::weak_ptr<wakeable>> round;
  {
    std::lock_guard lock(mu_);
    round.swap(pending_);
    posted_ = false;  // a wake from here on posts the next round
  }
  for (const auto& w : round)
    if (auto s = w.lock()) s->wake();
}

void wake_service::shutdown() {
  std::lock_guard lock(mu_);
  pending_.clear();
  posted_ = true;  // the io_context runs nothing more: later wakes are dropped
}

}  // namespace engram::gateway
