#pragma once
// A stream layer under Beast's websocket::stream that gathers everything written
// to it and puts it on the socket with one write at a time: a WebSocket session
// sends every message a subscriber has queued with one gather write (one sendmsg
// for up to 32 events instead of one each), and Beast's own frames (the handshake
// answer, pongs, idle pings, the close) go out in order between ours, never inside
// them. Owned by its ws_session's websocket::stream; used only on its I/O thread.
//
// Hand-written because Beast has no call that writes several messages at once, and
// writing frames beside it on the socket would race its pongs. What it relies on:
// a server's frames are unmasked, and permessage-deflate is never negotiated (the
// server does not enable it), so a text message is a 2–10 byte header and the bytes.
//
//   add_text_frame(m1) add_text_frame(m2) … async_flush(done)
//       pieces: [hdr1][m1: the caller's bytes, not copied][hdr2][m2] …  → one async_write
//
// Beast's writes are copied and complete at once; a session's frames are referenced
// (the event's shared bytes, never copied per subscriber: STYLE "Async") and its
// flush completes once they are on the socket, which is its backpressure.
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/role.hpp>
#include <boost/beast/websocket/teardown.hpp>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "model/assert.hpp"

namespace engram::gateway {

// Frees a string's or vector's storage. `x = {}` would not: it assigns an empty
// list and keeps the capacity (so does move-assigning an empty std::string).
template <class Container>
void release_storage(Container& x) noexcept {
  Container().swap(x);
}

// One write that never waits: what the socket takes of `buffers` at once
// (would_block in `ec` when it takes nothing). The socket's user-level
// non-blocking mode affects synchronous calls only; its asynchronous operations
// are unaffected. Shared by the WebSocket layer below and the SSE session.
template <class Buffers>
size_t write_without_waiting(boost::asio::ip::tcp::socket& socket, const Buffers& buffers,
                             boost::beast::error_code& ec) {
  if (!socket.non_blocking()) socket.non_blocking(true, ec);
  if (ec) return 0;
  return socket.write_some(buffers, ec);
}

template <class Next>
class coalescing_stream {
 public:
  using next_layer_type = Next;
  using executor_type = typename Next::executor_type;

  explicit coalescing_stream(Next&& next) : next_(std::move(next)) {}

  executor_type get_executor() noexcept { return next_.get_executor(); }
  Next& next_layer() noexcept { return next_; }
  const Next& next_layer() const noexcept { return next_; }

  // Whose life a write in flight extends: the session that owns this stream, so
  // that a write Beast started (a pong) never completes into a destroyed stream.
  void keep_alive_with(std::weak_ptr<void> owner) { owner_ = std::move(owner); }

  template <class Buffers, class Token>
  auto async_read_some(const Buffers& buffers, Token&& token) {
    return next_.async_read_some(buffers, std::forward<Token>(token));
  }

  // Beast's writes: copied behind whatever is queued, and complete at once, unless
  // more than held_bytes of copies wait for the socket (a client that sends pings
  // and never reads): then when the write carrying them completes, so Beast's
  // reading waits as it did on a plain socket and the queue stays bounded.
  template <class Buffers, class Token>
  auto async_write_some(const Buffers& buffers, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::beast::error_code, size_t)>(
        [this](auto handler, const Buffers& b) {
          size_t n = 0;
          if (!error_) {
            for (auto it = boost::asio::buffer_sequence_begin(b); it != boost::asio::buffer_sequence_end(b); ++it) {
              const boost::asio::const_buffer piece(*it);
              add_copy({static_cast<const char*>(piece.data()), piece.size()});
              n += piece.size();
            }
            if (owned_.size() + (writing_ ? sending_owned_.size() : 0) > held_bytes) {
              ENGRAM_ASSERT(!beast_waiter_, "coalescing_stream: Beast writes one frame at a time");
              beast_waiter_ = [this, n, h = std::move(handler)](boost::beast::error_code ec) mutable {
                boost::asio::post(get_executor(), boost::beast::bind_front_handler(std::move(h), ec, ec ? 0 : n));
              };
              flush();
              return;
            }
            flush();
          }
          boost::asio::post(get_executor(), boost::beast::bind_front_handler(std::move(handler), error_, n));
        },
        token, buffers);
  }

  // A whole text message, framed. `payload` must stay valid until the next
  // async_flush completes. Dropped once the connection failed or is closing.
  void add_text_frame(std::string_view payload) {
    if (error_ || closing_) return;
    char header[10];
    size_t n = 2;
    const uint64_t size = payload.size();
    header[0] = char(0x81);  // FIN, text
    if (size < 126) {
      header[1] = char(size);
    } else if (size <= 0xffff) {
      header[1] = char(126);
      for (int i = 0; i < 2; ++i) header[n++] = char(size >> (8 * (1 - i)));
    } else {
      header[1] = char(127);
      for (int i = 0; i < 8; ++i) header[n++] = char(size >> (8 * (7 - i)));
    }
    add_copy({header, n});
    pieces_.push_back({payload.data(), 0, payload.size()});
  }

  // Frees the buffers when nothing is queued or being written: for a connection
  // that has gone quiet (ws_session: after a write without events), so an idle
  // subscriber holds none.
  void release_buffers() {
    if (writing_ || !pieces_.empty()) return;
    release_storage(owned_);
    release_storage(sending_owned_);
    release_storage(sending_);
    release_storage(pieces_);
  }

  // Runs `then` (on this stream's executor) once every byte written so far is on
  // the socket or the connection failed, and takes no more frames from the
  // session: the teardown after a close must not overtake the close frame (nor,
  // over TLS, write beside it), and nothing may follow a close frame (RFC 6455
  // §5.5.1).
  void when_idle(std::move_only_function<void()> then) {
    ENGRAM_ASSERT(!idle_, "coalescing_stream: one when_idle at a time");
    closing_ = true;
    if (error_ || (!writing_ && pieces_.empty())) {
      boost::asio::post(get_executor(), std::move(then));
      return;
    }
    idle_ = std::move(then);
  }

  // Puts everything added so far on the socket; `done(ec)` once it is there (or
  // the connection failed or is closing). One flush at a time.
  void async_flush(std::move_only_function<void(boost::beast::error_code)> done) {
    ENGRAM_ASSERT(!waiter_, "coalescing_stream: one flush at a time");
    if (error_ || closing_ || (pieces_.empty() && !writing_)) {
      const auto ec = error_ ? error_ : closing_ ? boost::asio::error::operation_aborted : boost::beast::error_code();
      boost::asio::post(get_executor(), [done = std::move(done), ec]() mutable { done(ec); });
      return;
    }
    waiter_ = std::move(done);
    flush();
  }

  // Puts everything added so far on the socket now, without an asynchronous write,
  // when no write is in flight or waited for and the socket's buffer takes all of
  // it (as it does unless the client stopped reading): true, and it is there.
  // Otherwise false: what the socket took, if anything, is off the queue, and
  // async_flush sends the rest. Plain TCP only (over TLS, false). In a fan-out this
  // runs once per event and subscriber, where an asynchronous write that completes
  // at once still costs a composed operation, a pass through the scheduler and a
  // handler.
  bool try_flush_now() {
    if constexpr (!std::is_same_v<Next, boost::asio::ip::tcp::socket>) {
      return false;
    } else {
      if (writing_ || error_ || closing_ || pieces_.empty() || waiter_ || beast_waiter_) return false;
      boost::beast::error_code ec;
      gather(owned_);
      const size_t sent = write_without_waiting(next_, std::span<const boost::asio::const_buffer>(sending_), ec);
      if (ec) return false;  // would block, or failed: async_flush finds out which
      if (sent < boost::asio::buffer_size(sending_)) {
        drop_front(sent);
        return false;
      }
      pieces_.clear();
      owned_.clear();
      trim_buffers();
      return true;
    }
  }

 private:
  // A run of bytes to send: the caller's (`external`), or owned_[offset, offset + size).
  struct piece {
    const char* external;
    size_t offset, size;
  };
  static constexpr size_t kept_bytes = 1024;        // buffers kept between writes
  static constexpr size_t held_bytes = 64 * 1024;   // Beast's copies queued before it waits

  // What a write in flight holds: the owner alive, and the handlers that wait for
  // it. Dropped without completing (its io_context destroyed at a shutdown past
  // its deadline), it releases the stored handlers too, which hold the owner:
  // otherwise they would keep it alive for ever.
  struct flight {
    coalescing_stream* self;
    std::shared_ptr<void> keep;
    flight(coalescing_stream* s, std::shared_ptr<void> k) : self(s), keep(std::move(k)) {}
    flight(flight&& o) noexcept : self(std::exchange(o.self, nullptr)), keep(std::move(o.keep)) {}
    flight& operator=(flight&&) = delete;
    ~flight() {
      if (!self) return;
      auto waiter = std::exchange(self->waiter_, nullptr);
      auto idle = std::exchange(self->idle_, nullptr);
      auto beast = std::exchange(self->beast_waiter_, nullptr);
    }  // they go first, `keep` last
  };

  // sending_ = what is queued, as buffers; the owned bytes are in `owned`.
  void gather(const std::string& owned) {
    sending_.clear();
    for (const auto& p : pieces_) sending_.emplace_back(p.external ? p.external : owned.data() + p.offset, p.size);
  }

  // After a write, with nothing queued: the buffers are kept for the next write (a
  // subscriber at 50 events/s would otherwise allocate them 50 times a second),
  // but not a burst's big ones.
  void trim_buffers() {
    if (!pieces_.empty()) return;
    if (sending_owned_.capacity() + owned_.capacity() > kept_bytes) {
      release_storage(owned_);
      release_storage(sending_owned_);
    }
    if (sending_.capacity() * sizeof(sending_[0]) > kept_bytes) {
      release_storage(sending_);
      release_storage(pieces_);
    }
  }

  // Drops the first `n` bytes of what is queued (the socket took them).
  void drop_front(size_t n) {
    auto first = pieces_.begin();
    for (; first != pieces_.end() && first->size <= n; ++first) n -= first->size;
    pieces_.erase(pieces_.begin(), first);
    if (n == 0) return;
    auto& p = pieces_.front();
    if (p.external) p.external += n;
    else p.offset += n;
    p.size -= n;
  }

  void add_copy(std::string_view bytes) {
    if (pieces_.empty() || pieces_.back().external)
      pieces_.push_back({nullptr, owned_.size(), 0});
    owned_.append(bytes);
    pieces_.back().size += bytes.size();
  }

  void flush() {
    if (writing_ || pieces_.empty() || error_) return;
    writing_ = true;
    sending_owned_.swap(owned_);
    gather(sending_owned_);
    pieces_.clear();
    auto done = std::exchange(waiter_, nullptr);
    auto beast_done = std::exchange(beast_waiter_, nullptr);
    // A view of sending_: the write op copies its buffer sequence, and a vector
    // would be copied (allocated) once per write.
    boost::asio::async_write(
        next_, std::span<const boost::asio::const_buffer>(sending_),
        [this, f = flight(this, owner_.lock()), done = std::move(done), beast_done = std::move(beast_done)](
            boost::beast::error_code ec, size_t) mutable {
          f.self = nullptr;  // completed: nothing to release
          writing_ = false;
          sending_owned_.clear();
          trim_buffers();
          if (ec) {
            error_ = ec;  // nothing more is sent; whoever waits learns why
            pieces_.clear();
            owned_.clear();
          }
          flush();  // what was added meanwhile
          if (beast_done) beast_done(ec);
          if (done) done(ec);
          if (writing_) return;
          // Handlers whose bytes this write carried (all of them: nothing is left), or failed.
          if (beast_waiter_) std::exchange(beast_waiter_, nullptr)(error_);
          if (waiter_) std::exchange(waiter_, nullptr)(error_);
          if (idle_) std::exchange(idle_, nullptr)();
        });
  }

  Next next_;
  std::weak_ptr<void> owner_;
  std::string owned_, sending_owned_;
  std::vector<piece> pieces_;
  std::vector<boost::asio::const_buffer> sending_;
  std::move_only_function<void(boost::beast::error_code)> waiter_;       // the session's flush, until it starts
  std::move_only_function<void(boost::beast::error_code)> beast_waiter_;  // a held Beast write, until it starts
  std::move_only_function<void()> idle_;                                  // when_idle's, until then
  bool writing_ = false;
  bool closing_ = false;  // when_idle was called: the teardown follows
  boost::beast::error_code error_;
};

// Beast's websocket tears the connection down through its next layer.
template <class Next>
void teardown(boost::beast::role_type role, coalescing_stream<Next>& s, boost::beast::error_code& ec) {
  using boost::beast::websocket::teardown;
  teardown(role, s.next_layer(), ec);
}

template <class Next, class Handler>
void async_teardown(boost::beast::role_type role, coalescing_stream<Next>& s, Handler&& handler) {
  s.when_idle([role, &s, handler = std::forward<Handler>(handler)]() mutable {
    using boost::beast::websocket::async_teardown;
    async_teardown(role, s.next_layer(), std::move(handler));
  });
}

}  // namespace engram::gateway
