// The access log of the real binary, written through its buffer
// (log.access_buffer_bytes): a line reaches stderr within the flush interval on an
// idle server, every line is written by a graceful stop, before "stopped"; with
// the buffer off, a line is written before its response is sent.
#include <gtest/gtest.h>

#include <string>

#include "support/server_process.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

std::size_t count(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

TEST(AccessLogProcessTest, BufferedLinesAreWrittenWithinASecondAndAllAtShutdown) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "relaxed", dir.str());
  proc.start();
  client::http_connection c("127.0.0.1", proc.port(), hang_guard);

  // Idle: the periodic flush writes the line although the buffer is far from full.
  ASSERT_EQ(c.request("GET", "/healthz", {}, {{"X-Request-Id", "idle-1"}})->status, 200u);
  EXPECT_TRUE(wait_until([&] { return proc.log_text().find("request_id=idle-1 ") != std::string::npos; }, 5s))
      << proc.log_text();

  for (int i = 0; i < 300; ++i)
    ASSERT_EQ(c.request("GET", "/healthz", {}, {{"X-Request-Id", "burst-" + std::to_string(i)}})->status, 200u);
  c.close();
  ASSERT_EQ(proc.terminate(), 0);
  const std::string log = proc.log_text();
  EXPECT_EQ(count(log, "request_id=burst-"), 300u);
  for (int i : {0, 150, 299}) EXPECT_NE(log.find("request_id=burst-" + std::to_string(i) + " "), std::string::npos) << i;
  EXPECT_LT(log.rfind("request_id=burst-"), log.rfind(" stopped")) << "access lines come before the last line";
}

TEST(AccessLogProcessTest, WithoutABufferTheLineIsWrittenBeforeTheResponse) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "relaxed", dir.str(), {"--set", "log.access_buffer_bytes=0"});
  proc.start();
  client::http_connection c("127.0.0.1", proc.port(), hang_guard);
  for (int i = 0; i < 20; ++i) {
    const std::string id = "unbuffered-" + std::to_string(i);
    ASSERT_EQ(c.request("GET", "/healthz", {}, {{"X-Request-Id", id}})->status, 200u);
    EXPECT_NE(proc.log_text().find("request_id=" + id + " "), std::string::npos) << id;
  }
}

}  // namespace
}  // namespace engram::test
