// engram-fanout: stream benchmarks against a running server over loopback.
//
//   engram-fanout latency --port P --subscribers 100 --contexts 1 --rate 200 --seconds 10
//       N WebSocket subscribers (one io_context thread, async) spread over C contexts;
//       a writer appends `rate` units/s round-robin over the contexts, stamping the
//       send time in meta "t". Each subscriber records now - t on receipt:
//       publish-to-receive latency, end to end (HTTP POST, commit, fsync, router, WS).
//   engram-fanout latency --protocol redis|nats --port P …
//       the same run against a pub/sub broker, for comparison (bench/peers.sh):
//       subscribers on raw TCP (Redis SUBSCRIBE, NATS SUB), C channels, and a
//       publisher (PUBLISH, PUB) whose 300-byte payload starts with its send time.
//   engram-fanout idle --port P --subscribers 1000 --server-pid PID
//       opens idle subscriptions and reports the server's RSS growth per connection.
//       (--hold-seconds S keeps them open S seconds more, to inspect the server)
//   engram-fanout replay --port P --units 100000
//       seeds a context, then times one subscriber replaying it from since=0.
//   engram-fanout drafts --port P --subscribers 100 --rate 200 --seconds 10
//       N WebSocket subscribers of one context; a writer sends draft deltas over its
//       own WebSocket at `rate`/s, each carrying its send time. Reports delta
//       publish → receive over all subscribers, and → the first subscriber per
//       delta (an LLM's "time to first token" as the team sees it). Nothing is
//       stored: this is the router and the WebSocket path alone.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

#include "engram/http_connection.hpp"

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;
using json = nlohmann::json;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// What the latency mode measures: Engram's WebSocket stream, or a pub/sub broker.
enum class protocol { engram, redis, nats };

struct settings {
  protocol proto = protocol::engram;
  uint16_t port = 8080;
  unsigned subscribers = 1;
  unsigned contexts = 1;
  double rate = 200;
  double seconds = 10;
  size_t units = 100'000;
  int server_pid = 0;
  double hold_seconds = 0;
  std::string label;
};

// A receipt of something sent at `sent_ns`: its latency goes to `sink`.
void record(std::vector<uint64_t>& sink, std::atomic<size_t>& units, int64_t sent_ns) {
  sink.push_back(uint64_t(now_ns() - sent_ns));
  ++units;
}

// The hand-written subscribers' writes on their socket: at most one in flight, the
// rest queued behind it. `owner` (the subscriber) stays alive until they are done.
class queued_writer {
 public:
  explicit queued_writer(tcp::socket& sock) : sock_(sock) {}
  void send(std::string m, std::shared_ptr<void> owner) {
    out_.push_back(std::move(m));
    if (out_.size() == 1) write_next(std::move(owner));
  }

 private:
  void write_next(std::shared_ptr<void> owner) {
    net::async_write(sock_, net::buffer(out_.front()), [this, owner](beast::error_code ec, size_t) {
      if (ec) return;
      out_.pop_front();
      if (!out_.empty()) write_next(owner);
    });
  }
  tcp::socket& sock_;
  std::deque<std::string> out_;
};

// One async WebSocket subscriber with just enough of RFC 6455, as the broker
// subscribers below have just enough of RESP and NATS: the upgrade written by
// hand, then the server's frames (never masked, never fragmented: each message is
// one frame) parsed out of 16 KiB reads, as many per read as arrived. A ping is
// answered with a pong (masked, as a client's frames must be). For this benchmark
// only, not a conforming client to reuse: it sends the RFC's sample key and does
// not check Sec-WebSocket-Accept, masks with a zero key (RFC 6455 wants it
// unpredictable; the server does not care), refuses frames over 16 MiB, and on a
// close frame reports it and drops the connection without echoing the close. It used to be
// Beast's websocket::stream, a composed read and a copy per message: more work per
// message than the hand-written broker clients do, and on this 2-core machine a
// client short of CPU sets the tail of a fan-out run (bench/README.md, "The
// fan-out client's WebSocket side").
class subscriber : public std::enable_shared_from_this<subscriber> {
 public:
  subscriber(net::io_context& ioc, std::vector<uint64_t>& sink, std::atomic<size_t>& units, std::atomic<size_t>& ready,
             std::vector<uint64_t>* first = nullptr)
      : sock_(ioc), sink_(sink), units_(units), ready_(ready), first_(first) {}

  void start(const tcp::endpoint& ep, const std::string& target) {
    sock_.async_connect(ep, [self = shared_from_this(), target](beast::error_code ec) {
      if (ec) return std::fprintf(stderr, "connect: %s\n", ec.message().c_str()), void();
      self->sock_.set_option(tcp::no_delay(true));
      self->send("GET " + target +
                 " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
      self->read();
    });
  }
  void close() {
    beast::error_code ec;
    sock_.close(ec);
  }

 private:
  void read() {
    sock_.async_read_some(net::buffer(chunk_), [self = shared_from_this()](beast::error_code ec, size_t n) {
      if (ec) return;
      self->in_.append(self->chunk_.data(), n);
      const size_t used = self->take();
      if (used == std::string::npos) return self->close();  // take() said why
      self->in_.erase(0, used);
      self->read();
    });
  }
  // Handles the upgrade's answer and every complete frame in in_; returns the bytes
  // they span, or npos (after saying why) when the stream is not what we expect.
  size_t take() {
    size_t done = 0;
    if (!upgraded_) {
      const size_t end = in_.find("\r\n\r\n");
      if (end == std::string::npos) return 0;
      if (!in_.starts_with("HTTP/1.1 101"))
        return std::fprintf(stderr, "upgrade refused: %.*s\n", int(in_.find("\r\n")), in_.data()), std::string::npos;
      upgraded_ = true;
      done = end + 4;
    }
    while (in_.size() - done >= 2) {
      const auto b0 = uint8_t(in_[done]), b1 = uint8_t(in_[done + 1]);
      if (!(b0 & 0x80) || (b1 & 0x80))
        return std::fprintf(stderr, "unexpected frame: fragmented or masked\n"), std::string::npos;
      size_t head = 2, size = b1 & 0x7f;
      if (size >= 126) {
        head = size == 126 ? 4 : 10;
        if (in_.size() - done < head) break;
        size = 0;
        for (size_t i = 2; i < head; ++i) size = size << 8 | uint8_t(in_[done + i]);
        if (size > max_frame) return std::fprintf(stderr, "frame of %zu bytes\n", size), std::string::npos;
      }
      if (in_.size() - done < head + size) break;
      const std::string_view payload(in_.data() + done + head, size);
      switch (b0 & 0x0f) {
        case 0x1: on_message(payload); break;
        case 0x9: pong(payload); break;
        case 0x8: return closed(payload);
        default: break;
      }
      done += head + size;
    }
    return done;
  }
  void pong(std::string_view payload) {
    if (payload.size() > 125) return;  // not a valid ping (control payloads are at most 125 bytes)
    std::string frame{char(0x8a), char(0x80 | payload.size()), 0, 0, 0, 0};  // a zero mask key
    send(frame.append(payload));
  }
  // The server closed the stream (lagging, shutting down…): said on stderr, so a
  // run that lost subscribers shows why. Returns npos: the connection is dropped.
  static size_t closed(std::string_view payload) {
    const unsigned code = payload.size() >= 2 ? unsigned(uint8_t(payload[0])) << 8 | uint8_t(payload[1]) : 0;
    const auto why = payload.size() > 2 ? payload.substr(2) : std::string_view();
    std::fprintf(stderr, "closed by the server: %u %.*s\n", code, int(why.size()), why.data());
    return std::string::npos;
  }
  void on_message(std::string_view m) {
    if (!subscribed_) {
      if (m.find("\"subscribe_ack\"") != std::string_view::npos) {
        subscribed_ = true;
        ++ready_;
      }
      return;
    }
    if (first_) return on_delta(m);
    const auto pos = m.find("\"t\":\"");
    if (pos == std::string_view::npos) return;
    int64_t t = 0;
    if (std::from_chars(m.data() + pos + 5, m.data() + m.size(), t).ec != std::errc())
      return (void)std::fprintf(stderr, "a unit without its send time\n");
    record(sink_, units_, t);
  }
  // A delta's text is "<index>:<send time ns>".
  void on_delta(std::string_view m) {
    const auto pos = m.find("\"text\":\"");
    if (pos == std::string_view::npos || m.find("\"type\":\"delta\"") == std::string_view::npos) return;
    size_t index = 0;
    int64_t sent = 0;
    const char* end = m.data() + m.size();
    const auto [colon, ec] = std::from_chars(m.data() + pos + 8, end, index);
    if (ec != std::errc() || colon == end || std::from_chars(colon + 1, end, sent).ec != std::errc())
      return (void)std::fprintf(stderr, "a delta without its index and send time\n");
    const uint64_t lat = uint64_t(now_ns() - sent);
    sink_.push_back(lat);
    if (index < first_->size()) (*first_)[index] = std::min((*first_)[index], lat);
    ++units_;
  }
  void send(std::string m) { writer_.send(std::move(m), shared_from_this()); }

  static constexpr size_t max_frame = 16 << 20;
  tcp::socket sock_;
  queued_writer writer_{sock_};
  std::array<char, 16384> chunk_;
  std::string in_;
  bool upgraded_ = false, subscribed_ = false;
  std::vector<uint64_t>& sink_;
  std::atomic<size_t>& units_;
  std::atomic<size_t>& ready_;
  std::vector<uint64_t>* first_;  // drafts: the first receipt per delta index
};

// --- Pub/sub brokers, for comparison: just enough of each wire protocol ---------

size_t to_size(std::string_view s) {
  size_t n = 0;
  std::from_chars(s.data(), s.data() + s.size(), n);
  return n;
}

// A Redis command as RESP: an array of bulk strings.
std::string resp_command(std::initializer_list<std::string_view> args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (auto a : args) out.append("$").append(std::to_string(a.size())).append("\r\n").append(a).append("\r\n");
  return out;
}

// One complete RESP reply at the front of `in`. A simple string, error or integer
// is one item, prefix kept ("+OK", "-ERR …", ":3"); an array is its elements,
// bulk strings and integers without prefix (all that SUBSCRIBE, PUBLISH and
// pub/sub messages use). Returns the bytes the reply spans, or 0 while incomplete.
//   *3\r\n $7\r\n message\r\n $2\r\n ch\r\n $300\r\n <payload>\r\n
size_t parse_resp(std::string_view in, std::vector<std::string_view>& items) {
  size_t pos = 0;
  auto line = [&]() -> std::optional<std::string_view> {
    const size_t end = in.find("\r\n", pos);
    if (end == std::string_view::npos || end == pos) return std::nullopt;
    const auto l = in.substr(pos, end - pos);
    pos = end + 2;
    return l;
  };
  items.clear();
  const auto head = line();
  if (!head) return 0;
  if (head->front() != '*') {
    items.push_back(*head);
    return pos;
  }
  for (const size_t n = to_size(head->substr(1)); items.size() < n;) {
    const auto l = line();
    if (!l) return 0;
    if (l->front() != '$') {
      items.push_back(l->substr(1));
      continue;
    }
    const size_t len = to_size(l->substr(1));
    if (in.size() < pos + len + 2) return 0;
    items.push_back(in.substr(pos, len));
    pos += len + 2;
  }
  return pos;
}

// One complete NATS protocol message at the front of `in`: its control line and,
// for MSG, its payload. Returns the bytes it spans, or 0 while incomplete.
//   MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n     INFO {…}  PING  PONG  +OK  -ERR '…'
size_t parse_nats(std::string_view in, std::string_view& line, std::string_view& payload) {
  const size_t end = in.find("\r\n");
  if (end == std::string_view::npos) return 0;
  line = in.substr(0, end);
  payload = {};
  if (!line.starts_with("MSG ")) return end + 2;
  const size_t len = to_size(line.substr(line.rfind(' ') + 1));
  if (in.size() < end + 2 + len + 2) return 0;
  payload = in.substr(end + 2, len);
  return end + 2 + len + 2;
}

// A broker message's payload: its send time (ns since the epoch), ':', then
// padding to 300 bytes, the text size of the units the Engram writer appends.
std::string stamped_payload() {
  std::string p = std::to_string(now_ns()) + ':';
  p.resize(300, 'x');
  return p;
}

// One async subscriber of a broker (Redis SUBSCRIBE or NATS SUB) on a plain TCP
// socket. Lives on the client's one io_context thread, like `subscriber`.
class broker_subscriber : public std::enable_shared_from_this<broker_subscriber> {
 public:
  broker_subscriber(net::io_context& ioc, protocol p, std::vector<uint64_t>& sink, std::atomic<size_t>& units,
                    std::atomic<size_t>& ready)
      : sock_(ioc), proto_(p), sink_(sink), units_(units), ready_(ready) {}

  void start(const tcp::endpoint& ep, const std::string& channel) {
    sock_.async_connect(ep, [self = shared_from_this(), channel](beast::error_code ec) {
      if (ec) return std::fprintf(stderr, "connect: %s\n", ec.message().c_str()), void();
      self->sock_.set_option(tcp::no_delay(true));
      // NATS answers the PING after the SUB is in place: that PONG is our "ready".
      self->send(self->proto_ == protocol::redis ? resp_command({"SUBSCRIBE", channel})
                                                 : "CONNECT {\"verbose\":false}\r\nSUB " + channel + " 1\r\nPING\r\n");
      self->read();
    });
  }
  void close() {
    beast::error_code ec;
    sock_.close(ec);
  }

 private:
  void read() {
    sock_.async_read_some(net::buffer(chunk_), [self = shared_from_this()](beast::error_code ec, size_t n) {
      if (ec) return;
      self->in_.append(self->chunk_.data(), n);
      self->in_.erase(0, self->proto_ == protocol::redis ? self->take_resp() : self->take_nats());
      self->read();
    });
  }
  // Handles every complete message in in_; returns the bytes they span.
  size_t take_resp() {
    size_t done = 0;
    std::vector<std::string_view> items;
    while (const size_t n = parse_resp(std::string_view(in_).substr(done), items)) {
      done += n;
      if (items.size() == 3 && items[0] == "message") record(sink_, units_, payload_time(items[2]));
      else if (items.size() == 3 && items[0] == "subscribe") ++ready_;
      else if (!items.empty() && items[0].starts_with('-')) std::fprintf(stderr, "redis: %.*s\n", int(items[0].size()), items[0].data());
    }
    return done;
  }
  size_t take_nats() {
    size_t done = 0;
    std::string_view line, payload;
    while (const size_t n = parse_nats(std::string_view(in_).substr(done), line, payload)) {
      done += n;
      if (line.starts_with("MSG ")) record(sink_, units_, payload_time(payload));
      else if (line == "PING") send("PONG\r\n");
      else if (line == "PONG" && !subscribed_) {
        subscribed_ = true;
        ++ready_;
      } else if (line.starts_with("-ERR")) std::fprintf(stderr, "nats: %.*s\n", int(line.size()), line.data());
    }
    return done;
  }
  static int64_t payload_time(std::string_view p) {
    int64_t t = 0;
    std::from_chars(p.data(), p.data() + p.size(), t);
    return t;
  }
  void send(std::string m) { writer_.send(std::move(m), shared_from_this()); }

  tcp::socket sock_;
  queued_writer writer_{sock_};
  protocol proto_;
  std::array<char, 16384> chunk_;
  std::string in_;
  bool subscribed_ = false;
  std::vector<uint64_t>& sink_;
  std::atomic<size_t>& units_;
  std::atomic<size_t>& ready_;
};

// The publisher of a broker run: one blocking connection that publishes, then
// waits for the broker's answer before the next publish (Redis: PUBLISH's reply;
// NATS: the PONG to a PING sent after the PUB), as the Engram writer waits for
// its 201. The latency is stamped before the send, so the wait is not in it.
class broker_publisher {
 public:
  broker_publisher(protocol p, const tcp::endpoint& ep) : sock_(ioc_), proto_(p) {
    sock_.connect(ep);
    sock_.set_option(tcp::no_delay(true));
    if (proto_ == protocol::nats) net::write(sock_, net::buffer(std::string("CONNECT {\"verbose\":false}\r\n")));
  }

  // False, with a message, when the publish failed.
  bool publish(const std::string& channel) {
    const std::string p = stamped_payload();
    const std::string m = proto_ == protocol::redis
                              ? resp_command({"PUBLISH", channel, p})
                              : "PUB " + channel + " " + std::to_string(p.size()) + "\r\n" + p + "\r\nPING\r\n";
    beast::error_code ec;
    net::write(sock_, net::buffer(m), ec);
    for (std::array<char, 4096> chunk; !ec;) {
      std::vector<std::string_view> items;
      std::string_view line, payload;
      while (const size_t n = proto_ == protocol::redis ? parse_resp(in_, items) : parse_nats(in_, line, payload)) {
        const std::string reply(proto_ == protocol::nats ? line : items.empty() ? "" : items.front());  // Redis: ":<receivers>" or "-ERR …"
        in_.erase(0, n);
        if (reply.starts_with('-')) return std::fprintf(stderr, "publish: %s\n", reply.c_str()), false;
        if (proto_ == protocol::redis || reply == "PONG") return true;
        if (reply == "PING") net::write(sock_, net::buffer(std::string("PONG\r\n")), ec);  // else INFO, +OK
      }
      in_.append(chunk.data(), sock_.read_some(net::buffer(chunk), ec));
    }
    std::fprintf(stderr, "publish: %s\n", ec.message().c_str());
    return false;
  }

 private:
  net::io_context ioc_;
  tcp::socket sock_;
  protocol proto_;
  std::string in_;
};

long rss_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

// The p-th percentile of sorted latencies (ns), in µs.
double percentile_us(const std::vector<uint64_t>& sorted, double p) {
  return sorted.empty() ? 0.0 : double(sorted[std::min(sorted.size() - 1, size_t(p * double(sorted.size())))]) / 1000.0;
}

// `acks`: each publish's round trip to its acknowledgement (Engram's 201, the
// broker's reply), so that a reader can tell the write's share of `lat`.
void print_latency(const settings& s, std::vector<uint64_t>& lat, std::vector<uint64_t>& acks, double elapsed) {
  std::sort(lat.begin(), lat.end());
  std::sort(acks.begin(), acks.end());
  auto pct = [&](double p) { return percentile_us(lat, p); };
  static const char* const names[] = {"engram", "redis", "nats"};
  std::printf("%sfanout protocol=%s subscribers=%u contexts=%u rate=%.0f/s delivered=%zu (%.0f/s) p50=%.0fus p99=%.0fus p999=%.0fus max=%.0fus ack_p50=%.0fus ack_p99=%.0fus\n",
              s.label.empty() ? "" : (s.label + " ").c_str(), names[int(s.proto)], s.subscribers, s.contexts, s.rate, lat.size(),
              double(lat.size()) / elapsed, pct(0.5), pct(0.99), pct(0.999), lat.empty() ? 0.0 : double(lat.back()) / 1000.0,
              percentile_us(acks, 0.5), percentile_us(acks, 0.99));
}

// Runs `ioc` on a thread of its own and waits (bounded) until every subscriber has
// its subscribe_ack; false, with `io` joined, when some never did.
bool start_subscribers(net::io_context& ioc, std::thread& io, const std::atomic<size_t>& ready, unsigned want) {
  io = std::thread([&ioc] {
    auto guard = net::make_work_guard(ioc);
    ioc.run();
  });
  const auto wait_end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (ready < want && std::chrono::steady_clock::now() < wait_end)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // connection set-up, not measured
  if (ready >= want) return true;
  std::fprintf(stderr, "only %zu of %u subscribers connected\n", ready.load(), want);
  ioc.stop();
  io.join();
  return false;
}

int run_latency(const settings& s) {
  net::io_context ioc;
  const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), s.port);
  std::vector<uint64_t> lat;
  lat.reserve(size_t(s.rate * s.seconds * s.subscribers / s.contexts) + 1024);
  std::atomic<size_t> units{0}, ready{0};
  const std::string run_id = std::to_string(now_ns());
  // The i-th context (Engram) or channel (a broker's subject), round-robin.
  auto channel = [&](size_t i) {
    const auto k = std::to_string(i % s.contexts);
    return s.proto == protocol::engram ? "fanout-" + run_id + "/" + k : "fanout." + run_id + "." + k;
  };
  // The i-th publish, paced below: false when it failed.
  std::function<bool(size_t)> publish;
  engram::client::http_connection w("127.0.0.1", s.port);
  std::optional<broker_publisher> broker;
  if (s.proto == protocol::engram) {
    publish = [&](size_t i) {
      const auto body = json({{"context_id", channel(i)}, {"agent_id", "bench"}, {"type", 1},
                              {"text", std::string(300, 'x')}, {"meta", {{"t", std::to_string(now_ns())}}}}).dump();
      auto r = w.request("POST", "/workunit", body);
      if (!r || r->status != 201) return std::fprintf(stderr, "append failed\n"), false;
      return true;
    };
  } else {
    try {
      broker.emplace(s.proto, ep);
    } catch (const std::exception& e) {
      return std::fprintf(stderr, "publisher: %s\n", e.what()), 1;
    }
    publish = [&](size_t i) { return broker->publish(channel(i)); };
  }
  std::vector<std::shared_ptr<subscriber>> subs;
  std::vector<std::shared_ptr<broker_subscriber>> broker_subs;
  for (unsigned i = 0; i < s.subscribers; ++i) {
    if (s.proto == protocol::engram) {
      subs.push_back(std::make_shared<subscriber>(ioc, lat, units, ready));
      subs.back()->start(ep, "/stream?context=" + channel(i));
    } else {
      broker_subs.push_back(std::make_shared<broker_subscriber>(ioc, s.proto, lat, units, ready));
      broker_subs.back()->start(ep, channel(i));
    }
  }
  std::thread io;
  if (!start_subscribers(ioc, io, ready, s.subscribers)) return 1;
  // Paced publishes, round-robin over the contexts.
  const auto start = std::chrono::steady_clock::now();
  const auto period = std::chrono::duration<double>(1.0 / s.rate);
  size_t sent = 0;
  std::vector<uint64_t> acks;
  for (; std::chrono::steady_clock::now() - start < std::chrono::duration<double>(s.seconds); ++sent) {
    std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(period * double(sent)));
    const auto t0 = std::chrono::steady_clock::now();
    if (!publish(sent)) break;
    acks.push_back(uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count()));
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Let in-flight deliveries land (bounded).
  const size_t expect = sent * (s.subscribers / s.contexts);
  const auto drain_end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (units < expect && std::chrono::steady_clock::now() < drain_end)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  net::post(ioc, [&] {
    for (auto& s2 : subs) s2->close();
    for (auto& s2 : broker_subs) s2->close();
  });
  ioc.stop();
  io.join();
  print_latency(s, lat, acks, elapsed);
  if (units < expect) std::printf("  WARNING: %zu of %zu deliveries arrived\n", units.load(), expect);
  return 0;
}

void print_percentiles(const char* what, std::vector<uint64_t>& lat) {
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) { return percentile_us(lat, p); };
  std::printf("  %s: n=%zu p50=%.0fus p99=%.0fus p999=%.0fus max=%.0fus\n", what, lat.size(), pct(0.5), pct(0.99),
              pct(0.999), lat.empty() ? 0.0 : double(lat.back()) / 1000.0);
}

int run_drafts(const settings& s) {
  net::io_context ioc;
  const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), s.port);
  const size_t total = size_t(s.rate * s.seconds) + 1;
  std::vector<uint64_t> lat, first(total, UINT64_MAX);
  lat.reserve(total * s.subscribers);
  std::atomic<size_t> got{0}, ready{0};
  std::vector<std::shared_ptr<subscriber>> subs;
  const std::string ctx = "drafts-" + std::to_string(now_ns());
  for (unsigned i = 0; i < s.subscribers; ++i) {
    subs.push_back(std::make_shared<subscriber>(ioc, lat, got, ready, &first));
    subs.back()->start(ep, "/stream?context=" + ctx);
  }
  std::thread io;
  if (!start_subscribers(ioc, io, ready, s.subscribers)) return 1;
  // The writer: its own WebSocket, deltas without request_id (not acknowledged,
  // as an LLM token stream sends them); errors would come back as draft_error.
  net::io_context wioc;
  websocket::stream<beast::tcp_stream> w(wioc);
  beast::get_lowest_layer(w).connect(ep);
  // An abort and a delta go back to back every 1000 deltas: without NODELAY the
  // second waits for the server's delayed ACK (~40 ms), a client artefact.
  beast::get_lowest_layer(w).socket().set_option(tcp::no_delay(true));
  w.handshake("127.0.0.1", "/stream?context=" + ctx + "-writer");
  const auto start = std::chrono::steady_clock::now();
  const auto period = std::chrono::duration<double>(1.0 / s.rate);
  size_t sent = 0;
  for (; sent < total && std::chrono::steady_clock::now() - start < std::chrono::duration<double>(s.seconds); ++sent) {
    std::this_thread::sleep_until(start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(period * double(sent)));
    if (sent > 0 && sent % 1000 == 0) {  // a draft per 1000 deltas, under drafts.max_bytes
      beast::error_code ec;
      w.write(net::buffer(json({{"type", "draft_abort"}, {"context_id", ctx}, {"draft_id", "d" + std::to_string(sent / 1000 - 1)},
                                {"agent_id", "bench"}}).dump()), ec);
    }
    const auto msg = json({{"type", "delta"}, {"context_id", ctx}, {"draft_id", "d" + std::to_string(sent / 1000)},
                           {"agent_id", "bench"}, {"index", sent % 1000},
                           {"text", std::to_string(sent) + ":" + std::to_string(now_ns())}}).dump();
    beast::error_code ec;
    w.write(net::buffer(msg), ec);
    if (ec) {
      std::fprintf(stderr, "delta send failed: %s\n", ec.message().c_str());
      break;
    }
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const size_t expect = sent * s.subscribers;
  const auto drain_end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (got < expect && std::chrono::steady_clock::now() < drain_end)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  net::post(ioc, [&] { for (auto& s2 : subs) s2->close(); });
  ioc.stop();
  io.join();
  first.resize(sent);
  std::erase(first, UINT64_MAX);
  std::printf("%sdrafts subscribers=%u rate=%.0f/s deltas=%zu in %.1fs, deliveries %zu of %zu\n",
              s.label.empty() ? "" : (s.label + " ").c_str(), s.subscribers, s.rate, sent, elapsed, got.load(), expect);
  print_percentiles("publish -> first subscriber", first);
  print_percentiles("publish -> every subscriber", lat);
  return got < expect ? 1 : 0;
}

int run_idle(const settings& s) {
  net::io_context ioc;
  const tcp::endpoint ep(net::ip::make_address("127.0.0.1"), s.port);
  std::vector<uint64_t> none;
  std::atomic<size_t> units{0}, ready{0};
  const long before = rss_kib(s.server_pid);
  std::vector<std::shared_ptr<subscriber>> subs;
  for (unsigned i = 0; i < s.subscribers; ++i) {
    subs.push_back(std::make_shared<subscriber>(ioc, none, units, ready));
    subs.back()->start(ep, "/stream?context=idle/" + std::to_string(i % 100));
  }
  std::thread io([&] {
    auto guard = net::make_work_guard(ioc);
    ioc.run();
  });
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (ready < s.subscribers && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let the server settle
  const long after = rss_kib(s.server_pid);
  std::printf("idle subscribers=%zu server RSS %ld KiB -> %ld KiB: %.1f KiB per idle WebSocket subscriber\n",
              ready.load(), before, after, double(after - before) / double(std::max<size_t>(ready, 1)));
  std::fflush(stdout);
  std::this_thread::sleep_for(std::chrono::duration<double>(s.hold_seconds));  // for inspecting the server
  net::post(ioc, [&] { for (auto& s2 : subs) s2->close(); });
  ioc.stop();
  io.join();
  return 0;
}

int run_replay(const settings& s) {
  engram::client::http_connection w("127.0.0.1", s.port, std::chrono::seconds(120));
  const std::string ctx = "replay-" + std::to_string(now_ns());
  for (size_t done = 0; done < s.units; done += 1000) {
    json units = json::array();
    for (size_t k = 0; k < 1000; ++k) units.push_back({{"text", std::string(300, 'r')}});
    auto r = w.request("POST", "/workunits", json({{"context_id", ctx}, {"agent_id", "bench"}, {"work_units", units}}).dump());
    if (!r || r->status != 201) return std::fprintf(stderr, "seed failed\n"), 1;
  }
  net::io_context ioc;
  websocket::stream<beast::tcp_stream> ws(ioc);
  beast::get_lowest_layer(ws).connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), s.port));
  const auto t0 = std::chrono::steady_clock::now();
  ws.handshake("127.0.0.1", "/stream?context=" + ctx + "&since=0");
  size_t got = 0;
  beast::flat_buffer buf;
  while (got < s.units) {
    ws.read(buf);
    const auto data = buf.cdata();
    // Units are the only messages that start with their id; the rest are control.
    if (std::string_view(static_cast<const char*>(data.data()), data.size()).starts_with("{\"id\":")) ++got;
    buf.consume(buf.size());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("replay units=%zu seconds=%.2f rate=%.0f units/s\n", got, secs, double(got) / secs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engram-fanout: stream benchmarks (loopback only)"};
  app.fallthrough();
  settings s;
  app.add_option("--port", s.port)->required();
  app.add_option("--label", s.label);
  auto* lat = app.add_subcommand("latency", "publish-to-receive latency at the subscribers");
  lat->add_option("--subscribers", s.subscribers)->check(CLI::Range(1u, 20000u));
  lat->add_option("--contexts", s.contexts)->check(CLI::Range(1u, 10000u));
  lat->add_option("--rate", s.rate, "units per second written")->check(CLI::Range(1.0, 100000.0));
  lat->add_option("--seconds", s.seconds)->check(CLI::Range(0.5, 600.0));
  lat->add_option("--protocol", s.proto, "engram (WebSocket), or a broker to compare with: redis, nats")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, protocol>{{"engram", protocol::engram}, {"redis", protocol::redis}, {"nats", protocol::nats}}));
  auto* idle = app.add_subcommand("idle", "server memory per idle subscriber");
  idle->add_option("--subscribers", s.subscribers)->check(CLI::Range(1u, 20000u));
  idle->add_option("--server-pid", s.server_pid)->required();
  idle->add_option("--hold-seconds", s.hold_seconds, "keep the subscriptions open this long after measuring")
      ->check(CLI::Range(0.0, 600.0));
  auto* replay = app.add_subcommand("replay", "time to replay a context from since=0");
  replay->add_option("--units", s.units)->check(CLI::Range(size_t(1000), size_t(10'000'000)));
  auto* drafts = app.add_subcommand("drafts", "draft delta publish-to-receive latency (nothing stored)");
  drafts->add_option("--subscribers", s.subscribers)->check(CLI::Range(1u, 20000u));
  drafts->add_option("--rate", s.rate, "deltas per second")->check(CLI::Range(1.0, 100000.0));
  drafts->add_option("--seconds", s.seconds)->check(CLI::Range(0.5, 600.0));
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  if (*lat) return run_latency(s);
  if (*idle) return run_idle(s);
  if (*drafts) return run_drafts(s);
  return run_replay(s);
}
