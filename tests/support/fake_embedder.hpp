#pragma once
// A small OpenAI-compatible embedding endpoint (POST /v1/embeddings) for tests, on
// 127.0.0.1: deterministic vectors from a hashed bag of words, so texts that share
// words are similar. It runs on its own thread, can be stopped (connections are
// refused afterwards) and started again on the same port; it counts requests.

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace engram::test {

class fake_embedder {
 public:
  explicit fake_embedder(size_t dim = 64) : dim_(dim) { start(); }
  ~fake_embedder() { stop(); }
  fake_embedder(const fake_embedder&) = delete;
  fake_embedder& operator=(const fake_embedder&) = delete;

  // The vector of a text: +-1 per word at a hashed position; never all zeros.
  static std::vector<float> embed(std::string_view text, size_t dim) {
    std::vector<float> v(dim, 0.f);
    std::string word;
    auto flush = [&] {
      if (word.empty()) return;
      const size_t h = std::hash<std::string>{}(word);
      v[h % dim] += (h >> 40) & 1 ? 1.f : -1.f;
      word.clear();
    };
    for (const char c : text) {
      if (std::isalnum(static_cast<unsigned char>(c))) word.push_back(char(std::tolower(static_cast<unsigned char>(c))));
      else flush();
    }
    flush();
    bool zero = true;
    for (const float x : v) zero = zero && x == 0;
    if (zero) v[0] = 1;
    return v;
  }

  // Listens (again) on the same port as before, or an ephemeral one the first time.
  void start() {
    namespace net = boost::asio;
    using tcp = net::ip::tcp;
    ioc_ = std::make_unique<net::io_context>();
    acceptor_ = std::make_unique<tcp::acceptor>(*ioc_);
    const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), port_);
    acceptor_->open(ep.protocol());
    acceptor_->set_option(net::socket_base::reuse_address(true));
    acceptor_->bind(ep);
    acceptor_->listen();
    port_ = acceptor_->local_endpoint().port();
    accept();
    thread_ = std::thread([this] { ioc_->run(); });
  }

  // Closes the listener and every connection.
  void stop() {
    if (!ioc_) return;
    boost::asio::post(*ioc_, [this] {
      boost::system::error_code ec;
      acceptor_->close(ec);
      std::lock_guard lock(mu_);
      for (auto* s : sockets_) s->close(ec);
    });
    thread_.join();
    acceptor_.reset();
    ioc_.reset();
  }

  uint16_t port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1/embeddings"; }
  size_t dim() const { return dim_; }
  // Another model behind the same URL: vectors of another dimension from now on.
  void set_dim(size_t dim) { dim_ = dim; }

  std::atomic<size_t> requests{0};
  std::atomic<size_t> inputs{0};

 private:
  struct session : std::enable_shared_from_this<session> {
    session(fake_embedder& f, boost::asio::ip::tcp::socket s) : owner(f), socket(std::move(s)) {
      std::lock_guard lock(owner.mu_);
      owner.sockets_.insert(&socket);
    }
    ~session() {
      std::lock_guard lock(owner.mu_);
      owner.sockets_.erase(&socket);
    }
    void read() {
      req = {};
      boost::beast::http::async_read(socket, buffer, req, [self = shared_from_this()](auto ec, size_t) {
        if (!ec) self->answer();
      });
    }
    void answer() {
      namespace http = boost::beast::http;
      res = {};
      res.version(11);
      res.keep_alive(req.keep_alive());
      res.set(http::field::content_type, "application/json");
      auto body = nlohmann::json::parse(req.body(), nullptr, false);
      if (req.method() != http::verb::post || req.target() != "/v1/embeddings" || !body.is_object() ||
          !body.contains("input") || !body["input"].is_array()) {
        res.result(http::status::bad_request);
        res.body() = R"({"error":{"message":"bad request"}})";
      } else {
        ++owner.requests;
        nlohmann::json data = nlohmann::json::array();
        size_t i = 0;
        for (const auto& text : body["input"]) {
          ++owner.inputs;
          data.push_back({{"object", "embedding"}, {"index", i++},
                          {"embedding", embed(text.is_string() ? text.get<std::string>() : "", owner.dim_)}});
        }
        res.result(http::status::ok);
        res.body() = nlohmann::json{{"object", "list"}, {"data", data}, {"model", body.value("model", "")}}.dump();
      }
      res.prepare_payload();
      http::async_write(socket, res, [self = shared_from_this()](auto ec, size_t) {
        if (!ec && self->res.keep_alive()) self->read();
      });
    }
    fake_embedder& owner;
    boost::asio::ip::tcp::socket socket;
    boost::beast::flat_buffer buffer;
    boost::beast::http::request<boost::beast::http::string_body> req;
    boost::beast::http::response<boost::beast::http::string_body> res;
  };

  void accept() {
    acceptor_->async_accept([this](boost::system::error_code ec, boost::asio::ip::tcp::socket s) {
      if (ec) return;  // closed
      std::make_shared<session>(*this, std::move(s))->read();
      accept();
    });
  }

  std::atomic<size_t> dim_;
  uint16_t port_ = 0;
  std::unique_ptr<boost::asio::io_context> ioc_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  std::thread thread_;
  std::mutex mu_;
  std::set<boost::asio::ip::tcp::socket*> sockets_;
};

}  // namespace engram::test
