// TLS: the real server with a self-signed certificate generated here, reached over
// HTTPS and WSS by Beast clients that verify the certificate and the host.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <fstream>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

namespace net = boost::asio;
namespace ssl = net::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

// A P-256 key and a self-signed certificate for IP 127.0.0.1, written as PEM files.
void write_self_signed(const std::string& cert_path, const std::string& key_path) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"),
                                                          EVP_PKEY_free);
  ASSERT_TRUE(key);
  std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), X509_free);
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("engram-test"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  for (const auto& [nid, value] : {std::pair{NID_subject_alt_name, "IP:127.0.0.1"},
                                   std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    ASSERT_TRUE(ext);
    X509_add_ext(cert.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  ASSERT_GT(X509_sign(cert.get(), key.get(), EVP_sha256()), 0);
  std::unique_ptr<FILE, decltype(&fclose)> c(fopen(cert_path.c_str(), "w"), fclose);
  std::unique_ptr<FILE, decltype(&fclose)> k(fopen(key_path.c_str(), "w"), fclose);
  ASSERT_TRUE(c && k);
  PEM_write_X509(c.get(), cert.get());
  PEM_write_PrivateKey(k.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cert_ = dir_.str() + "/cert.pem";
    const auto key = dir_.str() + "/key.pem";
    write_self_signed(cert_, key);
    auto cfg = test_config(dir_.str() + "/data");
    cfg.server.tls_cert_file = cert_;
    cfg.server.tls_key_file = key;
    server_ = std::make_unique<test_server>(cfg);
    client_ctx_.load_verify_file(cert_);
    client_ctx_.set_verify_mode(ssl::verify_peer);
  }

  // A TLS connection that verifies the server's certificate and its IP.
  beast::ssl_stream<beast::tcp_stream> connect() {
    beast::ssl_stream<beast::tcp_stream> s(ioc_, client_ctx_);
    s.set_verify_callback(ssl::host_name_verification("127.0.0.1"));
    beast::get_lowest_layer(s).expires_after(std::chrono::seconds(10));
    beast::get_lowest_layer(s).connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
    s.handshake(ssl::stream_base::client);
    return s;
  }

  http::response<http::string_body> request(beast::ssl_stream<beast::tcp_stream>& s, http::verb verb,
                                            const std::string& target, const std::string& body = {}) {
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (!body.empty()) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
    }
    req.prepare_payload();
    http::write(s, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(s, buf, res);
    return res;
  }

  temp_dir dir_;
  std::string cert_;
  std::unique_ptr<test_server> server_;
  net::io_context ioc_;
  ssl::context client_ctx_{ssl::context::tls_client};
};

TEST_F(TlsTest, HttpsRoundTripOnAKeptAliveConnection) {
  auto s = connect();
  auto put = request(s, http::verb::post, "/workunit", R"({"context_id":"tls","agent_id":"a","text":"secure"})");
  ASSERT_EQ(put.result_int(), 201u) << put.body();
  auto list = request(s, http::verb::get, "/workunits/tls");
  ASSERT_EQ(list.result_int(), 200u);
  auto body = json::parse(list.body());
  ASSERT_EQ(body["work_units"].size(), 1u);
  EXPECT_EQ(body["work_units"][0]["payload"], "c2VjdXJl");  // base64("secure")
  EXPECT_EQ(list["X-Content-Type-Options"], "nosniff");
}

TEST_F(TlsTest, WssStreamsUnits) {
  websocket::stream<beast::ssl_stream<beast::tcp_stream>> ws(connect());
  ws.handshake("127.0.0.1", "/stream?context=wss&since=0");
  {
    auto s = connect();
    ASSERT_EQ(request(s, http::verb::post, "/workunit", R"({"context_id":"wss","agent_id":"a","text":"x"})")
                  .result_int(),
              201u);
  }
  bool got = false;
  for (int i = 0; i < 20 && !got; ++i) {  // connected, subscribe_ack, heartbeats, then the unit
    beast::flat_buffer buf;
    ws.read(buf);
    auto msg = json::parse(beast::buffers_to_string(buf.data()));
    got = msg["type"].is_number_integer() && msg["context_id"] == "wss" && msg["seq"] == 1;
  }
  EXPECT_TRUE(got);
  ws.close(websocket::close_code::normal);
}

TEST_F(TlsTest, PlainHttpAndUntrustedClientsGetNoAnswer) {
  // Plain HTTP to the TLS port: the handshake fails and the connection closes.
  client::http_connection plain("127.0.0.1", server_->port());
  plain.set_timeout(std::chrono::seconds(5));
  auto r = plain.request("GET", "/healthz");
  EXPECT_FALSE(r);
  // A client that does not trust the certificate refuses the server.
  ssl::context strict{ssl::context::tls_client};
  strict.set_verify_mode(ssl::verify_peer);
  beast::ssl_stream<beast::tcp_stream> s(ioc_, strict);
  beast::get_lowest_layer(s).connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server_->port()));
  beast::error_code ec;
  s.handshake(ssl::stream_base::client, ec);
  EXPECT_TRUE(ec);
  // The server is unharmed.
  auto good = connect();
  EXPECT_EQ(request(good, http::verb::get, "/healthz").result_int(), 200u);
}

}  // namespace
}  // namespace engram::test
