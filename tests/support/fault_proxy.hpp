#pragma once
// Fault injection for client tests: a loopback TCP proxy in front of the server that
// can swallow a response and drop the connection (the request reached the server,
// the answer never came back), drop every open connection, or refuse new ones.
// Threads: one acceptor plus two pumps per connection; all stop in the destructor.

#include <sys/socket.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

namespace engram::test {

class fault_proxy {
 public:
  explicit fault_proxy(uint16_t upstream_port)
      : upstream_(boost::asio::ip::make_address("127.0.0.1"), upstream_port),
        acceptor_(io_, {boost::asio::ip::make_address("127.0.0.1"), 0}) {
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~fault_proxy() {
    stopping_ = true;
    // shutdown() wakes the blocking accept(); close() alone would not.
    ::shutdown(acceptor_.native_handle(), SHUT_RDWR);
    drop_all();
    thread_.join();
    boost::system::error_code ec;
    acceptor_.close(ec);
    std::lock_guard lock(mu_);
    for (auto& p : pairs_)
      for (auto& t : p->pumps) t.join();
  }

  uint16_t port() const { return acceptor_.local_endpoint().port(); }

  // The next `n` responses (first bytes from the server on any connection) are
  // discarded and their connection shut down.
  void drop_next_responses(int n) { drops_ = n; }
  int dropped() const { return dropped_; }
  // Closes every open connection (both sides).
  void drop_all() {
    std::lock_guard lock(mu_);
    for (auto& p : pairs_) p->close();
  }
  // While refusing, new connections are accepted and closed at once.
  void set_refusing(bool refusing) { refusing_ = refusing; }
  int accepted() const { return accepted_; }

 private:
  using tcp = boost::asio::ip::tcp;

  struct pair {
    tcp::socket client, server;
    std::vector<std::thread> pumps;
    std::mutex mu;
    pair(boost::asio::io_context& io) : client(io), server(io) {}
    void close() {
      std::lock_guard lock(mu);
      boost::system::error_code ec;
      client.shutdown(tcp::socket::shutdown_both, ec);
      server.shutdown(tcp::socket::shutdown_both, ec);
    }
  };

  void accept_loop() {
    while (!stopping_) {
      auto p = std::make_shared<pair>(io_);
      boost::system::error_code ec;
      acceptor_.accept(p->client, ec);
      if (ec) return;
      ++accepted_;
      if (refusing_) {
        p->client.close(ec);
        continue;
      }
      p->server.connect(upstream_, ec);
      if (ec) {
        p->client.close(ec);
        continue;
      }
      p->pumps.emplace_back([this, p] { pump(p->client, p->server, *p, false); });
      p->pumps.emplace_back([this, p] { pump(p->server, p->client, *p, true); });
      std::lock_guard lock(mu_);
      pairs_.push_back(std::move(p));
    }
  }

  bool take_drop() {
    int n = drops_.load();
    while (n > 0 && !drops_.compare_exchange_weak(n, n - 1)) {
    }
    return n > 0;
  }

  void pump(tcp::socket& from, tcp::socket& to, pair& p, bool responses) {
    char buf[16384];
    while (true) {
      boost::system::error_code ec;
      const size_t n = from.read_some(boost::asio::buffer(buf), ec);
      if (ec) break;
      if (responses && take_drop()) {
        // The server answered; the client gets end-of-stream instead of the answer.
        ++dropped_;
        p.close();
        return;
      }
      boost::asio::write(to, boost::asio::buffer(buf, n), ec);
      if (ec) break;
    }
    p.close();
  }

  boost::asio::io_context io_;
  tcp::endpoint upstream_;
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::atomic<bool> stopping_{false}, refusing_{false};
  std::atomic<int> drops_{0}, dropped_{0}, accepted_{0};
  std::mutex mu_;
  std::list<std::shared_ptr<pair>> pairs_;
};

}  // namespace engram::test
