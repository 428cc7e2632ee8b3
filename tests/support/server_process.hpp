#pragma once
// The real engram binary as a child process (crash, SDK and CLI tests): started on
// a loopback port, killed with SIGKILL or stopped with SIGTERM, restarted on the
// same data directory.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "engram/http_connection.hpp"
#include "support/test_support.hpp"

extern char** environ;

namespace engram::test {

// The engram binary as a child process, listening on an ephemeral port.
class server_process {
 public:
  server_process(std::string data_dir, std::string durability, std::string log_dir,
                 std::vector<std::string> extra_args = {})
      : data_dir_(std::move(data_dir)), durability_(std::move(durability)), log_dir_(std::move(log_dir)),
        extra_args_(std::move(extra_args)) {}
  ~server_process() {
    if (pid_ > 0) kill9();
  }

  // `port` 0 picks an ephemeral one; restart() reuses the port of the last start, so
  // clients holding the URL reconnect to the new process.
  void start(uint16_t port = 0) {
    log_path_ = log_dir_ + "/engram-" + std::to_string(starts_++) + ".log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<std::string> args = {ENGRAM_BINARY, "--addr", "127.0.0.1:" + std::to_string(port), "--data-dir", data_dir_,
                                     "--durability", durability_, "--set", "server.threads=2",
                                     "--set", "storage.block_cache_mb=16", "--set", "storage.write_buffer_mb=4"};
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ASSERT_EQ(posix_spawn(&pid_, ENGRAM_BINARY, &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    static const std::regex listening(R"(http: listening on 127\.0\.0\.1:(\d+))");
    // The waits are hang guards; a server that exits at start-up ends them at once.
    ASSERT_TRUE(wait_until([&] {
      if (!running()) return true;
      std::ifstream in(log_path_);
      std::stringstream ss;
      ss << in.rdbuf();
      const std::string text = ss.str();
      std::smatch m;
      if (!std::regex_search(text, m, listening)) return false;
      port_ = uint16_t(std::stoi(m[1]));
      return true;
    }, hang_guard)) << "server did not start; see " << log_path_;
    ASSERT_TRUE(running()) << "server exited at start-up; see " << log_path_;
    ASSERT_TRUE(wait_until([&] {
      if (!running()) return true;
      client::http_connection c("127.0.0.1", port_, std::chrono::seconds(2));
      auto r = c.request("GET", "/readyz");
      return r && r->status == 200;
    }, hang_guard)) << "server not ready; see " << log_path_;
    ASSERT_TRUE(running()) << "server exited before it was ready; see " << log_path_;
  }

  void restart() { start(port_); }

  void kill9() {
    if (pid_ <= 0) return;  // already exited and reaped (never kill(-1, …))
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // SIGTERM; returns the exit code, or -1 if it did not exit normally.
  int terminate() {
    if (pid_ <= 0) return -1;  // already exited and reaped (never kill(-1, …))
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  uint16_t port() const { return port_; }

  // Everything the current process has logged so far.
  std::string log_text() const {
    std::ifstream in(log_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  // False once the process has exited (reaped here, so its pid is not reused).
  bool running() {
    int status = 0;
    if (pid_ <= 0 || ::waitpid(pid_, &status, WNOHANG) != pid_) return pid_ > 0;
    pid_ = -1;
    return false;
  }

  std::string data_dir_, durability_, log_dir_, log_path_;
  std::vector<std::string> extra_args_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  int starts_ = 0;
};

}  // namespace engram::test
