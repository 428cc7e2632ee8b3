#pragma once
// Stream sessions woken from other threads, batched per I/O thread. Used by the
// gateway's stream sessions (stream_sessions.cpp); public for its unit test.
//
// The router offers each event to every matching stream from its own thread (or
// the committer's), and a stream with something new calls its notify, which must
// get the session's pump() run on the session's thread. One posted handler per
// session cost every delivery a heap-allocated operation (allocated on the
// router's thread, freed on the I/O thread: a cross-thread free), a lock of the
// io_context's queue and a pass through its scheduler: a fan-out to 1,000
// subscribers did that 1,000 times per event. A wake_service (one per io_context,
// an Asio service) queues the woken sessions under its own lock and posts one
// handler while the list is non-empty; the handler wakes them all, in the order
// they were woken. A wake that arrives while a round runs goes in the next round;
// wakes before a round are not merged (a session woken twice is pumped twice,
// which finds nothing the second time).

#include <boost/asio/execution_context.hpp>
#include <boost/asio/io_context.hpp>
#include <memory>
#include <mutex>
#include <vector>

namespace engram::gateway {

// A session a wake_service can wake: wake() runs on the session's own thread.
class wakeable {
 public:
  virtual ~wakeable() = default;
  virtual void wake() = 0;
};

// Owned by its io_context (boost::asio::use_service); wake() from any thread, the
// wake-ups run on the io_context's thread.
class wake_service final : public boost::asio::execution_context::service {
 public:
  static inline boost::asio::execution_context::id id;

  explicit wake_service(boost::asio::io_context& ioc) : service(ioc), ioc_(ioc) {}

  // From any thread: `w`'s wake() runs soon on this io_context's thread, unless
  // it is gone by then.
  void wake(std::weak_ptr<wakeable> w);

 private:
  // The io_context is shutting down: its queued handlers, the one that would
  // wake these included, are destroyed without running, and nothing more is posted.
  void shutdown() override;
  void run();  // one round, on the io_context's thread

  boost::asio::io_context& ioc_;
  std::mutex mu_;
  std::vector<std::weak_ptr<wakeable>> pending_;  // under mu_
  bool posted_ = false;                           // under mu_: a run() is queued
};

}  // namespace engram::gateway
