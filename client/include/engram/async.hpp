#pragma once
// Calling the SDK from an Asio executor without blocking it.
//
// async_call(client, fn, token) runs fn(client) — any blocking SDK call — on the
// client's own worker threads and completes on the caller's executor (the
// completion handler's associated executor) with fn's result. Any Asio completion
// token works: a callback, asio::use_awaitable, asio::use_future, …
//
//   asio::awaitable<void> agent(engram::client::client& c) {
//     auto unit = co_await engram::client::async_call(
//         c, [](auto& c) { return c.append({.context_id = "p", .payload = "hi"}); }, asio::use_awaitable);
//   }
//
// The client must outlive the call. Calls run concurrently up to
// client_options::async_threads; a call is not cancellable once started.

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <type_traits>
#include <utility>

#include "engram/client.hpp"

namespace engram::client {

template <class Fn, class CompletionToken>
  requires std::invocable<Fn&, client&>
auto async_call(client& c, Fn fn, CompletionToken&& token) {
  using value = std::invoke_result_t<Fn&, client&>;
  return boost::asio::async_initiate<CompletionToken, void(value)>(
      [&c](auto handler, Fn fn) {
        auto work = boost::asio::make_work_guard(boost::asio::get_associated_executor(handler));
        c.post_blocking([&c, fn = std::move(fn), handler = std::move(handler), work = std::move(work)]() mutable {
          value out = fn(c);
          auto ex = work.get_executor();
          boost::asio::dispatch(ex, [handler = std::move(handler), out = std::move(out)]() mutable {
            std::move(handler)(std::move(out));
          });
          work.reset();
        });
      },
      token, std::move(fn));
}

}  // namespace engram::client
