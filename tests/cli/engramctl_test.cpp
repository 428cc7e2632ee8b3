// engramctl as users run it: the real binary against the real server (in-process),
// checking output and exit codes (0 ok, 1 refused, 2 usage, 3 unreachable), and
// `tail -f` receiving live units and resuming across a server restart.
#include <gtest/gtest.h>

#include <filesystem>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "engram/client.hpp"
#include "support/server_process.hpp"
#include "support/test_support.hpp"

extern char** environ;

namespace engram::test {
namespace {

using namespace std::chrono_literals;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

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
  // engramctl acting as another agent.
  int ctl_as(const std::string& agent, std::vector<std::string> args) {
    args.insert(args.begin(), {"--server", url(), "--agent", agent});
    ctl_process p(dir_, std::move(args));
    return p.wait();
  }

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
  // Each line starts with the unit id; timestamps are UTC with milliseconds.
  EXPECT_TRUE(std::regex_search(ls.out, std::regex("^" + id + R"(  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z  cli/a #1)")))
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

  // A pattern without -f: the last events of each context it matches.
  auto of_pattern = ctl({"tail", "cli/*", "-n", "1"});
  ASSERT_EQ(of_pattern.code, 0) << of_pattern.err;
  EXPECT_NE(of_pattern.out.find("cli/t #6  cli-agent  MESSAGE  live one"), std::string::npos) << of_pattern.out;
  EXPECT_NE(of_pattern.out.find("cli/t2 #1  cli-agent  MESSAGE  elsewhere"), std::string::npos) << of_pattern.out;
  EXPECT_EQ(of_pattern.out.find("old 5"), std::string::npos) << of_pattern.out;
}

// engramctl backup asks the server for a consistent copy (into its backup
// directory); a server started on the copy is the restore.
TEST_F(EngramctlTest, BackupWritesACopyAServerCanStartFrom) {
  ASSERT_EQ(ctl({"put", "cli/b", "kept by the backup"}).code, 0);
  auto made = ctl({"backup", "nightly/1"});
  ASSERT_EQ(made.code, 0) << made.err;
  std::string path = made.out.substr(0, made.out.find('\n'));
  EXPECT_TRUE(path.ends_with("/data-backups/nightly/1")) << made.out;
  EXPECT_TRUE(std::filesystem::exists(path + "/CURRENT")) << path;
  auto again = ctl({"backup", "nightly/1"});
  EXPECT_EQ(again.code, 1);
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
  auto outside = ctl({"backup", "../elsewhere"});
  EXPECT_EQ(outside.code, 1);
  EXPECT_NE(outside.err.find("inside the backup directory"), std::string::npos) << outside.err;
  EXPECT_EQ(ctl({"backup"}).code, 2);  // the directory is required

  test_server restored(test_config(path));
  ctl_process ls(dir_, {"--server", "http://127.0.0.1:" + std::to_string(restored.port()), "ls", "cli/b"});
  EXPECT_EQ(ls.wait(), 0);
  EXPECT_NE(ls.out().find("kept by the backup"), std::string::npos) << ls.out();
}

// engramctl export writes every event of the matching contexts as JSON Lines, in
// seq order, exactly as GET /contexts/{id}/events gives them.
TEST_F(EngramctlTest, ExportWritesEveryEventAsJsonLines) {
  ASSERT_EQ(ctl({"put", "cli/x/a", "first"}).code, 0);
  ASSERT_EQ(ctl({"ctx", "set", "cli/x/a", "--name", "Exported"}).code, 0);
  ASSERT_EQ(ctl({"lock", "acquire", "cli/x/file", "--context", "cli/x/a", "--ttl", "30s"}).code, 0);
  ASSERT_EQ(ctl({"put", "cli/x/b", "other context"}).code, 0);
  ASSERT_EQ(ctl({"put", "cli/y", "not exported"}).code, 0);
  auto exported = ctl({"export", "cli/x/*"});
  ASSERT_EQ(exported.code, 0) << exported.err;
  std::vector<json> lines;
  std::istringstream in(exported.out);
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 4u) << exported.out;
  auto http = server_.connect();
  const auto a = call(http, "GET", "/contexts/cli/x/a/events").body["events"];
  const auto b = call(http, "GET", "/contexts/cli/x/b/events").body["events"];
  EXPECT_EQ(json(std::vector<json>(lines.begin(), lines.begin() + 3)), a);
  EXPECT_EQ(lines[3], b[0]);
  EXPECT_EQ(lines[1]["type"], "context_updated");
  EXPECT_EQ(lines[2]["type"], "lock_acquired");
  EXPECT_NE(exported.err.find("exported 4 events of 2 contexts"), std::string::npos) << exported.err;
  EXPECT_NE(ctl({"export"}).out.find("\"context_id\":\"cli/y\""), std::string::npos);  // all contexts by default
  EXPECT_EQ(ctl({"export", "cli/none"}).out, "");
}

// The tool-call ledger from the command line: put --call-id, calls show.
TEST_F(EngramctlTest, CallsShowTheLedger) {
  ASSERT_EQ(ctl({"put", "cli/t", "run(x)", "--type", "TOOL_CALL", "--call-id", "k1"}).code, 0);
  auto pending = ctl({"calls", "show", "cli/t", "k1"});
  EXPECT_EQ(pending.code, 1);
  EXPECT_NE(pending.out.find("pending"), std::string::npos) << pending.out;
  EXPECT_NE(pending.out.find("run(x)"), std::string::npos) << pending.out;
  ASSERT_EQ(ctl({"put", "cli/t", "42", "--type", "TOOL_RESULT", "--call-id", "k1"}).code, 0);
  auto second = ctl({"put", "cli/t", "43", "--type", "TOOL_RESULT", "--call-id", "k1"});
  EXPECT_EQ(second.code, 1);
  EXPECT_NE(second.err.find("has a result already"), std::string::npos) << second.err;
  auto done = ctl({"calls", "show", "cli/t", "k1"});
  EXPECT_EQ(done.code, 0) << done.err;
  EXPECT_NE(done.out.find("42"), std::string::npos) << done.out;
  auto missing = ctl({"calls", "show", "cli/t", "nope"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("no tool call 'nope'"), std::string::npos) << missing.err;
}

TEST_F(EngramctlTest, TasksAndPresence) {
  auto created = ctl({"task", "create", "cli/w", "Write the docs", "--id", "docs", "--spec", R"({"pages":3})"});
  ASSERT_EQ(created.code, 0) << created.err;
  EXPECT_TRUE(created.out.starts_with("docs  open  attempt 0/3  Write the docs")) << created.out;
  EXPECT_EQ(ctl({"task", "create", "cli/w", "x", "--spec", "[1]"}).code, 2);  // not an object: refused locally
  auto claimed = ctl({"task", "claim", "docs", "--ttl", "30s"});
  ASSERT_EQ(claimed.code, 0) << claimed.err;
  EXPECT_NE(claimed.out.find("claimed by cli-agent"), std::string::npos) << claimed.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(claimed.out, m, std::regex(R"(fence (\d+))"))) << claimed.out;
  const std::string fence = m[1];
  EXPECT_EQ(ctl_as("other", {"task", "claim", "docs"}), 1);
  auto stale = ctl({"task", "complete", "docs", "--fence", fence + "9"});
  EXPECT_EQ(stale.code, 1);
  EXPECT_NE(stale.err.find("stale fencing token"), std::string::npos) << stale.err;
  auto done = ctl({"task", "complete", "docs", "--fence", fence, "--result", R"({"pages":3})"});
  ASSERT_EQ(done.code, 0) << done.err;
  EXPECT_NE(done.out.find("docs  done (last held by cli-agent)"), std::string::npos) << done.out;
  auto ls = ctl({"task", "ls", "cli/w", "--status", "done", "--json"});
  ASSERT_EQ(ls.code, 0) << ls.err;
  ASSERT_EQ(lines_of(ls.out).size(), 1u) << ls.out;
  EXPECT_EQ(json::parse(ls.out)["result"]["pages"], 3);
  EXPECT_EQ(ctl({"task", "ls", "cli/w", "--status", "busy"}).code, 2);

  // task run: the command's exit status completes or fails the task.
  ASSERT_EQ(ctl({"task", "create", "cli/w", "Succeeds", "--id", "ok"}).code, 0);
  ASSERT_EQ(ctl({"task", "create", "cli/w", "Fails", "--id", "bad"}).code, 0);
  auto ran = ctl({"task", "run", "ok", "--", "sh", "-c", "test -n \"$ENGRAM_TASK_FENCE\""});
  EXPECT_EQ(ran.code, 0) << ran.err;
  EXPECT_NE(ctl({"task", "show", "ok"}).out.find("ok  done"), std::string::npos);
  auto failed = ctl({"task", "run", "bad", "--", "false"});
  EXPECT_EQ(failed.code, 1);
  EXPECT_NE(failed.err.find("exited with status 1"), std::string::npos) << failed.err;
  auto shown = ctl({"task", "show", "bad"});
  EXPECT_NE(shown.out.find("bad  failed"), std::string::npos) << shown.out;
  EXPECT_NE(shown.out.find("error the command exited with status 1"), std::string::npos) << shown.out;

  // presence lists who heartbeats into a context.
  auto c = *client::client::create({.url = url(), .agent_id = "beater"});
  ASSERT_TRUE(c.heartbeat({"cli/w"}, "reviewing"));
  auto present = ctl({"presence", "cli/w"});
  ASSERT_EQ(present.code, 0) << present.err;
  EXPECT_TRUE(present.out.starts_with("beater  joined ")) << present.out;
  EXPECT_NE(present.out.find("reviewing"), std::string::npos) << present.out;
}

// fact set / ls / get --history / rm, through the SDK's fact calls; bad input
// exits non-zero with the server's message.
TEST_F(EngramctlTest, FactsSetListHistoryAndRetract) {
  ASSERT_EQ(ctl({"put", "cli/f", "we branch from trunk"}).code, 0);
  auto set = ctl({"fact", "set", "cli/f", "repo.branch", "\"trunk\"", "--source", "1", "--confidence", "0.5"});
  ASSERT_EQ(set.code, 0) << set.err;
  EXPECT_EQ(set.out, "repo.branch = \"trunk\"  (seq 2, cli-agent, confidence 0.5)\n");
  ASSERT_EQ(ctl({"fact", "set", "cli/f", "repo.branch", "\"main\"", "--disputed"}).code, 0);
  ASSERT_EQ(ctl({"fact", "set", "cli/f", "team.lead", "{\"name\":\"ana\"}"}).code, 0);
  auto ls = ctl({"fact", "ls", "cli/f", "--prefix", "repo."});
  ASSERT_EQ(ls.code, 0) << ls.err;
  EXPECT_EQ(ls.out, "repo.branch = \"main\"  (seq 3, cli-agent, disputed)\n");
  EXPECT_EQ(ls.err, "as of seq 4\n");
  auto then = ctl({"fact", "ls", "cli/f", "--as-of", "2"});
  EXPECT_EQ(then.out, "repo.branch = \"trunk\"  (seq 2, cli-agent, confidence 0.5)\n");
  auto history = ctl({"fact", "get", "cli/f", "repo.branch", "--history"});
  EXPECT_EQ(history.out,
            "repo.branch = \"trunk\"  (seq 2, cli-agent, confidence 0.5; superseded at seq 3)\n"
            "repo.branch = \"main\"  (seq 3, cli-agent, disputed)\n");
  auto json_out = ctl({"--json", "fact", "get", "cli/f", "team.lead"});
  ASSERT_EQ(json_out.code, 0) << json_out.err;
  EXPECT_EQ(nlohmann::json::parse(json_out.out)["value"]["name"], "ana");
  ASSERT_EQ(ctl({"fact", "rm", "cli/f", "team.lead"}).code, 0);
  auto gone = ctl({"fact", "get", "cli/f", "team.lead"});
  EXPECT_NE(gone.code, 0);
  EXPECT_NE(gone.err.find("no active fact 'team.lead'"), std::string::npos) << gone.err;
  auto bad = ctl({"fact", "set", "cli/f", "bad..key", "1"});
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("empty segment"), std::string::npos) << bad.err;
  EXPECT_NE(ctl({"fact", "set", "cli/f", "k", "not json"}).code, 0);
}

// packet: the prompt block by default, --explain lists what is in and out (the SDK's
// decoded items and omissions), --json the server's packet; bad input exits 2 or
// with the server's message.
TEST_F(EngramctlTest, PacketAsTextExplainedAndJson) {
  ASSERT_EQ(ctl({"put", "cli/p", "deploy with blue-green"}).code, 0);
  ASSERT_EQ(ctl({"put", "cli/p", "the rollback took four minutes"}).code, 0);
  ASSERT_EQ(ctl({"fact", "set", "cli/p", "repo.branch", "\"trunk\""}).code, 0);
  ASSERT_EQ(ctl({"fact", "set", "cli/p", "repo.branch", "\"main\""}).code, 0);
  auto text = ctl({"packet", "cli/p", "--max-tokens", "100"});
  ASSERT_EQ(text.code, 0) << text.err;
  EXPECT_TRUE(text.out.starts_with("Current time: ")) << text.out;
  EXPECT_NE(text.out.find("You are: cli-agent\n"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("- repo.branch = \"main\" (set by cli-agent at #4"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("] cli-agent (MESSAGE): the rollback took four minutes\n"), std::string::npos) << text.out;

  auto explain = ctl({"packet", "cli/p", "--max-tokens", "8", "--section", "facts=2", "--explain"});
  ASSERT_EQ(explain.code, 0) << explain.err;
  EXPECT_TRUE(explain.out.starts_with("as of seq 4: ")) << explain.out;
  EXPECT_NE(explain.out.find("out  facts fact #3 repo.branch  "), std::string::npos) << explain.out;
  EXPECT_NE(explain.out.find(": superseded by #4\n"), std::string::npos) << explain.out;
  EXPECT_NE(explain.out.find("out  facts fact #4 repo.branch  5 tokens"), std::string::npos) << explain.out;
  EXPECT_NE(explain.out.find(": section_budget\n"), std::string::npos) << explain.out;

  auto json_out = ctl({"--json", "packet", "cli/p", "--for", "someone", "--as-of", "2"});
  ASSERT_EQ(json_out.code, 0) << json_out.err;
  auto j = nlohmann::json::parse(json_out.out);
  EXPECT_EQ(j["agent_id"], "someone");
  EXPECT_EQ(j["meta"]["as_of_seq"], 2);
  EXPECT_EQ(j["items"].size(), 2u);

  auto bad_section = ctl({"packet", "cli/p", "--section", "recent"});
  EXPECT_EQ(bad_section.code, 2);
  EXPECT_NE(bad_section.err.find("--section takes section=tokens"), std::string::npos) << bad_section.err;
  auto unknown = ctl({"packet", "cli/p", "--section", "inbox=5"});
  EXPECT_NE(unknown.code, 0);
  EXPECT_NE(unknown.err.find("budget.sections.inbox: unknown section"), std::string::npos) << unknown.err;
  EXPECT_NE(ctl({"packet", "cli/p", "--policy", "turbo"}).err.find("unknown policy 'turbo'"), std::string::npos);
}

// A holder paused (SIGSTOP) past its claim's TTL is declared dead: the task is
// stranded and claimed by another agent. Resumed, the old holder cannot complete it
// (409), and the new holder can.
TEST_F(EngramctlTest, TaskRunPausedPastItsTtlCannotComplete) {
  ASSERT_EQ(ctl({"task", "create", "cli/p", "Long job", "--id", "long"}).code, 0);
  const std::string flag = dir_.str() + "/finish";
  ctl_process holder(dir_, {"--server", url(), "--agent", "sleepy", "task", "run", "long", "--ttl", "1s", "--", "sh",
                            "-c", "while [ ! -e " + flag + " ]; do sleep 0.05; done"});
  auto c = *client::client::create({.url = url(), .agent_id = "fresh"});
  auto status = [&] {
    auto t = c.get_task("long");
    return t ? t->status + "/" + t->holder_agent : t.error().describe();
  };
  ASSERT_TRUE(wait_until([&] { return status() == "claimed/sleepy"; }, 30s)) << status();
  holder.signal(SIGSTOP);
  ASSERT_TRUE(wait_until([&] { return status() == "stranded/"; }, 30s)) << status();
  auto taken = c.claim_task("long", 30s);
  ASSERT_TRUE(taken) << taken.error().describe();
  EXPECT_EQ(taken->claimed.last_holder, "sleepy");
  std::ofstream(flag) << "go";  // the old holder's command finishes…
  holder.signal(SIGCONT);       // …and its engramctl wakes up
  const auto code = holder.wait_for(60s);
  ASSERT_TRUE(code.has_value()) << holder.err();
  EXPECT_EQ(*code, 1) << holder.err();
  EXPECT_NE(holder.err().find("409"), std::string::npos) << holder.err();
  EXPECT_EQ(status(), "claimed/fresh");
  auto done = c.complete_task("long", taken->lease.fencing_token);
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->status, "done");

  // A holder whose command never ends: woken, it finds the claim gone, stops the
  // command and ends nothing.
  ASSERT_EQ(ctl({"task", "create", "cli/p", "Endless job", "--id", "endless"}).code, 0);
  const std::string pidfile = dir_.str() + "/endless.pid";
  ctl_process endless(dir_, {"--server", url(), "--agent", "sleepy", "task", "run", "endless", "--ttl", "1s", "--",
                             "sh", "-c", "echo $$ > " + pidfile + "; exec sleep 600"});
  auto endless_status = [&] {
    auto t = c.get_task("endless");
    return t ? t->status + "/" + t->holder_agent : t.error().describe();
  };
  ASSERT_TRUE(wait_until([&] { return endless_status() == "claimed/sleepy" && !slurp(pidfile).empty(); }, 30s));
  const pid_t child = std::stoi(slurp(pidfile));
  endless.signal(SIGSTOP);
  ASSERT_TRUE(wait_until([&] { return endless_status() == "stranded/"; }, 30s)) << endless_status();
  auto retaken = c.claim_task("endless", 30s);
  ASSERT_TRUE(retaken) << retaken.error().describe();
  endless.signal(SIGCONT);
  const auto endless_code = endless.wait_for(60s);
  ASSERT_TRUE(endless_code.has_value()) << endless.err();
  EXPECT_EQ(*endless_code, 1) << endless.err();
  EXPECT_NE(endless.err().find("was lost"), std::string::npos) << endless.err();
  EXPECT_NE(::kill(child, 0), 0) << "the command outlived the lost claim";
  EXPECT_EQ(endless_status(), "claimed/fresh");
}

// export, then import into an empty server: every event comes back at its seq, with
// its id and time; contexts, search and later appends work on the copy.
TEST_F(EngramctlTest, ImportReloadsAnExportIntoAnEmptyServer) {
  auto http = server_.connect();
  ASSERT_EQ(ctl({"put", "cli/i/a", "first line\nsecond line"}).code, 0);
  ASSERT_EQ(ctl({"ctx", "set", "cli/i/a", "--name", "Imported", "--meta", "k=v"}).code, 0);
  ASSERT_EQ(ctl({"lock", "acquire", "cli/i/file", "--context", "cli/i/a", "--ttl", "30s"}).code, 0);
  ASSERT_EQ(ctl({"put", "cli/i/a", "after the lease", "--type", "reasoning"}).code, 0);
  for (int b = 0; b < 3; ++b) {  // 1500 events: more than one request
    json units = json::array();
    for (int i = 0; i < 500; ++i) units.push_back({{"text", "osprey " + std::to_string(b * 500 + i)}, {"meta", {{"n", "x"}}}});
    ASSERT_EQ(call(http, "POST", "/workunits", json({{"context_id", "cli/i/b"}, {"agent_id", "w"}, {"work_units", units}}).dump()).status,
              201u);
  }
  auto exported = ctl({"export", "cli/i/*"});
  ASSERT_EQ(exported.code, 0) << exported.err;
  const std::string file = dir_.str() + "/export.jsonl";
  std::ofstream(file) << exported.out;

  temp_dir other;
  test_server copy(other);
  const std::string copy_url = "http://127.0.0.1:" + std::to_string(copy.port());
  ctl_process imp(dir_, {"--server", copy_url, "import", file});
  ASSERT_EQ(imp.wait(), 0) << imp.err();
  EXPECT_NE(imp.err().find("imported 1504 events into 2 contexts"), std::string::npos) << imp.err();

  auto copy_http = copy.connect();
  for (const std::string ctx : {"cli/i/a", "cli/i/b"}) {
    std::vector<json> original, imported;
    for (auto* h : {&http, &copy_http}) {
      auto& out = h == &http ? original : imported;
      for (uint64_t after = 0;;) {
        auto r = call(*h, "GET", "/contexts/" + ctx + "/events?limit=1000&after_seq=" + std::to_string(after));
        ASSERT_EQ(r.status, 200u) << r.raw;
        for (auto& e : r.body["events"]) out.push_back(e);
        after = r.body["next_after_seq"];
        if (!r.body["more"].get<bool>()) break;
      }
    }
    EXPECT_EQ(original, imported) << ctx;
    EXPECT_EQ(call(http, "GET", "/contexts/" + ctx).body, call(copy_http, "GET", "/contexts/" + ctx).body) << ctx;
  }
  const std::string some_id = json::parse(exported.out.substr(0, exported.out.find('\n')))["id"];
  EXPECT_EQ(call(http, "GET", "/workunit/" + some_id).body, call(copy_http, "GET", "/workunit/" + some_id).body);
  EXPECT_TRUE(wait_until([&] { return call(copy_http, "GET", "/search?q=osprey&limit=1").body["total_count"] == 1500; }, 30s));

  // Running it again adds nothing; the copy goes on from the imported head.
  ctl_process again(dir_, {"--server", copy_url, "import", file});
  ASSERT_EQ(again.wait(), 0) << again.err();
  EXPECT_NE(again.err().find("imported 0 events into 2 contexts (1504 already there, skipped)"), std::string::npos)
      << again.err();
  auto next = call(copy_http, "POST", "/workunit", R"({"context_id":"cli/i/a","agent_id":"a","text":"next"})");
  EXPECT_EQ(next.body["work_unit"]["seq"], 5);

  // A context holding another history under the same id is refused, not merged.
  temp_dir third;
  test_server elsewhere(third);
  auto elsewhere_http = elsewhere.connect();
  ASSERT_EQ(call(elsewhere_http, "POST", "/workunit", R"({"context_id":"cli/i/a","agent_id":"z","text":"mine"})").status, 201u);
  ctl_process clash(dir_, {"--server", "http://127.0.0.1:" + std::to_string(elsewhere.port()), "import", file});
  EXPECT_EQ(clash.wait(), 1);
  EXPECT_NE(clash.err().find("another event at seq 1"), std::string::npos) << clash.err();
  EXPECT_EQ(call(elsewhere_http, "GET", "/contexts/cli/i/a").body["context"]["head_seq"], 1);

  // Lines that are not exported events are refused before anything is sent.
  ctl_process bad(dir_, {"--server", copy_url, "import", "-"}, "{\"context_id\":\"cli/i/c\",\"seq\":1}\nnot json\n");
  EXPECT_EQ(bad.wait(), 2);
  EXPECT_NE(bad.err().find("line 2"), std::string::npos) << bad.err();
  EXPECT_EQ(call(copy_http, "GET", "/contexts/cli/i/c").status, 404u);
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

// Issue 17: `ls` printed no ids, so the README's next step (`engramctl get 019a…`)
// had nothing to take. Each line now starts with the unit id.
TEST_F(EngramctlTest, LsStartsEachLineWithTheIdThatGetTakes) {
  ASSERT_EQ(ctl({"put", "cli/ids", "first"}).code, 0);
  ASSERT_EQ(ctl({"put", "cli/ids", "second"}).code, 0);
  auto ls = ctl({"ls", "cli/ids", "--reverse", "--limit", "1"});
  ASSERT_EQ(ls.code, 0) << ls.err;
  const std::string id = ls.out.substr(0, ls.out.find(' '));
  EXPECT_TRUE(std::regex_match(id, std::regex("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"))) << ls.out;
  auto get = ctl({"get", id});
  ASSERT_EQ(get.code, 0) << get.err;
  EXPECT_NE(get.out.find("cli/ids #2  cli-agent  MESSAGE  second"), std::string::npos) << get.out;
}

// Issue 17: `echo hi | engramctl put ctx` stored "hi\n". One trailing line ending
// is dropped from stdin (--raw keeps the bytes as they are); an argument is stored
// as given.
TEST_F(EngramctlTest, PutFromStdinDropsOneTrailingNewline) {
  auto sdk = client::client::create({.url = url(), .agent_id = "reader"});
  ASSERT_TRUE(sdk) << sdk.error().describe();
  auto stored = [&](const std::string& input, std::vector<std::string> args) -> std::string {
    args.insert(args.begin(), {"--json", "put", "cli/nl"});
    auto put = ctl(args, input);
    if (put.code != 0) return "exit " + std::to_string(put.code) + ": " + put.err;
    auto unit = sdk->get_unit(json::parse(put.out)["id"].get<std::string>());
    return unit ? unit->payload : unit.error().describe();
  };
  EXPECT_EQ(stored("hi\n", {}), "hi");
  EXPECT_EQ(stored("two lines\nand a blank one\n\n", {}), "two lines\nand a blank one\n") << "one newline only";
  EXPECT_EQ(stored("crlf\r\n", {}), "crlf");
  EXPECT_EQ(stored("no newline", {}), "no newline");
  EXPECT_EQ(stored("kept\n", {"--raw"}), "kept\n");
  EXPECT_EQ(stored("", {"argument\n"}), "argument\n");
}

// Issue 17: `tail` (from REST /workunits) showed work units only, while `tail -f`
// (the stream) also showed context updates and lease events. Both read the stream
// now, so they print the same lines.
TEST_F(EngramctlTest, TailShowsTheSameEventsAsTailFollow) {
  ASSERT_EQ(ctl({"put", "cli/ev", "one"}).code, 0);
  ASSERT_EQ(ctl({"ctx", "set", "cli/ev", "--name", "Events"}).code, 0);
  auto acquired = ctl({"--json", "lock", "acquire", "cli/ev-res", "--context", "cli/ev"});
  ASSERT_EQ(acquired.code, 0) << acquired.err;
  const std::string lock_id = json::parse(acquired.out)["lock_id"];
  ASSERT_EQ(ctl({"lock", "release", "cli/ev-res", "--lock-id", lock_id}).code, 0);
  ASSERT_EQ(ctl({"put", "cli/ev", "two"}).code, 0);

  ctl_process follow(dir_, {"--server", url(), "tail", "-f", "cli/ev", "--since", "0"});
  ASSERT_TRUE(wait_until([&] { return follow.out().find("MESSAGE  two") != std::string::npos; })) << follow.out();
  follow.signal(SIGINT);
  ASSERT_EQ(follow.wait(), 0);
  const std::string followed = follow.out();
  for (const char* kind : {"  context_updated", "  lock_acquired  cli/ev-res by cli-agent", "  lock_released"})
    EXPECT_NE(followed.find(kind), std::string::npos) << kind << " in\n" << followed;

  auto tail = ctl({"tail", "cli/ev", "-n", "100"});
  ASSERT_EQ(tail.code, 0) << tail.err;
  EXPECT_EQ(tail.out, followed);
  auto since = ctl({"tail", "cli/ev", "--since", "0"});
  ASSERT_EQ(since.code, 0) << since.err;
  EXPECT_EQ(since.out, followed);
  // -n counts events, the newest last.
  const auto all = lines_of(followed);
  ASSERT_GE(all.size(), 5u);
  auto last_two = ctl({"tail", "cli/ev", "-n", "2"});
  ASSERT_EQ(last_two.code, 0) << last_two.err;
  EXPECT_EQ(lines_of(last_two.out), std::vector<std::string>(all.end() - 2, all.end())) << last_two.out;
  // --json: the stream's objects, one per line.
  auto as_json = ctl({"--json", "tail", "cli/ev", "-n", "100"});
  ASSERT_EQ(as_json.code, 0) << as_json.err;
  std::vector<std::string> types;
  for (const auto& line : lines_of(as_json.out)) {
    const auto j = json::parse(line);
    types.push_back(j["type"].is_string() ? j["type"].get<std::string>() : "unit");
  }
  EXPECT_EQ(types.size(), all.size());
  EXPECT_NE(std::find(types.begin(), types.end(), "lock_released"), types.end()) << as_json.out;
  // A context that does not exist has nothing to show.
  auto none = ctl({"tail", "cli/no-such-context"});
  EXPECT_EQ(none.code, 0) << none.err;
  EXPECT_EQ(none.out, "");
  // A bounded read gives up on an unreachable server like every other command.
  ctl_process unreachable(dir_, {"--server", "http://127.0.0.1:1", "tail", "cli/ev"});
  const auto code = unreachable.wait_for(std::chrono::seconds(60));
  ASSERT_TRUE(code.has_value()) << "tail kept retrying";
  EXPECT_EQ(*code, 3) << unreachable.err();
  EXPECT_NE(unreachable.err().find("network"), std::string::npos) << unreachable.err();
}

// Issue 17: tail and tail -f filter by agent and type (client-side: the stream has
// no such filter), --agent/--type repeated or comma-separated.
TEST_F(EngramctlTest, TailFiltersByAgentAndType) {
  ASSERT_EQ(ctl_as("a1", {"put", "cli/flt", "a1 says"}), 0);
  for (int i = 0; i < 30; ++i)
    ASSERT_EQ(ctl_as("a2", {"put", "cli/flt", "a2 thinks " + std::to_string(i), "--type", "REASONING"}), 0);
  ASSERT_EQ(ctl_as("a1", {"lock", "acquire", "cli/flt-res", "--context", "cli/flt"}), 0);

  auto by_a1 = ctl({"tail", "cli/flt", "--agent", "a1"});
  ASSERT_EQ(by_a1.code, 0) << by_a1.err;
  EXPECT_NE(by_a1.out.find("a1  MESSAGE  a1 says"), std::string::npos) << by_a1.out;
  EXPECT_NE(by_a1.out.find("lock_acquired  cli/flt-res by a1"), std::string::npos) << by_a1.out;
  EXPECT_EQ(by_a1.out.find("a2 thinks"), std::string::npos) << by_a1.out;
  // The one MESSAGE is 31 events back: tail reads back until it has -n matches.
  auto message = ctl({"tail", "cli/flt", "-n", "1", "--type", "message"});
  ASSERT_EQ(message.code, 0) << message.err;
  EXPECT_EQ(lines_of(message.out).size(), 1u) << message.out;
  EXPECT_NE(message.out.find("a1 says"), std::string::npos) << message.out;
  auto two_kinds = ctl({"tail", "cli/flt", "-n", "2", "--type", "REASONING,lock_acquired"});
  ASSERT_EQ(two_kinds.code, 0) << two_kinds.err;
  const auto kinds = lines_of(two_kinds.out);
  ASSERT_EQ(kinds.size(), 2u) << two_kinds.out;
  EXPECT_NE(kinds[0].find("a2 thinks 29"), std::string::npos) << two_kinds.out;
  EXPECT_NE(kinds[1].find("lock_acquired"), std::string::npos) << two_kinds.out;
  auto repeated = ctl({"tail", "cli/flt", "--agent", "nobody", "--agent", "a1", "--type", "MESSAGE"});
  ASSERT_EQ(repeated.code, 0) << repeated.err;
  EXPECT_EQ(lines_of(repeated.out).size(), 1u) << repeated.out;

  auto bad = ctl({"tail", "cli/flt", "--type", "MESSAGE,bogus"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("unknown type 'bogus'"), std::string::npos) << bad.err;

  // Live, from the current head: only a2's messages.
  auto head = ctl({"--json", "ctx", "show", "cli/flt"});
  ASSERT_EQ(head.code, 0) << head.err;
  const std::string since = std::to_string(json::parse(head.out)["head_seq"].get<uint64_t>());
  ctl_process follow(dir_, {"--server", url(), "tail", "-f", "cli/flt", "--since", since, "--agent", "a2", "--type",
                            "MESSAGE"});
  ASSERT_EQ(ctl_as("a1", {"put", "cli/flt", "a1 live"}), 0);
  ASSERT_EQ(ctl_as("a2", {"put", "cli/flt", "a2 thinks live", "--type", "REASONING"}), 0);
  ASSERT_EQ(ctl_as("a2", {"put", "cli/flt", "a2 live"}), 0);
  ASSERT_TRUE(wait_until([&] { return follow.out().find("a2 live") != std::string::npos; })) << follow.out();
  follow.signal(SIGINT);
  EXPECT_EQ(follow.wait(), 0);
  EXPECT_EQ(lines_of(follow.out()).size(), 1u) << follow.out();
}

// Issue 17: --version was an unknown option (exit 2).
TEST(EngramctlVersionTest, VersionPrintsTheProjectVersion) {
  temp_dir dir;
  ctl_process version(dir, {"--version"});
  EXPECT_EQ(version.wait(), 0) << version.err();
  EXPECT_EQ(version.out(), "engramctl " ENGRAM_VERSION "\n");
}

// Issue 17: search takes a query vector (--vector, --model) for semantic and hybrid
// search, and each hit shows who wrote the unit and its type.
TEST_F(EngramctlTest, SearchByVectorAndHitsShowAgentAndType) {
  auto sdk = client::client::create({.url = url(), .agent_id = "vec-agent"});
  ASSERT_TRUE(sdk) << sdk.error().describe();
  auto near = sdk->append({.context_id = "cli/vec", .type = client::unit_type::reasoning, .payload = "close to x",
                           .embedding = {1, 0, 0}, .embedding_model = "cli-model"});
  ASSERT_TRUE(near) << near.error().describe();
  auto far = sdk->append({.context_id = "cli/vec", .type = client::unit_type::tool_call, .payload = "far from x",
                          .embedding = {0, 1, 0}, .embedding_model = "cli-model"});
  ASSERT_TRUE(far) << far.error().describe();

  ctl_result semantic;
  ASSERT_TRUE(wait_until([&] {
    semantic = ctl({"search", "--vector", "0.9,0.1,+0", "--model", "cli-model", "--mode", "semantic", "--limit", "1"});
    return semantic.code == 0 && semantic.out.find("cli/vec #") != std::string::npos;
  })) << semantic.code << " " << semantic.out << semantic.err;
  EXPECT_TRUE(std::regex_search(semantic.out, std::regex(R"(^\d+\+? match\(es\), semantic\n)"))) << semantic.out;
  EXPECT_NE(semantic.out.find("cli/vec #1  vec-agent  REASONING  " + near->id + "  score "), std::string::npos)
      << semantic.out;
  EXPECT_EQ(semantic.out.find(far->id), std::string::npos) << semantic.out;

  ctl_result hybrid;
  ASSERT_TRUE(wait_until([&] {
    hybrid = ctl({"search", "far", "--vector", "0,1,0", "--model", "cli-model"});
    return hybrid.code == 0 && hybrid.out.find(far->id) != std::string::npos;
  })) << hybrid.code << " " << hybrid.out << hybrid.err;
  EXPECT_NE(hybrid.out.find(", hybrid"), std::string::npos) << hybrid.out;
  EXPECT_NE(hybrid.out.find("cli/vec #2  vec-agent  TOOL_CALL  " + far->id), std::string::npos) << hybrid.out;

  auto as_json = ctl({"--json", "search", "--vector", "1,0,0", "--model", "cli-model", "--mode", "semantic"});
  ASSERT_EQ(as_json.code, 0) << as_json.err;
  EXPECT_EQ(json::parse(as_json.out)["hits"][0]["id"], near->id) << as_json.out;

  for (const char* bad : {"", "1,,2", "1,x", "1,nan", "0.5 0.5"}) {
    auto r = ctl({"search", "--vector", bad});
    EXPECT_EQ(r.code, 2) << "'" << bad << "': " << r.out;
    EXPECT_NE(r.err.find("--vector: expected comma-separated numbers"), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace engram::test
