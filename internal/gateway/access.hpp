#pragma once
// The gateway's front desk, shared by REST routes and streams: who the caller is
// (bearer token or cookie → auth::principal), what it may touch, and how fast
// (token buckets per agent, or per IP when anonymous; caps on open streams).
// Beast-free, so the handler and tests use it directly.

#include <algorithm>
#include <array>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "auth/auth.hpp"
#include "model/clock.hpp"
#include "gateway/http.hpp"
#include "gateway/options.hpp"

namespace engram::gateway {

struct caller {
  std::optional<auth::principal> principal;  // nullopt: auth is disabled
  std::string ip;

  // Everything is allowed when auth is disabled.
  bool can(auth::capability c, std::string_view id) const { return !principal || principal->can(c, id); }
  // Whether the token has expired (`now` in unix seconds); never without auth.
  bool expired(int64_t now) const { return principal && now > principal->expires; }
  // Rate-limit key: the agent when authenticated, else the client's IP.
  std::string limit_key() const { return principal ? "agent:" + principal->agent : ip_key(ip); }
  static std::string ip_key(std::string_view ip) { return "ip:" + std::string(ip); }
};

// Reads the token from `Authorization: Bearer`, or (when `cookie_ok`) from the
// configured cookie. The result has a principal iff auth is enabled.
class authenticator {
 public:
  // Fails on an unusable key. `clock` (default: the system clock) dates tokens.
  static model::result<authenticator> create(const auth::options& opts,
                                             std::shared_ptr<const model::clock> clock = nullptr);

  bool enabled() const { return verifier_.has_value(); }
  model::result<caller> authenticate(const request& req, bool cookie_ok) const;
  // Whether the caller's token has expired by now (streams end then).
  bool expired(const caller& who) const { return who.expired(clock_->now_s()); }

 private:
  auth::options opts_;
  std::shared_ptr<const model::clock> clock_;
  std::optional<auth::verifier> verifier_;
};

// The request id: the client's X-Request-Id when it is 1-128 characters of
// [A-Za-z0-9._:-], else 16 random hex digits.
std::string request_id_for(std::string_view incoming);

// A token bucket per key: `per_second` refill, `burst` capacity. Thread-safe;
// sharded so unrelated keys rarely share a mutex. Idle full buckets are dropped
// when a shard grows, so memory is bounded by the keys active within a refill.
class rate_limiter {
 public:
  using clock = std::chrono::steady_clock;
  // `what` names the limited operations in refusals ("writes").
  rate_limiter(rate_limit limit, std::string what) : limit_(limit), what_(std::move(what)) {}
  bool unlimited() const { return limit_.per_second <= 0; }
  // Takes one token: nullopt when allowed, else how long until a token is free.
  std::optional<std::chrono::milliseconds> take(const std::string& key, clock::time_point now);
  const std::string& what() const { return what_; }

 private:
  struct bucket {
    double tokens;
    clock::time_point last;
  };
  struct shard {
    std::mutex mu;
    std::unordered_map<std::string, bucket> buckets;
  };
  rate_limit limit_;
  std::string what_;
  std::array<shard, 16> shards_;
};

// A wait rounded up to whole seconds, at least 1: a Retry-After value.
inline int64_t retry_after_seconds(std::chrono::milliseconds wait) {
  return std::max<int64_t>(1, (wait.count() + 999) / 1000);
}

// Counts open streams, in total and per limit key; RAII slots release themselves.
class stream_slots {
 public:
  stream_slots(size_t max_total, size_t max_per_key) : max_total_(max_total), max_per_key_(max_per_key) {}
  class slot {
   public:
    slot() = default;
    slot(stream_slots* owner, std::string key) : owner_(owner), key_(std::move(key)) {}
    slot(slot&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), key_(std::move(o.key_)) {}
    slot& operator=(slot&& o) noexcept {
      if (this != &o) {
        release();
        owner_ = std::exchange(o.owner_, nullptr);
        key_ = std::move(o.key_);
      }
      return *this;
    }
    ~slot() { release(); }

   private:
    void release();
    stream_slots* owner_ = nullptr;
    std::string key_;
  };
  // errc::rate_limited when a cap is reached.
  model::result<slot> acquire(const std::string& key);

 private:
  std::mutex mu_;
  size_t total_ = 0;
  std::unordered_map<std::string, size_t> per_key_;
  size_t max_total_, max_per_key_;
};

}  // namespace engram::gateway
