// app::fd_sink on a real pipe: lines wait until the buffer is full or the logger is
// flushed, come out whole and in order, and capacity 0 writes each line at once.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "app/log_sink.hpp"

namespace engram::app {
namespace {

class FdSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::pipe2(fds_, O_NONBLOCK), 0);
  }
  void TearDown() override {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }

  std::shared_ptr<spdlog::logger> logger(std::size_t capacity) {
    auto l = std::make_shared<spdlog::logger>("test", std::make_shared<fd_sink>(fds_[1], capacity));
    l->set_formatter(std::make_unique<spdlog::pattern_formatter>("%v"));
    return l;
  }

  // Everything written to the pipe so far (it never blocks: the pipe is non-blocking).
  std::string written() {
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = ::read(fds_[0], buf, sizeof buf)) > 0;) out.append(buf, std::size_t(n));
    return out;
  }

  int fds_[2] = {-1, -1};
};

TEST_F(FdSinkTest, LinesWaitUntilTheBufferFillsOrTheLoggerIsFlushed) {
  auto log = logger(256);
  const std::string line(50, 'x');  // 51 bytes with the newline
  for (int i = 0; i < 5; ++i) log->info("{}{}", i, line.substr(1));
  EXPECT_EQ(written(), "");  // 255 bytes wait

  log->info("5{}", line.substr(1));  // 306 ≥ 256: all six go out in one write
  std::string expected;
  for (int i = 0; i < 6; ++i) expected += std::to_string(i) + line.substr(1) + "\n";
  EXPECT_EQ(written(), expected);

  log->info("after");
  EXPECT_EQ(written(), "");
  log->flush();
  EXPECT_EQ(written(), "after\n");
  log->flush();  // nothing waiting: nothing written
  EXPECT_EQ(written(), "");
}

TEST_F(FdSinkTest, CapacityZeroWritesEachLineAtOnce) {
  auto log = logger(0);
  log->info("one");
  EXPECT_EQ(written(), "one\n");
  log->warn("two");
  EXPECT_EQ(written(), "two\n");
}

TEST_F(FdSinkTest, WhatWaitsIsWrittenWhenTheSinkGoesAway) {
  {
    auto log = logger(1 << 16);
    log->info("kept");
    EXPECT_EQ(written(), "");
  }
  EXPECT_EQ(written(), "kept\n");
}

TEST_F(FdSinkTest, LinesThatCannotBeWrittenAreDroppedAndLaterLinesStillGoOut) {
  std::size_t filled = 0;  // fill the pipe until write(2) says EAGAIN
  const std::string chunk(4096, 'f');
  for (ssize_t n; (n = ::write(fds_[1], chunk.data(), chunk.size())) > 0;) filled += std::size_t(n);
  ASSERT_EQ(errno, EAGAIN);
  auto log = logger(0);
  log->info("dropped");  // EAGAIN: dropped, not kept for the next write
  EXPECT_EQ(written(), std::string(filled, 'f'));
  log->info("next");
  EXPECT_EQ(written(), "next\n");
}

// As in the server: a buffered logger (access lines) and an unbuffered one (every
// other line) share one descriptor, used from several threads at once. On a pipe,
// a write(2) larger than PIPE_BUF may be split and interleaved with others, and the
// buffered chunks here are larger: every line must still come out whole, once, and
// in its thread's order.
TEST(FdSinkThreads, SharedPipeGetsWholeLinesFromEveryThread) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, 0), 0);  // blocking, like stderr to a pipe
  std::string all;
  std::thread reader([&] {
    char buf[1024];  // small reads: writers block on a full pipe and get split
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) all.append(buf, std::size_t(n));
  });
  auto make = [&fds](const char* name, std::size_t capacity) {
    auto l = std::make_shared<spdlog::logger>(name, std::make_shared<fd_sink>(fds[1], capacity));
    l->set_formatter(std::make_unique<spdlog::pattern_formatter>("%v"));
    return l;
  };
  constexpr int threads = 4, lines = 3000;
  {
    auto buffered = make("buffered", 3 * PIPE_BUF);
    auto direct = make("direct", 0);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
      workers.emplace_back([&, t] {
        const std::string pad(t * 17 + 30, char('a' + t));
        for (int i = 0; i < lines; ++i) (i % 3 ? buffered : direct)->info("t{} {} {}", t, i, pad);
      });
    for (auto& w : workers) w.join();
    buffered->flush();
  }
  ::close(fds[1]);
  reader.join();
  ::close(fds[0]);

  std::map<int, std::vector<int>> seen;  // thread → line numbers in the order read
  std::istringstream in(all);
  for (std::string line; std::getline(in, line);) {
    int t = -1, i = -1;
    ASSERT_EQ(std::sscanf(line.c_str(), "t%d %d", &t, &i), 2) << line;
    ASSERT_TRUE(t >= 0 && t < threads) << line;
    ASSERT_EQ(line, "t" + std::to_string(t) + " " + std::to_string(i) + " " + std::string(t * 17 + 30, char('a' + t)));
    seen[t].push_back(i);
  }
  for (int t = 0; t < threads; ++t) {
    std::vector<int> buffered_order, direct_order;
    for (int i : seen[t]) (i % 3 ? buffered_order : direct_order).push_back(i);
    std::vector<int> want_buffered, want_direct;
    for (int i = 0; i < lines; ++i) (i % 3 ? want_buffered : want_direct).push_back(i);
    EXPECT_EQ(buffered_order, want_buffered) << "thread " << t;  // each once, in order
    EXPECT_EQ(direct_order, want_direct) << "thread " << t;
  }
}

}  // namespace
}  // namespace engram::app
