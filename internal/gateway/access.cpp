#include "gateway/access.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <nlohmann/json.hpp>

#include "model/clock.hpp"
#include "model/codec.hpp"

namespace engram::gateway {
namespace {

using model::errc;

bool iequals_prefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// RFC 6265 §5.4 Cookie header: "a=b; c=d".
std::string_view cookie_value(std::string_view header, std::string_view name) {
  while (!header.empty()) {
    const auto end = std::min(header.find(';'), header.size());
    const auto pair = trim(header.substr(0, end));
    if (const auto eq = pair.find('='); eq != std::string_view::npos && trim(pair.substr(0, eq)) == name)
      return trim(pair.substr(eq + 1));
    header.remove_prefix(std::min(end + 1, header.size()));
  }
  return {};
}

}  // namespace

model::result<authenticator> authenticator::create(const auth::options& opts,
                                                  std::shared_ptr<const model::clock> clock) {
  authenticator a;
  a.opts_ = opts;
  a.clock_ = clock ? std::move(clock) : model::default_clock();
  if (opts.enabled) {
    auto v = auth::verifier::create(opts);
    if (!v) return std::unexpected(v.error());
    a.verifier_ = std::move(*v);
  }
  return a;
}

model::result<caller> authenticator::authenticate(const request& req, bool cookie_ok) const {
  caller c;
  c.ip = req.remote_ip;
  if (!verifier_) return c;
  std::string_view token;
  if (const auto h = req.header("authorization"); !h.empty()) {
    if (!iequals_prefix(h, "bearer "))
      return model::fail(errc::unauthenticated, "the Authorization header must be 'Bearer <token>'");
    token = trim(h.substr(7));
  } else if (cookie_ok) {
    token = cookie_value(req.header("cookie"), opts_.cookie_name);
  }
  auto p = verifier_->verify(token, clock_->now_s());
  if (!p) return std::unexpected(p.error());
  c.principal = std::move(*p);
  return c;
}

std::string request_id_for(std::string_view incoming) {
  const bool sane = !incoming.empty() && incoming.size() <= 128 &&
                    std::all_of(incoming.begin(), incoming.end(), [](char c) {
                      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '-';
                    });
  if (sane) return std::string(incoming);
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string id(16, '0');
  uint64_t bits = rng();
  for (auto& c : id) {
    c = hex[bits & 15];
    bits >>= 4;
  }
  return id;
}

std::optional<std::chrono::milliseconds> rate_limiter::take(const std::string& key, clock::time_point now) {
  if (unlimited()) return std::nullopt;
  const double burst = limit_.burst > 0 ? limit_.burst : std::max(1.0, limit_.per_second);
  auto& s = shards_[std::hash<std::string>{}(key) % shards_.size()];
  std::lock_guard lock(s.mu);
  auto refill = [&](bucket& b) {
    const double elapsed = std::chrono::duration<double>(now - b.last).count();
    if (elapsed > 0) {
      b.tokens = std::min(burst, b.tokens + elapsed * limit_.per_second);
      b.last = now;
    }
  };
  if (s.buckets.size() >= 4096) {
    for (auto it = s.buckets.begin(); it != s.buckets.end();) {
      refill(it->second);
      it = it->second.tokens >= burst ? s.buckets.erase(it) : std::next(it);
    }
  }
  auto [it, fresh] = s.buckets.try_emplace(key, bucket{burst, now});
  auto& b = it->second;
  if (!fresh) refill(b);
  if (b.tokens >= 1) {
    b.tokens -= 1;
    return std::nullopt;
  }
  const double wait_s = (1 - b.tokens) / limit_.per_second;
  return std::chrono::milliseconds(int64_t(std::ceil(wait_s * 1000)));
}

model::result<stream_slots::slot> stream_slots::acquire(const std::string& key) {
  std::lock_guard lock(mu_);
  if (total_ >= max_total_)
    return model::fail(errc::rate_limited, "the server has " + std::to_string(max_total_) +
                                               " open streams, its limit; retry shortly");
  auto& mine = per_key_[key];
  if (max_per_key_ && mine >= max_per_key_) {
    if (mine == 0) per_key_.erase(key);
    return model::fail(errc::rate_limited, "you have " + std::to_string(max_per_key_) +
                                               " open streams, the limit per agent; close one first");
  }
  ++mine;
  ++total_;
  return slot(this, key);
}

void stream_slots::slot::release() {
  if (!owner_) return;
  std::lock_guard lock(owner_->mu_);
  --owner_->total_;
  if (auto it = owner_->per_key_.find(key_); it != owner_->per_key_.end() && --it->second == 0)
    owner_->per_key_.erase(it);
  owner_ = nullptr;
}

}  // namespace engram::gateway
