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
  {
    std::lock_guard lock(mu_);
    running_.swap(pending_);
    posted_ = false;  // a wake from here on posts the next round
  }
  for (const auto& w : running_)
    if (auto s = w.lock()) s->wake();
  running_.clear();
}

void wake_service::shutdown() {
  std::lock_guard lock(mu_);
  pending_.clear();
}

}  // namespace engram::gateway
