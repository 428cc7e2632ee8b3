#pragma once
// client::impl: what a client, its subscriptions and its leases share. Private.

#include <boost/asio/thread_pool.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engram/client.hpp"
#include "engram/http_connection.hpp"

namespace engram::client {

// How a request may be repeated after a transient failure.
enum class retry_mode {
  safe,    // repeating it cannot change the outcome (GET, keyed appends): always
  unsent,  // only when it certainly never reached the server, or on a 503
  none,    // never (probes such as /readyz, where a 503 is an answer)
};

struct client::impl {
  client_options opts;
  std::string host;
  uint16_t port = 80;
  std::string prefix;  // path prefix of every route, without a trailing '/'
  header_list headers;  // sent on every request (X-Agent-ID, options.headers)

  std::mutex pool_mu;
  std::vector<std::unique_ptr<http_connection>> idle;  // keep-alive connections

  std::mutex async_mu;
  std::optional<boost::asio::thread_pool> workers;  // started on the first post_blocking

  ~impl();

  // One request with retries per `mode`; a non-2xx answer is a server error.
  result<http_result> send(std::string_view method, const std::string& route, std::string_view body,
                           retry_mode mode, const header_list& extra = {},
                           std::chrono::milliseconds timeout = {});
};

// A client for renewals (leases, task heartbeats) whose retries are bounded by the
// renewal interval, so a partition is noticed while the lease can still be valid,
// not 30 s later; acting as `agent` when given.
client renewal_client(const client& c, std::chrono::milliseconds interval, const std::string& agent = {});

// What one renewal (of a lease, or a task claim by heartbeat) came to.
enum class renewal {
  renewed,
  refused,  // the server says the hold is gone (expired, released or taken)
  failed,   // transient: unreachable, timed out, 503
};
// The outcome of a failed request: refused when the server answered (but a 503),
// else failed.
renewal failed_renewal(const error& e);
// Calls `renew` every ttl/3 until `stop` is requested (returns false), or until the
// hold is lost (returns true): a renewal refused, or none succeeding before the
// ttl since the last success ran out (retried at a quarter interval meanwhile).
bool keep_renewed(std::stop_token stop, std::chrono::milliseconds ttl, const std::function<renewal()>& renew);

// Percent-encodes everything but RFC 3986 unreserved characters (for one path
// segment or query value; '/' in ids is encoded and the server decodes it once).
std::string encode_component(std::string_view s);

// The wait before attempt `attempt` (0-based retry count), with jitter.
std::chrono::milliseconds backoff_delay(const retry_policy& p, int attempt);

}  // namespace engram::client
