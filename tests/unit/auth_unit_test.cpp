// Token verification, grants, rate limiting and stream caps, without a server.
// RS256/ES256 tokens are also signed here directly with OpenSSL (not libjwt), so
// the verifier is checked against an independent implementation of JWS.
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>

#include "auth/auth.hpp"
#include "gateway/access.hpp"
#include "model/text.hpp"

namespace engram::test {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr int64_t now = 1'800'000'000;
const std::string secret = "0123456789abcdef0123456789abcdef-test-secret";

// A key pair generated for the test, as PEM.
struct key_pair {
  std::string private_pem, public_pem;
};

key_pair generate(const char* type, const char* param) {
  EVP_PKEY* raw = std::string(type) == "RSA" ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t(2048))
                                             : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", param);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(raw, EVP_PKEY_free);
  EXPECT_TRUE(key);
  auto to_pem = [&](bool priv) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    if (priv) PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
    else PEM_write_bio_PUBKEY(bio.get(), key.get());
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, size_t(n));
  };
  return {to_pem(true), to_pem(false)};
}

std::string b64url(std::string_view s) { return model::base64url_encode(s); }

// A JWS signed with OpenSSL directly: RS256 (PKCS#1 v1.5) or ES256 (raw r||s).
std::string openssl_sign(const std::string& alg, const json& claims, const std::string& private_pem) {
  const std::string input = b64url(json{{"alg", alg}, {"typ", "JWT"}}.dump()) + "." + b64url(claims.dump());
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(private_pem.data(), int(private_pem.size())), BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr),
                                                          EVP_PKEY_free);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EXPECT_EQ(EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()), 1);
  size_t len = 0;
  EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size());
  std::string sig(len, '\0');
  EXPECT_EQ(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                           reinterpret_cast<const unsigned char*>(input.data()), input.size()),
            1);
  sig.resize(len);
  if (alg == "ES256") {  // DER ECDSA-Sig-Value → the fixed 64-byte JWS form
    const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
    std::unique_ptr<ECDSA_SIG, decltype(&ECDSA_SIG_free)> der(d2i_ECDSA_SIG(nullptr, &p, long(sig.size())),
                                                             ECDSA_SIG_free);
    std::string raw(64, '\0');
    BN_bn2binpad(ECDSA_SIG_get0_r(der.get()), reinterpret_cast<unsigned char*>(raw.data()), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(der.get()), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
    sig = raw;
  }
  return input + "." + b64url(sig);
}

// HS256 over arbitrary claims with OpenSSL's HMAC (independent of libjwt).
std::string hmac_sign(const json& claims) {
  const std::string input = b64url(json{{"alg", "HS256"}, {"typ", "JWT"}}.dump()) + "." + b64url(claims.dump());
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), int(secret.size()), reinterpret_cast<const unsigned char*>(input.data()),
       input.size(), mac, &len);
  return input + "." + b64url(std::string(reinterpret_cast<char*>(mac), len));
}

auth::verifier make_verifier(auth::options o) {
  auto v = auth::verifier::create(o);
  EXPECT_TRUE(v) << (v ? "" : v.error().message);
  return *v;
}

auth::options hs_options() {
  auth::options o;
  o.enabled = true;
  o.secret = secret;
  return o;
}

std::string hs_token(const std::string& agent, std::vector<auth::grant> grants, std::chrono::seconds ttl = 1h,
                     int64_t issued = now, std::string_view key = secret) {
  auth::token_request req{agent, std::move(grants), ttl, issued};
  auto t = auth::issue(req, auth::algorithm::hs256, key);
  EXPECT_TRUE(t) << (t ? "" : t.error().message);
  return t.value_or("");
}

// A token with a chosen header and payload and a junk or empty signature.
std::string forged(const json& header, const json& claims, std::string_view signature = "") {
  return b64url(header.dump()) + "." + b64url(claims.dump()) + "." + std::string(signature);
}

json claims_for(const std::string& agent) {
  return json{{"sub", agent}, {"exp", now + 3600}, {"contexts", json::array({"*"})}};
}

TEST(AuthTest, ValidHs256TokenNamesTheAgentAndItsGrants) {
  auto v = make_verifier(hs_options());
  auto p = v.verify(hs_token("agent-1", {{"p/*", auth::read | auth::write}, {"q", auth::lock}}), now);
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->agent, "agent-1");
  EXPECT_TRUE(p->can(auth::read, "p/x"));
  EXPECT_TRUE(p->can(auth::write, "p/x/y"));
  EXPECT_FALSE(p->can(auth::lock, "p/x"));
  EXPECT_FALSE(p->can(auth::read, "q"));
  EXPECT_TRUE(p->can(auth::lock, "q"));
  EXPECT_FALSE(p->can(auth::lock, "q2"));
  EXPECT_FALSE(p->can(auth::read, "px"));
  ASSERT_TRUE(p->scope(auth::read));
  EXPECT_EQ(*p->scope(auth::read), std::vector<std::string>{"p/*"});
}

TEST(AuthTest, ExpiryAndNotBeforeAreCheckedWithLeeway) {
  auto o = hs_options();
  o.leeway = 30s;
  auto v = make_verifier(o);
  const auto token = hs_token("a", {{"*", auth::all_capabilities}}, 100s, now);  // nbf = now, exp = now+100
  EXPECT_TRUE(v.verify(token, now + 100));
  EXPECT_TRUE(v.verify(token, now + 130)) << "within leeway";
  auto expired = v.verify(token, now + 131);
  ASSERT_FALSE(expired);
  EXPECT_EQ(expired.error().code, model::errc::unauthenticated);
  EXPECT_NE(expired.error().message.find("expired"), std::string::npos);
  EXPECT_TRUE(v.verify(token, now - 30)) << "within leeway";
  auto early = v.verify(token, now - 31);
  ASSERT_FALSE(early);
  EXPECT_NE(early.error().message.find("not valid yet"), std::string::npos);
}

TEST(AuthTest, WrongSignatureAndTamperedClaimsAreRefused) {
  auto v = make_verifier(hs_options());
  auto other = v.verify(hs_token("a", {{"*", auth::read}}, 1h, now, "another-secret-another-secret-another"), now);
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code, model::errc::unauthenticated);
  // Widen the grants of a valid token without re-signing it.
  auto token = hs_token("a", {{"mine", auth::read}});
  const auto d1 = token.find('.'), d2 = token.rfind('.');
  auto claims = json::parse(*model::base64url_decode(token.substr(d1 + 1, d2 - d1 - 1)));
  claims["contexts"] = json::array({"*"});
  const auto tampered = token.substr(0, d1) + "." + b64url(claims.dump()) + token.substr(d2);
  EXPECT_FALSE(v.verify(tampered, now));
  EXPECT_TRUE(v.verify(token, now));
  EXPECT_FALSE(v.verify("not-a-jwt", now));
  EXPECT_FALSE(v.verify("", now));
  EXPECT_FALSE(v.verify(std::string(10000, 'a'), now));
}

TEST(AuthTest, AlgorithmNoneIsRefused) {
  auto v = make_verifier(hs_options());
  for (const char* alg : {"none", "None", "NONE"}) {
    auto r = v.verify(forged({{"alg", alg}, {"typ", "JWT"}}, claims_for("a")), now);
    ASSERT_FALSE(r) << alg;
    EXPECT_NE(r.error().message.find("HS256"), std::string::npos);
  }
  EXPECT_FALSE(v.verify(forged({{"typ", "JWT"}}, claims_for("a")), now)) << "no alg at all";
}

TEST(AuthTest, HsRsConfusionIsRefused) {
  // The classic attack: the server verifies RS256 with a public key; the attacker
  // signs HS256 using that public key's PEM text as the HMAC secret.
  const auto keys = generate("RSA", nullptr);
  auth::options o;
  o.enabled = true;
  o.alg = auth::algorithm::rs256;
  o.public_key_pem = keys.public_pem;
  auto v = make_verifier(o);
  auth::token_request req{"attacker", {{"*", auth::all_capabilities}}, 1h, now};
  auto confused = auth::issue(req, auth::algorithm::hs256, keys.public_pem);
  ASSERT_TRUE(confused);
  auto r = v.verify(*confused, now);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("RS256"), std::string::npos);
  // And an RS256 token is refused by an HS256 server.
  auto rs = auth::issue(req, auth::algorithm::rs256, keys.private_pem);
  ASSERT_TRUE(rs) << rs.error().message;
  EXPECT_TRUE(v.verify(*rs, now));
  EXPECT_FALSE(make_verifier(hs_options()).verify(*rs, now));
}

TEST(AuthTest, Rs256AndEs256TokensSignedByOpenSslVerify) {
  const auto rsa = generate("RSA", nullptr);
  const auto ec = generate("EC", "P-256");
  auth::options o;
  o.enabled = true;
  o.alg = auth::algorithm::rs256;
  o.public_key_pem = rsa.public_pem;
  auto rs = make_verifier(o);
  auto p = rs.verify(openssl_sign("RS256", claims_for("rsa-agent"), rsa.private_pem), now);
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->agent, "rsa-agent");

  o.alg = auth::algorithm::es256;
  o.public_key_pem = ec.public_pem;
  auto es = make_verifier(o);
  p = es.verify(openssl_sign("ES256", claims_for("ec-agent"), ec.private_pem), now);
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->agent, "ec-agent");
  // libjwt-issued ES256 tokens verify too; a token signed by another EC key does not.
  auth::token_request req{"ec-agent", {{"*", auth::read}}, 1h, now};
  auto issued = auth::issue(req, auth::algorithm::es256, ec.private_pem);
  ASSERT_TRUE(issued) << issued.error().message;
  EXPECT_TRUE(es.verify(*issued, now));
  const auto stranger = generate("EC", "P-256");
  EXPECT_FALSE(es.verify(openssl_sign("ES256", claims_for("x"), stranger.private_pem), now));
  // An RS256 token presented to the ES256 server: wrong algorithm.
  EXPECT_FALSE(es.verify(openssl_sign("RS256", claims_for("x"), rsa.private_pem), now));
}

TEST(AuthTest, KeysMustMatchTheAlgorithm) {
  auth::options o;
  o.enabled = true;
  o.secret = "short";
  EXPECT_FALSE(auth::verifier::create(o));
  o.alg = auth::algorithm::es256;
  o.public_key_pem = generate("RSA", nullptr).public_pem;
  EXPECT_FALSE(auth::verifier::create(o));
  o.alg = auth::algorithm::rs256;
  o.public_key_pem = generate("EC", "P-256").public_pem;
  EXPECT_FALSE(auth::verifier::create(o));
  o.public_key_pem = "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n";
  EXPECT_FALSE(auth::verifier::create(o));
}

TEST(AuthTest, ClaimsAreValidated) {
  auto v = make_verifier(hs_options());
  EXPECT_TRUE(v.verify(hmac_sign(claims_for("a")), now)) << "the helper signs correctly";
  auto no_sub = claims_for("a");
  no_sub.erase("sub");
  EXPECT_FALSE(v.verify(hmac_sign(no_sub), now));
  auto no_exp = claims_for("a");
  no_exp.erase("exp");
  auto r = v.verify(hmac_sign(no_exp), now);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("exp"), std::string::npos);
  auto bad_exp = claims_for("a");
  bad_exp["exp"] = "tomorrow";
  EXPECT_FALSE(v.verify(hmac_sign(bad_exp), now));
  auto bad_grants = claims_for("a");
  bad_grants["contexts"] = json{{"p", {"superuser"}}};
  EXPECT_FALSE(v.verify(hmac_sign(bad_grants), now));
  auto control_sub = claims_for("a\nb");
  EXPECT_FALSE(v.verify(hmac_sign(control_sub), now));
  auto no_grants = claims_for("a");
  no_grants.erase("contexts");
  auto bare = v.verify(hmac_sign(no_grants), now);
  ASSERT_TRUE(bare) << "a token without grants authenticates but may touch nothing";
  EXPECT_FALSE(bare->can(auth::read, "anything"));
  auth::options o = hs_options();
  o.issuer = "engram-test";
  o.audience = "engram";
  auto strict = make_verifier(o);
  auth::token_request req{"a", {{"*", auth::read}}, 1h, now};
  auto plain = auth::issue(req, auth::algorithm::hs256, secret);
  EXPECT_FALSE(strict.verify(*plain, now)) << "no iss/aud";
  req.issuer = "engram-test";
  req.audience = "engram";
  auto good = auth::issue(req, auth::algorithm::hs256, secret);
  EXPECT_TRUE(strict.verify(*good, now));
  req.issuer = "someone-else";
  EXPECT_FALSE(strict.verify(*auth::issue(req, auth::algorithm::hs256, secret), now));
}

TEST(AuthTest, GrantsClaimForms) {
  auto g = auth::parse_grants(json::array({"p/*", "exact"}));
  ASSERT_TRUE(g);
  EXPECT_EQ(g->size(), 2u);
  EXPECT_EQ((*g)[0].caps, auth::all_capabilities);
  g = auth::parse_grants(json{{"p/*", {"read"}}, {"q", {"read", "lock"}}});
  ASSERT_TRUE(g);
  auth::principal p{"a", *g};
  EXPECT_TRUE(p.can(auth::read, "p/1"));
  EXPECT_FALSE(p.can(auth::write, "p/1"));
  EXPECT_TRUE(p.can(auth::lock, "q"));
  EXPECT_FALSE(auth::parse_grants(json{{"p", {"superuser"}}}));  // "admin" and "delete" exist (named only)
  EXPECT_FALSE(auth::parse_grants(json::array({"a*b"})));
  EXPECT_FALSE(auth::parse_grants(json::array({""})));
  EXPECT_FALSE(auth::parse_grants(json::array({1})));
  EXPECT_FALSE(auth::parse_grants("p/*"));
  // Round trip through the claim the issuer writes.
  auto back = auth::parse_grants(auth::grants_json(*g));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->size(), g->size());
  auth::principal everything{"a", {{"*", auth::read}}};
  EXPECT_FALSE(everything.scope(auth::read)) << "'*' means unrestricted";
  EXPECT_TRUE(everything.scope(auth::write)->empty()) << "no write grant: nothing";
}

TEST(RateLimiterTest, BurstThenRefillOnAFakeClock) {
  gateway::rate_limiter limiter({2, 3}, "writes");  // 2/s, burst 3
  const auto t0 = gateway::rate_limiter::clock::time_point{} + 1h;
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(limiter.take("k", t0)) << i;
  auto wait = limiter.take("k", t0);
  ASSERT_TRUE(wait);
  EXPECT_EQ(wait->count(), 500);
  EXPECT_FALSE(limiter.take("other", t0)) << "keys are independent";
  EXPECT_TRUE(limiter.take("k", t0 + 499ms));
  EXPECT_FALSE(limiter.take("k", t0 + 1000ms));  // refilled one token (and a bit)
  EXPECT_FALSE(limiter.take("k", t0 + 10s));
  EXPECT_FALSE(limiter.take("k", t0 + 10s));
  EXPECT_FALSE(limiter.take("k", t0 + 10s));
  EXPECT_TRUE(limiter.take("k", t0 + 10s)) << "capped at the burst";
  gateway::rate_limiter off({0, 0}, "writes");
  for (int i = 0; i < 1000; ++i) ASSERT_FALSE(off.take("k", t0));
}

TEST(RateLimiterTest, ManyIdleKeysAreDropped) {
  gateway::rate_limiter limiter({100, 1}, "writes");
  const auto t0 = gateway::rate_limiter::clock::time_point{} + 1h;
  for (int i = 0; i < 200'000; ++i) limiter.take("ip:" + std::to_string(i), t0 + std::chrono::milliseconds(i));
  // Nothing to observe but memory; this must finish quickly and keep working.
  EXPECT_FALSE(limiter.take("fresh", t0 + 300s));
}

TEST(StreamSlotsTest, CapsInTotalAndPerKey) {
  gateway::stream_slots slots(3, 2);
  auto a1 = slots.acquire("a");
  auto a2 = slots.acquire("a");
  ASSERT_TRUE(a1 && a2);
  auto a3 = slots.acquire("a");
  ASSERT_FALSE(a3);
  EXPECT_EQ(a3.error().code, model::errc::rate_limited);
  auto b1 = slots.acquire("b");
  ASSERT_TRUE(b1);
  EXPECT_FALSE(slots.acquire("c")) << "total cap";
  { auto drop = std::move(*a1); }
  EXPECT_TRUE(slots.acquire("c")) << "a released slot is reusable";
}

}  // namespace
}  // namespace engram::test
