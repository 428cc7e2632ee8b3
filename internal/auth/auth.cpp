#include "auth/auth.hpp"

#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "model/codec.hpp"
#include "model/text.hpp"

namespace engram::auth {
namespace {

using model::errc;
using model::json;

constexpr size_t max_token_bytes = 8 * 1024;
constexpr size_t max_cached_tokens = 10'000;
constexpr size_t min_secret_bytes = 32;  // RFC 7518 §3.2: a key at least the hash size

jwt_alg_t to_jwt(algorithm alg) {
  switch (alg) {
    case algorithm::hs256: return JWT_ALG_HS256;
    case algorithm::rs256: return JWT_ALG_RS256;
    case algorithm::es256: return JWT_ALG_ES256;
  }
  return JWT_ALG_INVAL;
}

std::unexpected<model::error> unauthenticated(std::string message) {
  return model::fail(errc::unauthenticated, std::move(message));
}

struct jwt_deleter {
  void operator()(jwt_t* j) const { jwt_free(j); }
};
using jwt_ptr = std::unique_ptr<jwt_t, jwt_deleter>;
struct c_string_deleter {
  void operator()(char* s) const { std::free(s); }
};
using c_string = std::unique_ptr<char, c_string_deleter>;

// The PEM key's type must match the algorithm, so a misconfiguration fails at start.
model::status check_public_key(algorithm alg, const std::string& pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), int(pem.size())), BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr, EVP_PKEY_free);
  if (!key) return model::fail(errc::invalid_argument, "auth.public_key_file is not a PEM public key");
  const int type = EVP_PKEY_base_id(key.get());
  if (alg == algorithm::rs256 && type != EVP_PKEY_RSA)
    return model::fail(errc::invalid_argument, "auth.algorithm RS256 needs an RSA public key");
  if (alg == algorithm::es256) {
    if (type != EVP_PKEY_EC || EVP_PKEY_get_bits(key.get()) != 256)
      return model::fail(errc::invalid_argument, "auth.algorithm ES256 needs a P-256 EC public key");
  }
  return {};
}

// Reads an integer date claim (NumericDate: seconds, possibly fractional).
model::result<std::optional<int64_t>> date_claim(const json& claims, const char* name) {
  auto it = claims.find(name);
  if (it == claims.end()) return std::optional<int64_t>();
  if (!it->is_number()) return unauthenticated(std::string("token claim '") + name + "' must be a number");
  return std::optional<int64_t>(int64_t(it->get<double>()));
}

}  // namespace

std::optional<algorithm> parse_algorithm(std::string_view name) {
  if (name == "HS256") return algorithm::hs256;
  if (name == "RS256") return algorithm::rs256;
  if (name == "ES256") return algorithm::es256;
  return std::nullopt;
}

std::string_view to_string(algorithm alg) {
  switch (alg) {
    case algorithm::hs256: return "HS256";
    case algorithm::rs256: return "RS256";
    case algorithm::es256: return "ES256";
  }
  return "?";
}

std::optional<capability> parse_capability(std::string_view name) {
  if (name == "read") return capability::read;
  if (name == "write") return capability::write;
  if (name == "lock") return capability::lock;
  if (name == "delete") return capability::erase;
  if (name == "admin") return capability::admin;
  return std::nullopt;
}

bool pattern_matches(std::string_view pattern, std::string_view id) {
  if (pattern == "*") return true;
  if (pattern.ends_with('*')) return id.starts_with(pattern.substr(0, pattern.size() - 1));
  return pattern == id;
}

model::result<std::vector<grant>> parse_grants(const json& claim) {
  std::vector<grant> out;
  auto check_pattern = [](const std::string& p) -> model::status {
    if (p.empty() || p.size() > model::max_id_bytes)
      return model::fail(errc::invalid_argument, "a context pattern must be 1-" +
                                                     std::to_string(model::max_id_bytes) + " bytes");
    if (p.find('*') != p.size() - 1 && p.find('*') != std::string::npos)
      return model::fail(errc::invalid_argument, "'*' may only end a context pattern: '" + p + "'");
    return {};
  };
  if (claim.is_array()) {
    for (const auto& p : claim) {
      if (!p.is_string()) return model::fail(errc::invalid_argument, "contexts must list pattern strings");
      if (auto ok = check_pattern(p.get<std::string>()); !ok) return std::unexpected(ok.error());
      out.push_back({p.get<std::string>(), all_capabilities});
    }
    return out;
  }
  if (!claim.is_object())
    return model::fail(errc::invalid_argument, "contexts must be an array of patterns or an object of pattern → capabilities");
  for (const auto& [pattern, caps] : claim.items()) {
    if (auto ok = check_pattern(pattern); !ok) return std::unexpected(ok.error());
    if (!caps.is_array()) return model::fail(errc::invalid_argument, "contexts['" + pattern + "'] must be an array");
    grant g{pattern, 0};
    for (const auto& c : caps) {
      auto cap = c.is_string() ? parse_capability(c.get<std::string>()) : std::nullopt;
      if (!cap)
        return model::fail(errc::invalid_argument,
                           "contexts['" + pattern +
                               "']: capabilities are \"read\", \"write\", \"lock\", \"delete\" and \"admin\"");
      g.caps |= *cap;
    }
    out.push_back(std::move(g));
  }
  return out;
}

json grants_json(const std::vector<grant>& grants) {
  json out = json::object();
  for (const auto& g : grants) {
    json caps = json::array();
    for (auto [c, name] : {std::pair{read, "read"}, {write, "write"}, {lock, "lock"}, {erase, "delete"}, {admin, "admin"}})
      if (g.caps & c) caps.push_back(name);
    out[g.pattern] = std::move(caps);
  }
  return out;
}

bool principal::can(capability c, std::string_view id) const {
  for (const auto& g : grants)
    if ((g.caps & c) && pattern_matches(g.pattern, id)) return true;
  return false;
}

std::optional<std::vector<std::string>> principal::scope(capability c) const {
  std::vector<std::string> out;
  for (const auto& g : grants) {
    if (!(g.caps & c)) continue;
    if (g.pattern == "*") return std::nullopt;
    out.push_back(g.pattern);
  }
  return out;
}

struct verifier::impl {
  options opts;
  std::string key;  // secret or PEM, as libjwt takes it

  mutable std::mutex mu;
  mutable std::unordered_map<std::string, principal> cache;

  model::result<principal> decode(const std::string& token) const {
    // 1. The header's alg must be the configured one; the token never chooses.
    const auto dot = token.find('.');
    if (dot == std::string::npos || token.find('.', dot + 1) == std::string::npos)
      return unauthenticated("the bearer token is not a JWT (header.payload.signature)");
    auto header_text = model::base64url_decode(std::string_view(token).substr(0, dot));
    auto header = header_text ? model::parse_json(*header_text) : std::nullopt;
    if (!header || !header->is_object()) return unauthenticated("the token's header is not base64url JSON");
    const auto alg = header->find("alg");
    const auto expected = to_string(opts.alg);
    if (alg == header->end() || !alg->is_string() || alg->get<std::string>() != expected)
      return unauthenticated("the token must be signed with " + std::string(expected));
    // 2. Signature.
    jwt_t* raw = nullptr;
    const int rc = jwt_decode(&raw, token.c_str(), reinterpret_cast<const unsigned char*>(key.data()), int(key.size()));
    jwt_ptr jwt(raw);
    if (rc != 0 || !jwt || jwt_get_alg(jwt.get()) != to_jwt(opts.alg))
      return unauthenticated("the token's signature is invalid");
    // 3. Claims.
    c_string claims_text(jwt_get_grants_json(jwt.get(), nullptr));
    auto claims = claims_text ? model::parse_json(claims_text.get()) : std::nullopt;
    if (!claims || !claims->is_object()) return unauthenticated("the token's claims are not a JSON object");
    principal p;
    const auto sub = claims->find("sub");
    if (sub == claims->end() || !sub->is_string() || sub->get_ref<const std::string&>().empty())
      return unauthenticated("the token has no 'sub' (agent id) claim");
    p.agent = sub->get<std::string>();
    if (auto bad = model::check_identifier("the token's sub", p.agent, model::max_id_bytes))
      return unauthenticated(*bad);
    auto exp = date_claim(*claims, "exp");
    if (!exp) return std::unexpected(exp.error());
    if (!*exp) return unauthenticated("the token has no 'exp' claim; issue tokens with an expiry");
    p.expires = **exp;
    auto nbf = date_claim(*claims, "nbf");
    if (!nbf) return std::unexpected(nbf.error());
    p.not_before = nbf->value_or(0);
    if (!opts.issuer.empty()) {
      auto iss = claims->find("iss");
      if (iss == claims->end() || !iss->is_string() || iss->get<std::string>() != opts.issuer)
        return unauthenticated("the token's issuer is not accepted");
    }
    if (!opts.audience.empty()) {
      auto aud = claims->find("aud");
      bool ok = false;
      if (aud != claims->end() && aud->is_string()) ok = aud->get<std::string>() == opts.audience;
      if (aud != claims->end() && aud->is_array())
        for (const auto& a : *aud) ok = ok || (a.is_string() && a.get<std::string>() == opts.audience);
      if (!ok) return unauthenticated("the token's audience is not accepted");
    }
    if (auto ctx = claims->find("contexts"); ctx != claims->end()) {
      auto grants = parse_grants(*ctx);
      if (!grants) return unauthenticated("the token's contexts claim is invalid: " + grants.error().message);
      p.grants = std::move(*grants);
    }
    return p;
  }
};

model::result<verifier> verifier::create(const options& opts) {
  verifier v;
  v.impl_ = std::make_shared<impl>();
  v.impl_->opts = opts;
  if (opts.alg == algorithm::hs256) {
    if (opts.secret.size() < min_secret_bytes)
      return model::fail(errc::invalid_argument, "auth.secret must be at least " + std::to_string(min_secret_bytes) +
                                                     " bytes for HS256 (e.g. openssl rand -base64 48)");
    v.impl_->key = opts.secret;
  } else {
    if (auto ok = check_public_key(opts.alg, opts.public_key_pem); !ok) return std::unexpected(ok.error());
    v.impl_->key = opts.public_key_pem;
  }
  return v;
}

model::result<principal> verifier::verify(std::string_view token, int64_t now) const {
  if (token.empty()) return unauthenticated("a bearer token is required (Authorization: Bearer <jwt>)");
  if (token.size() > max_token_bytes) return unauthenticated("the bearer token is too long");
  std::optional<principal> found;
  {
    std::lock_guard lock(impl_->mu);
    if (auto it = impl_->cache.find(std::string(token)); it != impl_->cache.end()) found = it->second;
  }
  if (!found) {
    auto decoded = impl_->decode(std::string(token));
    if (!decoded) return decoded;
    found = std::move(*decoded);
    std::lock_guard lock(impl_->mu);
    if (impl_->cache.size() >= max_cached_tokens) impl_->cache.clear();
    impl_->cache.emplace(std::string(token), *found);
  }
  // Time checks on every use: a cached token still expires.
  const int64_t leeway = impl_->opts.leeway.count();
  if (now > found->expires + leeway) return unauthenticated("the token has expired");
  if (found->not_before && now + leeway < found->not_before) return unauthenticated("the token is not valid yet (nbf)");
  return std::move(*found);
}

model::result<std::string> issue(const token_request& req, algorithm alg, std::string_view key) {
  if (auto bad = model::check_identifier("agent", req.agent, model::max_id_bytes))
    return model::fail(errc::invalid_argument, *bad);
  if (req.ttl.count() <= 0) return model::fail(errc::invalid_argument, "the token's ttl must be positive");
  if (alg == algorithm::hs256 && key.size() < min_secret_bytes)
    return model::fail(errc::invalid_argument, "the HS256 secret must be at least " +
                                                   std::to_string(min_secret_bytes) + " bytes");
  json claims{{"sub", req.agent},
              {"iat", req.now},
              {"nbf", req.now},
              {"exp", req.now + req.ttl.count()},
              {"contexts", grants_json(req.grants)}};
  if (!req.issuer.empty()) claims["iss"] = req.issuer;
  if (!req.audience.empty()) claims["aud"] = req.audience;
  jwt_t* raw = nullptr;
  if (jwt_new(&raw) != 0) return model::fail(errc::internal, "out of memory");
  jwt_ptr jwt(raw);
  const auto text = model::dump(claims);
  if (jwt_add_grants_json(jwt.get(), text.c_str()) != 0)
    return model::fail(errc::internal, "cannot set the token's claims");
  if (jwt_set_alg(jwt.get(), to_jwt(alg), reinterpret_cast<const unsigned char*>(key.data()), int(key.size())) != 0)
    return model::fail(errc::invalid_argument, "the signing key is not usable for " + std::string(to_string(alg)));
  c_string out(jwt_encode_str(jwt.get()));
  if (!out) return model::fail(errc::invalid_argument, "signing failed; check the key for " + std::string(to_string(alg)));
  return std::string(out.get());
}

}  // namespace engram::auth
