// engramctl as users run it: the real binary against the real server (in-process),
// checking output and exit codes (0 ok, 1 refused, 2 usage, 3 unreachable), and
// `tail -f` receiving live units and resuming across a server restart.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "support/server_process.hpp"
#include "support/test_support.hpp"

extern char** environ;

namespace engram::test {
namespace {

using namespace std::chrono_literals;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One engramctl process with stdin from a file and stdout/stderr to files.
class ctl_process {
 public:
  ctl_process(const temp_dir& dir, std::vector<std::string> args, const std::string& input = {},
              const std::vector<std::string>& extra_env = {}, const char* binary = ENGRAMCTL_BINARY) {
    static int n = 0;
    const std::string base = dir.str() + "/ctl-" + std::to_string(n++);
    in_ = base + ".in", out_ = base + ".out", err_ = base + ".err";
    std::ofstream(in_, std::ios::binary) << input;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, in_.c_str(), O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    args.insert(args.begin(), binary);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // A clean environment: no ENGRAM_SERVER or ENGRAM_AGENT from the caller's shell.
    std::vector<std::string> env = {"PATH=/usr/bin:/bin", "USER=tester"};
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    if (posix_spawn(&pid_, binary, &fa, nullptr, argv.data(), envp.data()) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~ctl_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  // The exit code, or nullopt if the process is still running after `limit` (it is
  // then killed).
  std::optional<int> wait_for(std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return std::nullopt;  // the destructor kills it
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  void signal(int sig) { ::kill(pid_, sig); }
  std::string out() const { return slurp(out_); }
  std::string err() const { return slurp(err_); }

 private:
  pid_t pid_ = -1;
  std::string in_, out_, err_;
};

struct ctl_result {
  int code;
  std::string out, err;
};

class EngramctlTest : public ::testing::Test {
 protected:
  ctl_result ctl(std::vector<std::string> args, const std::string& input = {}) {
    args.insert(args.begin(), {"--server", url(), "--agent", "cli-agent"});
    ctl_process p(dir_, std::move(args), input);
    const int code = p.wait();
    return {code, p.out(), p.err()};
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_.port()); }

  temp_dir dir_;
  test_server server_{dir_};
};

TEST_F(EngramctlTest, PutGetAndListPrintReadableLines) {
  auto put = ctl({"put", "cli/a", "hello world", "--meta", "k=v"});
  ASSERT_EQ(put.code, 0) << put.err;
  EXPECT_TRUE(put.out.starts_with("cli/a #1  ")) << put.out;
  const std::string id = put.out.substr(put.out.rfind(' ') + 1, 36);

  auto from_stdin = ctl({"put", "cli/a", "--type", "reasoning"}, "line one\nline two");
  ASSERT_EQ(from_stdin.code, 0) << from_stdin.err;

  auto get = ctl({"get", id});
  ASSERT_EQ(get.code, 0) << get.err;
  EXPECT_NE(get.out.find("cli/a #1  cli-agent  MESSAGE  hello world"), std::string::npos) << get.out;
  EXPECT_NE(get.out.find("meta.k = v"), std::string::npos) << get.out;

  auto ls = ctl({"ls", "cli/a"});
  ASSERT_EQ(ls.code, 0) << ls.err;
  EXPECT_NE(ls.out.find("#1  cli-agent  MESSAGE  hello world\n"), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find("#2  cli-agent  REASONING  line one\n    line two\n"), std::string::npos) << ls.out;
  EXPECT_LT(ls.out.find("#1 "), ls.out.find("#2 "));
  // Timestamps are UTC with milliseconds.
  EXPECT_TRUE(std::regex_search(ls.out, std::regex(R"(^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z  cli/a #1)")))
      << ls.out;

  auto rev = ctl({"ls", "cli/a", "--reverse", "--limit", "1"});
  ASSERT_EQ(rev.code, 0);
  EXPECT_NE(rev.out.find("#2 "), std::string::npos);
  EXPECT_EQ(rev.out.find("#1 "), std::string::npos) << rev.out;

  // Binary payloads are not written to the terminal.
  ASSERT_EQ(ctl({"put", "cli/bin"}, std::string("\x01\x02\xff", 3)).code, 0);
  auto bin = ctl({"ls", "cli/bin"});
  EXPECT_NE(bin.out.find("<3 bytes>"), std::string::npos) << bin.out;
}

TEST_F(EngramctlTest, JsonOutputIsTheWireFormat) {
  ASSERT_EQ(ctl({"put", "cli/j", "one"}).code, 0);
  ASSERT_EQ(ctl({"put", "cli/j", "two"}).code, 0);
  auto ls = ctl({"--json", "ls", "cli/j"});
  ASSERT_EQ(ls.code, 0) << ls.err;
  std::istringstream lines(ls.out);
  std::string line;
  std::vector<json> units;
  while (std::getline(lines, line)) units.push_back(json::parse(line));
  ASSERT_EQ(units.size(), 2u);
  EXPECT_EQ(units[0]["seq"], 1);
  EXPECT_EQ(units[0]["type"], 1);
  EXPECT_EQ(units[0]["payload"], "b25l");  // base64("one")
  EXPECT_TRUE(units[0]["ts"].contains("seconds"));

  auto put = ctl({"put", "cli/j", "three", "--json"});  // global options may follow the command
  ASSERT_EQ(put.code, 0);
  EXPECT_EQ(json::parse(put.out)["seq"], 3);

  auto h = ctl({"health", "--json"});
  ASSERT_EQ(h.code, 0);
  EXPECT_EQ(json::parse(h.out)["status"], "ready");
}

TEST_F(EngramctlTest, ExitCodesSayWhatWentWrong) {
  auto missing = ctl({"get", "01900000-0000-7000-8000-000000000000"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("404"), std::string::npos) << missing.err;
  EXPECT_NE(missing.err.find("Work unit not found"), std::string::npos) << missing.err;

  auto usage = ctl({"put"});
  EXPECT_EQ(usage.code, 2);
  EXPECT_NE(usage.err.find("context is required"), std::string::npos) << usage.err;
  EXPECT_EQ(ctl({"no-such-command"}).code, 2);
  EXPECT_EQ(ctl({"put", "cli/x", "y", "--type", "BOGUS"}).code, 2);
  EXPECT_EQ(ctl({"lock", "acquire", "r", "--ttl", "30"}).code, 2) << "a duration needs a unit";

  ctl_process unreachable(dir_, {"--server", "http://127.0.0.1:1", "health"});
  EXPECT_EQ(unreachable.wait(), 3);
  EXPECT_NE(unreachable.err().find("network"), std::string::npos) << unreachable.err();
  ctl_process bad_url(dir_, {"--server", "ftp://x", "health"});
  EXPECT_EQ(bad_url.wait(), 2);

  for (auto cmd : {std::vector<std::string>{"--help"}, {"put", "--help"}, {"tail", "--help"}, {"lock", "acquire", "--help"},
                   {"ctx", "set", "--help"}, {"search", "--help"}}) {
    auto help = ctl(cmd);
    EXPECT_EQ(help.code, 0) << cmd.front();
    EXPECT_NE(help.out.find("Usage:"), std::string::npos) << help.out;
  }
}

TEST_F(EngramctlTest, ContextsLocksSearchAndHealth) {
  auto set = ctl({"ctx", "set", "cli/c", "--name", "Build", "--add-agent", "a1", "--meta", "owner=ops"});
  ASSERT_EQ(set.code, 0) << set.err;
  auto show = ctl({"ctx", "show", "cli/c"});
  ASSERT_EQ(show.code, 0);
  EXPECT_NE(show.out.find("display_name: Build"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("meta.owner = ops"), std::string::npos) << show.out;
  ASSERT_EQ(ctl({"ctx", "set", "cli/c", "--unset-meta", "owner"}).code, 0);
  EXPECT_EQ(ctl({"ctx", "show", "cli/c"}).out.find("meta.owner"), std::string::npos);
  auto ls = ctl({"ctx", "ls"});
  EXPECT_NE(ls.out.find("cli/c  head #"), std::string::npos) << ls.out;

  auto acquired = ctl({"--json", "lock", "acquire", "cli/res", "--ttl", "30s"});
  ASSERT_EQ(acquired.code, 0) << acquired.err;
  const auto lock = json::parse(acquired.out);
  EXPECT_EQ(lock["holder_agent"], "cli-agent");
  const std::string lock_id = lock["lock_id"];
  ctl_process other(dir_, {"--server", url(), "--agent", "other", "lock", "acquire", "cli/res", "--ttl", "5s"});
  EXPECT_EQ(other.wait(), 1);
  EXPECT_NE(other.err().find("409"), std::string::npos) << other.err();
  EXPECT_NE(ctl({"lock", "ls"}).out.find("cli/res  held by cli-agent"), std::string::npos);
  EXPECT_EQ(ctl({"lock", "renew", "cli/res", "--lock-id", lock_id, "--ttl", "1m"}).code, 0);
  EXPECT_EQ(ctl({"lock", "show", "cli/res"}).code, 0);
  EXPECT_EQ(ctl({"lock", "release", "cli/res", "--lock-id", "wrong"}).code, 1);
  EXPECT_EQ(ctl({"lock", "release", "cli/res", "--lock-id", lock_id}).code, 0);
  EXPECT_EQ(ctl({"lock", "show", "cli/res"}).code, 1);

  ASSERT_EQ(ctl({"put", "cli/s", "the quick brown fox"}).code, 0);
  ASSERT_EQ(ctl({"put", "cli/s", "a lazy dog", "--type", "tool_result"}).code, 0);
  ASSERT_TRUE(wait_until([&] { return ctl({"search", "fox"}).out.starts_with("1 match"); }));
  // Wait for the second unit too: the index may hold the first one only.
  ctl_result typed;
  ASSERT_TRUE(wait_until([&] {
    typed = ctl({"search", "--type", "TOOL_RESULT", "--context", "cli/*"});
    return typed.code == 0 && typed.out.starts_with("1 match");
  })) << typed.code << " " << typed.out << typed.err;
  EXPECT_NE(typed.out.find("cli/s #2"), std::string::npos) << typed.out;

  auto health = ctl({"health"});
  EXPECT_EQ(health.code, 0);
  EXPECT_NE(health.out.find("ready:  yes"), std::string::npos) << health.out;
}

TEST_F(EngramctlTest, TailShowsRecentUnitsAndFollowsLive) {
  for (int i = 1; i <= 5; ++i) ASSERT_EQ(ctl({"put", "cli/t", "old " + std::to_string(i)}).code, 0);
  auto tail = ctl({"tail", "cli/t", "-n", "2"});
  ASSERT_EQ(tail.code, 0);
  EXPECT_EQ(tail.out.find("old 3"), std::string::npos) << tail.out;
  EXPECT_LT(tail.out.find("old 4"), tail.out.find("old 5")) << tail.out;

  ctl_process follow(dir_, {"--server", url(), "tail", "-f", "cli/t", "-n", "1"});
  ASSERT_TRUE(wait_until([&] { return follow.out().find("old 5") != std::string::npos; }));
  ASSERT_EQ(ctl({"put", "cli/t", "live one"}).code, 0);
  ASSERT_TRUE(wait_until([&] { return follow.out().find("live one") != std::string::npos; })) << follow.out();
  // A pattern, from the beginning, in JSON.
  ctl_process pattern(dir_, {"--server", url(), "--json", "tail", "-f", "cli/*", "--since", "0"});
  ASSERT_EQ(ctl({"put", "cli/t2", "elsewhere"}).code, 0);
  ASSERT_TRUE(wait_until([&] { return pattern.out().find("\"context_id\":\"cli/t2\"") != std::string::npos; }))
      << pattern.out();
  follow.signal(SIGINT);
  EXPECT_EQ(follow.wait(), 0) << "Ctrl-C ends tail -f cleanly";
  pattern.signal(SIGTERM);
  EXPECT_EQ(pattern.wait(), 0);
  const auto out = follow.out();
  EXPECT_EQ(out.find("old 4"), std::string::npos);
  EXPECT_EQ(out.find("live one"), out.rfind("live one")) << "printed once";

  EXPECT_EQ(ctl({"tail", "cli/*"}).code, 2) << "a pattern needs -f";
}

TEST(EngramctlRestartTest, TailFollowResumesAcrossAServerKill) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str());
  proc.start();
  const std::string url = "http://127.0.0.1:" + std::to_string(proc.port());
  auto put = [&](const std::string& text) {
    ctl_process p(dir, {"--server", url, "put", "cli/r", text});
    return p.wait();
  };
  ASSERT_EQ(put("before"), 0);
  ctl_process follow(dir, {"--server", url, "tail", "-f", "cli/r", "--since", "0"});
  ASSERT_TRUE(wait_until([&] { return follow.out().find("before") != std::string::npos; }));
  proc.kill9();
  proc.restart();
  ASSERT_EQ(put("after restart"), 0);
  ASSERT_TRUE(wait_until([&] { return follow.out().find("after restart") != std::string::npos; }, 30s))
      << follow.out() << follow.err();
  EXPECT_NE(follow.err().find("reconnecting"), std::string::npos) << follow.err();
  follow.signal(SIGINT);
  EXPECT_EQ(follow.wait(), 0);
  const auto out = follow.out();
  EXPECT_EQ(out.find("before"), out.rfind("before")) << "no duplicate after resuming";
}

// Operators issue tokens with engramctl; agents pass them in $ENGRAM_TOKEN.
TEST(EngramctlAuthTest, IssuedTokensWorkAgainstAnAuthServer) {
  temp_dir dir;
  const std::string secret = "cli-auth-secret-cli-auth-secret-0123456789";
  std::ofstream(dir.str() + "/secret") << secret << "\n";
  auto cfg = test_config(dir.str() + "/data");
  cfg.server.auth.enabled = true;
  cfg.server.auth.secret = secret;
  test_server server(cfg);
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port());
  auto run = [&](std::vector<std::string> args, std::vector<std::string> env = {}) {
    ctl_process p(dir, std::move(args), "", env);
    const int code = p.wait();
    return ctl_result{code, p.out(), p.err()};
  };
  auto issued = run({"token", "issue", "--agent", "alice", "--contexts", "p/*", "--ttl", "1h", "--secret-file",
                     dir.str() + "/secret"});
  ASSERT_EQ(issued.code, 0) << issued.err;
  const std::string token = issued.out.substr(0, issued.out.find('\n'));
  EXPECT_EQ(std::count(token.begin(), token.end(), '.'), 2) << token;
  auto reader = run({"token", "issue", "--agent", "rita", "--contexts", "p/*", "--caps", "read"},
                    {"ENGRAM_AUTH_SECRET=" + secret});
  ASSERT_EQ(reader.code, 0) << reader.err;
  const std::string read_token = reader.out.substr(0, reader.out.find('\n'));

  // The token's subject is the agent ($USER is "tester" and is not sent).
  auto put = run({"--server", url, "put", "p/1", "hello"}, {"ENGRAM_TOKEN=" + token});
  ASSERT_EQ(put.code, 0) << put.err;
  auto ls = run({"--server", url, "ls", "p/1"}, {"ENGRAM_TOKEN=" + read_token});
  ASSERT_EQ(ls.code, 0) << ls.err;
  EXPECT_NE(ls.out.find("alice  MESSAGE  hello"), std::string::npos) << ls.out;
  // Refusals exit 1 with the server's reason.
  auto anonymous = run({"--server", url, "ls", "p/1"});
  EXPECT_EQ(anonymous.code, 1);
  EXPECT_NE(anonymous.err.find("401"), std::string::npos) << anonymous.err;
  auto outside = run({"--server", url, "put", "q/1", "x"}, {"ENGRAM_TOKEN=" + token});
  EXPECT_EQ(outside.code, 1);
  EXPECT_NE(outside.err.find("not allowed"), std::string::npos) << outside.err;
  auto read_only = run({"--server", url, "--token", read_token, "put", "p/1", "x"});
  EXPECT_EQ(read_only.code, 1);
  auto impostor = run({"--server", url, "--agent", "bob", "put", "p/1", "x"}, {"ENGRAM_TOKEN=" + token});
  EXPECT_EQ(impostor.code, 1);
  EXPECT_NE(impostor.err.find("subject"), std::string::npos) << impostor.err;
  // Usage errors: no secret, a bad capability, a bad pattern.
  EXPECT_EQ(run({"token", "issue", "--agent", "a", "--contexts", "x"}).code, 2);
  EXPECT_EQ(run({"token", "issue", "--agent", "a", "--contexts", "x", "--caps", "admin"},
                {"ENGRAM_AUTH_SECRET=" + secret}).code, 2);
  EXPECT_EQ(run({"token", "issue", "--agent", "a", "--contexts", "a*b"}, {"ENGRAM_AUTH_SECRET=" + secret}).code, 2);
  EXPECT_EQ(run({"token", "issue", "--agent", "a", "--contexts", "x"}, {"ENGRAM_AUTH_SECRET=short"}).code, 2);
}

// The SDK quickstart subscribes live-from-now and then appends: it used to hang in
// about one run of three when its units committed before the subscription was
// live. It now waits for the subscription (subscription::wait_live); run it many
// times, each bounded, to show it always finishes.
TEST_F(EngramctlTest, SdkQuickstartExampleAlwaysFinishes) {
  constexpr int runs = 25;
  for (int i = 0; i < runs; ++i) {
    ctl_process example(dir_, {url()}, "", {}, ENGRAM_EXAMPLE_BINARY);
    const auto code = example.wait_for(std::chrono::seconds(60));  // a run takes ~1 s; a hang is forever
    ASSERT_TRUE(code.has_value()) << "run " << i << " hung; output so far:\n" << example.out() << example.err();
    ASSERT_EQ(*code, 0) << "run " << i << ":\n" << example.out() << example.err();
    const auto out = example.out();
    EXPECT_NE(out.find("live #"), std::string::npos) << out;
    EXPECT_NE(out.find("edited under lease: yes"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace engram::test
