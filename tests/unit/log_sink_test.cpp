// app::fd_sink on a real pipe: lines wait until the buffer is full or the logger is
// flushed, come out whole and in order, and capacity 0 writes each line at once.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <memory>
#include <string>

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

}  // namespace
}  // namespace engram::app
