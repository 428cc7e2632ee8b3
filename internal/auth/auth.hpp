#pragma once
// Who is calling and what they may touch: JWT bearer tokens (authentication) and
// context-pattern grants (authorization). Token format and rules: README.md.
// Used by the gateway; thread-safe.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/error.hpp"

namespace engram::auth {

enum class algorithm { hs256, rs256, es256 };
std::optional<algorithm> parse_algorithm(std::string_view name);  // "HS256", …
std::string_view to_string(algorithm alg);

struct options {
  bool enabled = false;
  algorithm alg = algorithm::hs256;
  std::string secret;          // HS256: at least 32 bytes
  std::string public_key_pem;  // RS256 / ES256: the verifying public key
  std::chrono::seconds leeway{30};  // clock skew allowed on exp and nbf
  std::string issuer;    // when set, `iss` must equal it
  std::string audience;  // when set, `aud` must contain it
  // Cookie that may carry the token on GET /stream and /stream-sse (EventSource
  // cannot set headers). Never read from the URL.
  std::string cookie_name = "engram_token";
};

// read, write and lock are what a plain pattern list grants. erase ("delete" in a
// claim: delete a context and everything of it) and admin (backups and imports,
// granted on "*") are only ever granted by name.
enum capability : uint8_t { read = 1, write = 2, lock = 4, erase = 8, admin = 16 };
constexpr uint8_t all_capabilities = read | write | lock;
std::optional<capability> parse_capability(std::string_view name);

// "*" matches every id; "p/*" every id starting with "p/"; anything else exactly
// that id. The same pattern language as stream subscriptions and search.
bool pattern_matches(std::string_view pattern, std::string_view id);

struct grant {
  std::string pattern;
  uint8_t caps = 0;
};

// The `contexts` claim: ["p/*", …] grants read, write and lock on each pattern;
// {"p/*": ["read"], "q": ["read","write","lock"]} grants per pattern.
model::result<std::vector<grant>> parse_grants(const nlohmann::json& claim);

struct principal {
  std::string agent;  // the token's `sub`
  std::vector<grant> grants;
  int64_t not_before = 0;  // unix seconds (0: none)
  int64_t expires = 0;     // unix seconds

  // Whether `id` (a context id, or a lock's resource path for `lock`) is granted `c`.
  bool can(capability c, std::string_view id) const;
  // The patterns granting `c`, for filtering a search; nullopt when "*" grants it.
  std::optional<std::vector<std::string>> scope(capability c) const;
};

// Checks tokens with the one configured algorithm and key. Copies share a cache.
class verifier {
 public:
  // Checks the key (an HS256 secret of at least 32 bytes, or a PEM public key of
  // the algorithm's type).
  static model::result<verifier> create(const options& opts);

  // errc::unauthenticated with a message fit for the caller on any failure.
  // `now` is unix seconds from the caller's clock (this module reads none).
  model::result<principal> verify(std::string_view token, int64_t now) const;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

// Issues a token (operators: `engramctl token issue`; tests). `key` is the HS256
// secret or a PEM private key for RS256/ES256. `contexts` is the claim as above.
struct token_request {
  std::string agent;
  std::vector<grant> grants;
  std::chrono::seconds ttl{3600};
  int64_t now = 0;  // unix seconds; iat and nbf
  std::string issuer, audience;
};
model::result<std::string> issue(const token_request& req, algorithm alg, std::string_view key);

// The claim value `issue` writes for `grants` (an object, pattern → capabilities).
nlohmann::json grants_json(const std::vector<grant>& grants);

}  // namespace engram::auth
