// engramctl: Engram from a terminal, built on the C++ SDK.
//
// Exit codes scripts can rely on: 0 ok, 1 the server refused (or answered
// something unusable), 2 usage error, 3 server unreachable.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <deque>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "auth/auth.hpp"
#include "model/clock.hpp"
#include "engram/client.hpp"
#include "output.hpp"

namespace {

namespace ec = engram::client;
using namespace engramctl;

constexpr int exit_ok = 0, exit_refused = 1, exit_usage = 2, exit_unreachable = 3;

int report(const ec::error& e) {
  std::cerr << "engramctl: " << e.describe() << "\n";
  return e.is_network() ? exit_unreachable : exit_refused;
}

// "key=value" flags into a map; CLI11 has already checked each has an '='.
ec::string_map pairs(const std::vector<std::string>& items) {
  ec::string_map out;
  for (const auto& kv : items) {
    const auto eq = kv.find('=');
    out[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return out;
}

const auto key_value = CLI::Validator(
    [](std::string& s) { return s.find('=') == std::string::npos || s.front() == '=' ? "expected key=value" : ""; },
    "KEY=VALUE");
const auto unit_type_name = CLI::Validator(
    [](std::string& s) {
      return ec::parse_unit_type(s) ? std::string() : "unknown type '" + s + "' (MESSAGE, REASONING, TOOL_CALL, …, or 0-8)";
    },
    "TYPE");
// The kinds of events besides work units that a context log holds (README, Leases
// and fencing: Events); `tail --type` takes them beside the unit types.
constexpr std::string_view event_kinds[] = {"context_updated", "lock_acquired", "lock_renewed", "lock_released",
                                            "lock_expired"};
bool is_event_kind(std::string_view s) { return std::ranges::find(event_kinds, s) != std::end(event_kinds); }
const auto unit_or_event_type = CLI::Validator(
    [](std::string& s) {
      if (ec::parse_unit_type(s) || is_event_kind(s)) return std::string();
      return "unknown type '" + s + "' (a unit type: MESSAGE, REASONING, TOOL_CALL, …, or 0-8; or an event: "
             "context_updated, lock_acquired, lock_renewed, lock_released, lock_expired)";
    },
    "TYPE");

// "0.1,-0.2,3e-2": a search vector. Empty on any malformed or non-finite element.
std::vector<float> parse_vector(std::string_view s) {
  std::vector<float> out;
  while (true) {
    const auto comma = s.find(',');
    auto item = s.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty() && item.front() == '+') item.remove_prefix(1);  // from_chars takes no '+'
    float v = 0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || !std::isfinite(v)) return {};
    out.push_back(v);
    if (comma == std::string_view::npos) return out;
    s.remove_prefix(comma + 1);
  }
}
const auto vector_list = CLI::Validator(
    [](std::string& s) {
      return parse_vector(s).empty() ? "expected comma-separated numbers such as 0.12,-0.03,0.5, got '" + s + "'"
                                     : std::string();
    },
    "X,Y,…");

// Durations with a unit: 500ms, 30s, 5m, 1h (stored as milliseconds).
CLI::Validator duration() {
  return CLI::AsNumberWithUnit(std::map<std::string, int64_t>{{"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}},
                               CLI::AsNumberWithUnit::UNIT_REQUIRED, "DURATION");
}

std::string default_agent() {
  if (const char* a = std::getenv("ENGRAM_AGENT")) return a;
  if (const char* u = std::getenv("USER")) return std::string(u);
  return "engramctl";
}

using event_fn = std::function<void(const ec::event&)>;
using cursor_map = std::map<std::string, uint64_t>;

// Which events tail prints (--agent, --type). The stream has no server-side filter
// by agent or type, so this runs here on every event received.
struct event_filter {
  std::set<std::string> agents;          // a unit's author, a lease's holder
  std::set<ec::unit_type> unit_types;    // MESSAGE, …
  std::set<std::string> event_kinds;     // context_updated, lock_acquired, …

  bool matches(const ec::event& ev) const {
    if (!agents.empty()) {
      const std::string* agent = ev.unit ? &ev.unit->agent_id : ev.lock ? &ev.lock->holder_agent : nullptr;
      if (!agent || !agents.contains(*agent)) return false;  // context updates name no agent
    }
    if (unit_types.empty() && event_kinds.empty()) return true;
    return ev.unit ? unit_types.contains(ev.unit->type) : event_kinds.contains(ev.type);
  }
};

// Follows contexts until SIGINT/SIGTERM or a refusal; 0 when stopped by a signal.
// Contexts in `cursors` start after their cursor, the others after `since`
// (nullopt: from now on).
int follow(ec::client& c, std::vector<std::string> contexts, std::optional<uint64_t> since, cursor_map cursors,
           event_fn on_event) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before the subscription thread starts
  ec::subscribe_options opts;
  opts.cursors = std::move(cursors);
  bool connected_once = false;
  opts.on_connected = [&] {
    if (connected_once) std::cerr << "engramctl: resumed\n";
    connected_once = true;
  };
  opts.on_disconnected = [](const ec::error& e) {
    std::cerr << "engramctl: " << e.describe() << "; reconnecting\n";
  };
  auto sub = c.subscribe(std::move(contexts), since, std::move(on_event), std::move(opts));
  const timespec tick{0, 200'000'000};
  while (sub.running()) {
    if (sigtimedwait(&signals, nullptr, &tick) > 0) {
      sub.stop();
      return exit_ok;
    }
  }
  if (auto why = sub.wait()) return report(*why);
  return exit_ok;
}

// Reads the contexts' logs through the stream, the same events in the same form
// as `tail -f`, up to each context's head when the server acknowledged the read:
// contexts in `cursors` after their cursor, the others after `since` (nullopt: not
// at all). Returns where each context started and its head.
ec::result<std::vector<ec::stream_position>> read_to_head(ec::client& c, const std::vector<std::string>& contexts,
                                                          cursor_map cursors, std::optional<uint64_t> since,
                                                          event_fn on_event) {
  ec::subscribe_options opts;
  opts.cursors = std::move(cursors);
  opts.until_head = true;
  auto sub = c.subscribe(contexts, since, std::move(on_event), std::move(opts));
  if (auto why = sub.wait()) return std::unexpected(std::move(*why));
  return sub.positions();
}

// What tail shows of one context before following it: its last matching events,
// oldest first, and the seq they were read up to.
struct recent_events {
  std::deque<ec::event> events;
  uint64_t read_to = 0;
};

// The last `n` events of each context that pass `filter`. Reads back from the
// head in windows of n, 4n, 16n, … events until n pass or the log's start is
// reached, so an unfiltered tail reads n events and a filtered one reads about as
// far back as its matches go.
ec::result<std::map<std::string, recent_events>> last_events(ec::client& c, const std::vector<std::string>& contexts,
                                                             size_t n, const event_filter& filter) {
  // An empty read from now: the heads of the contexts (patterns resolved).
  auto probe = read_to_head(c, contexts, {}, std::nullopt, [](const ec::event&) {});
  if (!probe) return std::unexpected(std::move(probe.error()));
  std::map<std::string, recent_events> out;
  std::set<std::string> pending;  // contexts still short of n matches
  for (const auto& p : *probe) {
    out[p.context_id].read_to = p.head_seq;
    if (n > 0 && p.head_seq > 0) pending.insert(p.context_id);
  }
  for (uint64_t window = n; !pending.empty(); window = window > UINT64_MAX / 4 ? UINT64_MAX : window * 4) {
    cursor_map starts;
    for (const auto& id : pending) starts[id] = out[id].read_to > window ? out[id].read_to - window : 0;
    std::map<std::string, std::deque<ec::event>> got;
    // Contexts not in `starts` (done, or matched since the probe) are not read.
    auto read = read_to_head(c, contexts, starts, std::nullopt, [&](const ec::event& ev) {
      if (!filter.matches(ev)) return;
      auto& list = got[ev.context_id];
      list.push_back(ev);
      if (list.size() > n) list.pop_front();
    });
    if (!read) return std::unexpected(std::move(read.error()));
    std::map<std::string, uint64_t> heads;
    for (const auto& p : *read) heads[p.context_id] = p.head_seq;
    for (const auto& [id, start] : starts) {
      auto& r = out[id];
      r.events = std::move(got[id]);
      if (auto head = heads.find(id); head != heads.end()) r.read_to = std::max(r.read_to, head->second);
      if (r.events.size() >= n || start == 0 || !heads.contains(id)) pending.erase(id);
    }
  }
  return out;
}

// The HS256 secret from a file (trailing newline dropped) or $ENGRAM_AUTH_SECRET.
std::expected<std::string, std::string> read_secret(const std::string& file) {
  std::string secret;
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    secret = ss.str();
  } else if (const char* env = std::getenv("ENGRAM_AUTH_SECRET")) {
    secret = env;
  } else {
    return std::unexpected(std::string("no secret: pass --secret-file or set ENGRAM_AUTH_SECRET"));
  }
  while (!secret.empty() && std::isspace(static_cast<unsigned char>(secret.back()))) secret.pop_back();
  return secret;
}

// What every command shares: the global flags and the action the chosen command
// sets from its parse callback. Lives in main; the callbacks hold a reference.
struct globals {
  std::string server = "http://127.0.0.1:8080", agent = default_agent(), token;
  bool json = false;
  int64_t timeout_ms = 30'000;
  CLI::Option* agent_opt = nullptr;
  bool local_only = false;  // the command never talks to a server (token issue)
  std::function<int(ec::client&)> run;
};

// Each add_* below registers one command's options and its action. The options write
// into a heap struct that the command's callbacks own, so it outlives the function.

void add_global_options(CLI::App& app, globals& g) {
  app.add_option("--server", g.server, "Server URL")->envname("ENGRAM_SERVER")->capture_default_str();
  g.agent_opt = app.add_option("--agent", g.agent, "Agent id to act as (default: $ENGRAM_AGENT, else $USER; "
                                                   "with a token: the token's subject)");
  app.add_option("--token", g.token, "Bearer token for a server with auth enabled (prefer $ENGRAM_TOKEN: "
                                     "arguments are visible to other users)")
      ->envname("ENGRAM_TOKEN");
  app.add_flag("--json", g.json, "Print the server's JSON (one object per line for listings)");
  app.add_option("--timeout", g.timeout_ms, "Per-request timeout (e.g. 5s)")->transform(duration());
}

void add_put(CLI::App& app, globals& g) {
  auto* put = app.add_subcommand("put", "Append a work unit (text from the argument, or stdin)");
  struct args {
    std::string context, text, type = "MESSAGE", key, call_id;
    std::vector<std::string> meta;
    bool raw = false;
  };
  auto a = std::make_shared<args>();
  put->add_option("context", a->context, "Context id")->required();
  put->add_option("text", a->text, "Text payload (default: read stdin, without one trailing newline)");
  put->add_flag("--raw", a->raw, "Store stdin byte for byte, keeping a trailing newline (for binary payloads)");
  put->add_option("--type", a->type, "Unit type")->check(unit_type_name)->capture_default_str();
  put->add_option("--meta", a->meta, "Metadata key=value (repeatable)")->check(key_value);
  put->add_option("--idempotency-key", a->key, "Key that makes retries of this put commit once");
  put->add_option("--call-id", a->call_id, "TOOL_CALL: the call's id; TOOL_RESULT: the call it answers");
  put->callback([put, a, &g] {
    const bool have_text = put->count("text") > 0;
    g.run = [a, have_text, &g](ec::client& c) {
      ec::unit_input u;
      u.context_id = a->context;
      u.type = *ec::parse_unit_type(a->type);
      u.meta = pairs(a->meta);
      u.call_id = a->call_id;
      if (have_text) {
        u.payload = a->text;
      } else {
        u.payload.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
        // `echo hi | engramctl put ctx` stores "hi", as $(…) in a shell would: one
        // line ending (LF or CRLF) goes, the rest of the text stays as it is.
        if (!a->raw && u.payload.ends_with('\n')) {
          u.payload.pop_back();
          if (u.payload.ends_with('\r')) u.payload.pop_back();
        }
      }
      auto r = c.append(u, {.idempotency_key = a->key});
      if (!r) return report(r.error());
      if (g.json) print_unit(std::cout, *r, true);
      else std::cout << r->context_id << " #" << r->seq << "  " << r->id << "\n";
      return exit_ok;
    };
  });
}

void add_get(CLI::App& app, globals& g) {
  auto* get = app.add_subcommand("get", "Show one work unit");
  auto id = std::make_shared<std::string>();
  get->add_option("id", *id, "Work unit id")->required();
  get->callback([id, &g] {
    g.run = [id, &g](ec::client& c) {
      auto r = c.get_unit(*id);
      if (!r) return report(r.error());
      print_unit(std::cout, *r, g.json);
      if (!g.json) {
        std::cout << "  id " << r->id << "\n";
        for (const auto& [k, v] : r->meta) std::cout << "  meta." << k << " = " << v << "\n";
        for (const auto& rel : r->relationships)
          std::cout << "  relationship " << int(rel.type) << " -> " << rel.target_id << "\n";
      }
      return exit_ok;
    };
  });
}

// The tool-call ledger: a call, its result and who holds its lease.
void add_calls(CLI::App& app, globals& g) {
  auto* calls = app.add_subcommand("calls", "The tool-call ledger");
  calls->require_subcommand(1);
  auto* show = calls->add_subcommand("show", "Show a tool call and its result (exit 1 while it is pending)");
  auto args = std::make_shared<std::pair<std::string, std::string>>();
  show->add_option("context", args->first, "Context id")->required();
  show->add_option("call_id", args->second, "The call's id")->required();
  show->callback([args, &g] {
    g.run = [args, &g](ec::client& c) {
      auto r = c.get_tool_call(args->first, args->second);
      if (!r) return report(r.error());
      if (g.json) {
        print_unit(std::cout, r->call, true);
        if (r->result) print_unit(std::cout, *r->result, true);
      } else {
        std::cout << "call    ";
        print_unit(std::cout, r->call, false, true);
        std::cout << "result  ";
        if (r->result) print_unit(std::cout, *r->result, false, true);
        else std::cout << "pending" << (r->claimed_by.empty() ? "" : " (claimed by " + r->claimed_by + ")") << "\n";
      }
      return r->result ? exit_ok : exit_refused;
    };
  });
}

void add_presence(CLI::App& app, globals& g) {
  auto* presence = app.add_subcommand("presence", "List the agents present in a context");
  auto ctx = std::make_shared<std::string>();
  presence->add_option("context", *ctx, "Context id")->required();
  presence->callback([ctx, &g] {
    g.run = [ctx, &g](ec::client& c) {
      auto r = c.presence(*ctx);
      if (!r) return report(r.error());
      for (const auto& a : *r) print_present(std::cout, a, g.json);
      return exit_ok;
    };
  });
}

// A JSON object option's text, checked before anything is sent.
const auto json_object = CLI::Validator(
    [](std::string& s) {
      auto j = nlohmann::json::parse(s, nullptr, false);
      return j.is_object() ? std::string() : "expected a JSON object such as '{\"k\":1}'";
    },
    "JSON");

void add_task_ls(CLI::App& task, globals& g) {
  auto* ls = task.add_subcommand("ls", "List a context's tasks in creation order");
  struct args {
    std::string context, status;
  };
  auto a = std::make_shared<args>();
  ls->add_option("context", a->context, "Context id")->required();
  ls->add_option("--status", a->status, "Only tasks in this state")
      ->check(CLI::IsMember({"open", "claimed", "stranded", "done", "failed"}));
  ls->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      auto r = c.list_tasks(a->context, a->status);
      if (!r) return report(r.error());
      for (const auto& t : *r) print_task(std::cout, t, g.json);
      return exit_ok;
    };
  });
}

void add_task_create(CLI::App& task, globals& g) {
  auto* create = task.add_subcommand("create", "Create a task in a context");
  auto a = std::make_shared<ec::task_input>();
  create->add_option("context", a->context_id, "Context id")->required();
  create->add_option("title", a->title, "What is to be done")->required();
  create->add_option("--id", a->task_id, "The task's id (default: a new UUID)");
  create->add_option("--spec", a->spec_json, "Details, as a JSON object")->check(json_object);
  create->add_option("--depends-on", a->depends_on, "Tasks that must be done before this one can be claimed");
  create->add_option("--max-attempts", a->max_attempts, "Claims before a stranding fails it (default: the server's)");
  create->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      auto r = c.create_task(*a);
      if (!r) return report(r.error());
      print_task(std::cout, *r, g.json);
      return exit_ok;
    };
  });
}

void add_task_show(CLI::App& task, globals& g) {
  auto* show = task.add_subcommand("show", "Show a task");
  auto id = std::make_shared<std::string>();
  show->add_option("task_id", *id, "Task id")->required();
  show->callback([id, &g] {
    g.run = [id, &g](ec::client& c) {
      auto r = c.get_task(*id);
      if (!r) return report(r.error());
      print_task(std::cout, *r, g.json);
      return exit_ok;
    };
  });
}

void add_task_claim(CLI::App& task, globals& g) {
  auto* claim = task.add_subcommand("claim", "Claim a task as --agent (prints its fencing token); keep it with "
                                             "heartbeats, or use `task run`");
  struct args {
    std::string id;
    int64_t ttl_ms = 0;
  };
  auto a = std::make_shared<args>();
  claim->add_option("task_id", a->id, "Task id")->required();
  claim->add_option("--ttl", a->ttl_ms, "How long the claim lasts without a heartbeat (e.g. 30s)")->transform(duration());
  claim->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      auto r = c.claim_task(a->id, std::chrono::milliseconds(a->ttl_ms));
      if (!r) return report(r.error());
      print_task(std::cout, r->claimed, g.json);
      if (!g.json) std::cout << "fence " << r->lease.fencing_token << "\n";
      return exit_ok;
    };
  });
}

void add_task_end(CLI::App& task, globals& g, bool complete) {
  auto* end = task.add_subcommand(complete ? "complete" : "fail",
                                  complete ? "Complete a task you hold" : "Fail a task you hold (final)");
  struct args {
    std::string id, text;
    uint64_t fence = 0;
  };
  auto a = std::make_shared<args>();
  end->add_option("task_id", a->id, "Task id")->required();
  end->add_option("--fence", a->fence, "The claim's fencing token")->required();
  if (complete) end->add_option("--result", a->text, "The result, as a JSON object")->check(json_object);
  else end->add_option("--error", a->text, "Why it failed")->required();
  end->callback([a, complete, &g] {
    g.run = [a, complete, &g](ec::client& c) {
      auto r = complete ? c.complete_task(a->id, a->fence, a->text) : c.fail_task(a->id, a->fence, a->text);
      if (!r) return report(r.error());
      print_task(std::cout, *r, g.json);
      return exit_ok;
    };
  });
}

// Whether `cmd` names an executable file (itself when it has a '/', else on $PATH).
bool on_path(const std::string& cmd) {
  if (cmd.find('/') != std::string::npos) return access(cmd.c_str(), X_OK) == 0;
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/usr/bin:/bin";
  while (true) {
    const auto colon = dirs.find(':');
    const std::string dir(dirs.substr(0, colon));
    if (access(((dir.empty() ? "." : dir) + "/" + cmd).c_str(), X_OK) == 0) return true;
    if (colon == std::string_view::npos) return false;
    dirs.remove_prefix(colon + 1);
  }
}

// Runs `command` while `held` lasts, with ENGRAM_TASK_ID and ENGRAM_TASK_FENCE in its
// environment (built here: setenv would race the heartbeat thread's getenv). The
// task's result on exit 0; throws (failing the task) on any other exit. If the claim
// is lost the command gets SIGTERM, then SIGKILL after 5 s, and nothing is returned.
std::string run_child(const std::vector<std::string>& command, const std::string& task_id, ec::task_run& held) {
  std::vector<std::string> args = command;
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    std::string_view kv = *e;
    if (!kv.starts_with("ENGRAM_TASK_ID=") && !kv.starts_with("ENGRAM_TASK_FENCE=")) env_strings.emplace_back(kv);
  }
  const std::string fence = std::to_string(held.fencing_token());
  env_strings.push_back("ENGRAM_TASK_ID=" + task_id);
  env_strings.push_back("ENGRAM_TASK_FENCE=" + fence);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t child = -1;
  if (posix_spawnp(&child, argv[0], nullptr, nullptr, argv.data(), envp.data()) != 0)
    throw std::runtime_error("cannot run '" + command[0] + "'");
  std::cerr << "engramctl: running task " << task_id << " (fence " << fence << ")\n";
  int status = 0;
  std::optional<std::chrono::steady_clock::time_point> killed_at;
  while (waitpid(child, &status, WNOHANG) == 0) {
    if (held.lost()) {
      const auto now = std::chrono::steady_clock::now();
      if (!killed_at) {
        std::cerr << "engramctl: the claim on task " << task_id << " was lost; stopping the command\n";
        kill(child, SIGTERM);
        killed_at = now;
      } else if (now - *killed_at > std::chrono::seconds(5)) {
        kill(child, SIGKILL);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the child and the claim
  }
  if (killed_at) return {};  // with_task answers 409: the claim was lost
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (code != 0) throw std::runtime_error("the command exited with status " + std::to_string(code));
  return nlohmann::json{{"exit_code", 0}}.dump();
}

// Runs argv as a child process while holding the claim: heartbeats keep the claim,
// exit status 0 completes the task ({"exit_code":0}), anything else fails it. If the
// claim is lost the child gets SIGTERM and nothing is ended.
void add_task_run(CLI::App& task, globals& g) {
  auto* run = task.add_subcommand("run", "Claim a task, run a command while heartbeating, then complete or fail it");
  struct args {
    std::string id;
    int64_t ttl_ms = 30'000;
    std::vector<std::string> command;
  };
  auto a = std::make_shared<args>();
  run->add_option("task_id", a->id, "Task id")->required();
  run->add_option("--ttl", a->ttl_ms, "How long the claim outlives a silent engramctl (e.g. 30s)")->transform(duration());
  run->add_option("command", a->command, "The command (after --)")->required();
  run->callback([a, &g] {
    g.run = [a](ec::client& c) {
      // A command that cannot start must not cost the task an attempt or fail it.
      if (!on_path(a->command[0])) {
        std::cerr << "engramctl: cannot run '" << a->command[0] << "': not found or not executable\n";
        return exit_usage;
      }
      std::optional<ec::result<ec::task>> ended;
      try {
        ended = c.with_task(a->id, std::chrono::milliseconds(a->ttl_ms), [&](ec::task_run& held) -> std::string {
          return run_child(a->command, a->id, held);
        });
      } catch (const std::exception& e) {  // the task was failed with this message
        std::cerr << "engramctl: task " << a->id << " failed: " << e.what() << "\n";
        return exit_refused;
      }
      const auto& r = *ended;
      if (!r) return report(r.error());
      std::cerr << "engramctl: task " << a->id << " done\n";
      return exit_ok;
    };
  });
}

void add_task(CLI::App& app, globals& g) {
  auto* task = app.add_subcommand("task", "Tasks: ls, create, show, claim, complete, fail, run");
  task->require_subcommand(1);
  add_task_ls(*task, g);
  add_task_create(*task, g);
  add_task_show(*task, g);
  add_task_claim(*task, g);
  add_task_end(*task, g, true);
  add_task_end(*task, g, false);
  add_task_run(*task, g);
}

// A fact as one line: key = value, with who set it at which seq (and how it ended).
void print_fact(const ec::fact& f, bool json) {
  if (json) {
    std::cout << f.json << "\n";
    return;
  }
  std::cout << f.key << " = " << f.value_json << "  (seq " << f.set_at_seq << ", " << f.agent_id;
  if (f.status == "disputed") std::cout << ", disputed";
  if (f.confidence) std::cout << ", confidence " << *f.confidence;
  if (f.superseded_at_seq) std::cout << "; " << f.ended_by << " at seq " << f.superseded_at_seq;
  std::cout << ")\n";
}

void add_fact(CLI::App& app, globals& g) {
  auto* fact = app.add_subcommand("fact", "Facts: set, get, ls, rm (what the team currently believes, by key)");
  fact->require_subcommand(1);

  auto* set = fact->add_subcommand("set", "Set a fact as --agent (supersedes the key's active version)");
  struct set_args {
    std::string context, key;
    ec::fact_input in;
    std::optional<double> confidence;
  };
  auto sa = std::make_shared<set_args>();
  set->add_option("context", sa->context, "Context id")->required();
  set->add_option("key", sa->key, "Dotted key, e.g. repo.main_branch")->required();
  set->add_option("value", sa->in.value_json, "The value as JSON (quote strings: '\"main\"')")->required();
  set->add_option("--source", sa->in.sources, "Seq of a unit it rests on (repeatable)");
  set->add_option("--confidence", sa->confidence, "0 to 1")->check(CLI::Range(0.0, 1.0));
  set->add_flag("--disputed", sa->in.disputed, "Mark it disputed rather than active");
  set->add_option("--valid-from", sa->in.valid_from, "RFC 3339 time it holds from");
  set->add_option("--valid-to", sa->in.valid_to, "RFC 3339 time it holds until");
  set->callback([sa, &g] {
    g.run = [sa, &g](ec::client& c) {
      sa->in.confidence = sa->confidence;
      auto r = c.set_fact(sa->context, sa->key, sa->in);
      if (!r) return report(r.error());
      print_fact(*r, g.json);
      return exit_ok;
    };
  });

  struct read_args {
    std::string context, key;
    ec::fact_query q;
  };
  auto add_read_options = [](CLI::App* cmd, read_args& a) {
    cmd->add_option("--as-of", a.q.as_of_seq, "As the log stood at this seq");
    cmd->add_option("--valid-at", a.q.valid_at, "Only facts valid at this RFC 3339 time");
    cmd->add_flag("--history", a.q.include_superseded, "Every version, superseded and retracted ones included");
  };
  auto* get = fact->add_subcommand("get", "Show a key's active fact (--history: every version)");
  auto ga = std::make_shared<read_args>();
  get->add_option("context", ga->context, "Context id")->required();
  get->add_option("key", ga->key, "Fact key")->required();
  add_read_options(get, *ga);
  get->callback([ga, &g] {
    g.run = [ga, &g](ec::client& c) {
      auto r = c.fact_versions(ga->context, ga->key, ga->q);
      if (!r) return report(r.error());
      for (const auto& f : r->facts) print_fact(f, g.json);
      return exit_ok;
    };
  });

  auto* ls = fact->add_subcommand("ls", "List a context's active facts by key");
  auto la = std::make_shared<read_args>();
  ls->add_option("context", la->context, "Context id")->required();
  ls->add_option("--prefix", la->q.prefix, "Only keys starting with this");
  add_read_options(ls, *la);
  ls->callback([la, &g] {
    g.run = [la, &g](ec::client& c) {
      auto r = c.facts(la->context, la->q);
      if (!r) return report(r.error());
      for (const auto& f : r->facts) print_fact(f, g.json);
      if (!g.json) std::cerr << "as of seq " << r->as_of_seq << "\n";
      return exit_ok;
    };
  });

  auto* rm = fact->add_subcommand("rm", "Retract a key's active fact");
  auto ra = std::make_shared<read_args>();
  rm->add_option("context", ra->context, "Context id")->required();
  rm->add_option("key", ra->key, "Fact key")->required();
  rm->callback([ra, &g] {
    g.run = [ra, &g](ec::client& c) {
      auto r = c.retract_fact(ra->context, ra->key);
      if (!r) return report(r.error());
      print_fact(*r, g.json);
      return exit_ok;
    };
  });
}

void add_packet(CLI::App& app, globals& g) {
  auto* cmd = app.add_subcommand(
      "packet", "What an agent should be shown of a context under a token budget: a prompt block (--json: the "
                "packet with each item's why; --explain: what is in and out, and why)");
  struct args {
    std::string context;
    ec::packet_request r;
    std::vector<std::string> sections;
    bool explain = false;
  };
  auto a = std::make_shared<args>();
  cmd->add_option("context", a->context, "Context id")->required();
  cmd->add_option("--for", a->r.agent_id, "Whose packet (default: --agent)");
  cmd->add_option("--query", a->r.query, "Retrieve units about this from the whole history");
  cmd->add_option("--max-tokens", a->r.max_tokens, "The token budget")->capture_default_str()->check(CLI::Range(1, 1000000));
  cmd->add_option("--section", a->sections, "A section's budget, section=tokens (repeatable): pinned, facts, tasks, "
                                            "leases, checkpoint, summaries, retrieved, recent");
  cmd->add_option("--policy", a->r.policy, "default, catch_up, answer or resume");
  cmd->add_option("--policy-json", a->r.policy_json, "Policy overrides as a JSON object");
  cmd->add_option("--purpose", a->r.purpose, "What the packet is for (shown to the model)");
  cmd->add_option("--as-of", a->r.as_of_seq, "As the log stood at this seq (default: the head)");
  cmd->add_option("--since", a->r.since_seq, "Only what changed after this seq");
  cmd->add_flag("--explain", a->explain, "List every item and omission with its score and reason");
  cmd->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      for (const auto& s : a->sections) {
        const auto eq = s.find('=');
        uint32_t tokens = 0;
        const char* end = s.data() + s.size();
        if (eq == std::string::npos || std::from_chars(s.data() + eq + 1, end, tokens).ptr != end) {
          std::cerr << "engramctl: --section takes section=tokens, e.g. recent=2000 (got '" << s << "')\n";
          return exit_usage;
        }
        a->r.section_budgets[s.substr(0, eq)] = tokens;
      }
      a->r.text = !g.json && !a->explain;
      auto p = c.packet(a->context, a->r);
      if (!p) return report(p.error());
      if (!a->explain) {
        std::cout << p->body << (p->body.ends_with('\n') ? "" : "\n");
        return exit_ok;
      }
      std::cout << "as of seq " << p->as_of_seq << ": " << p->used_tokens << " of " << p->max_tokens << " tokens\n";
      for (const auto& i : p->items)
        std::cout << "in   " << i.section << " " << i.kind << " " << (i.seq ? "#" + std::to_string(i.seq) + " " : "")
                  << i.key << "  " << i.tokens << " tokens, score " << i.score << "\n";
      for (const auto& o : p->omitted)
        std::cout << "out  " << o.section << " " << o.kind << " " << (o.seq ? "#" + std::to_string(o.seq) + " " : "")
                  << o.key << "  " << o.tokens << " tokens, score " << o.score << ": " << o.reason
                  << (o.by_seq ? " by #" + std::to_string(o.by_seq) : "") << "\n";
      return exit_ok;
    };
  });
}

// MCP over stdio for clients that launch a command: each line on stdin is a JSON-RPC
// message, POSTed to the server's /mcp; each answer is written to stdout as one
// line. A transport failure answers a request with a JSON-RPC error (so the client
// is never left waiting) and is reported on stderr. Subscriptions need the SSE
// stream the server answers them with, which one answer per line cannot carry, so
// initialize's answer says resources cannot be subscribed to here.
std::string without_subscriptions(std::string answer) {
  auto j = nlohmann::json::parse(answer, nullptr, false);
  const nlohmann::json::json_pointer ptr("/result/capabilities/resources/subscribe");
  if (!j.is_object() || !j.contains(ptr)) return answer;
  j[ptr] = false;
  return j.dump();
}

void add_mcp(CLI::App& app, globals& g) {
  auto* cmd = app.add_subcommand("mcp", "Speak MCP over stdin/stdout, forwarding to the server's /mcp "
                                        "(configure an MCP client to launch: engramctl --server URL mcp)");
  cmd->callback([&g] {
    g.run = [](ec::client& c) {
      std::string line;
      while (std::getline(std::cin, line)) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        auto answer = c.mcp(line);
        if (answer) {
          if (line.find("\"initialize\"") != std::string::npos) *answer = without_subscriptions(std::move(*answer));
          if (!answer->empty()) std::cout << *answer << "\n" << std::flush;
          continue;
        }
        std::cerr << "engramctl mcp: " << answer.error().message << "\n";
        auto msg = nlohmann::json::parse(line, nullptr, false);
        if (msg.is_object() && msg.contains("id") && msg.contains("method"))
          std::cout << nlohmann::json{{"jsonrpc", "2.0"},
                                      {"id", msg["id"]},
                                      {"error", {{"code", -32603}, {"message", "engram: " + answer.error().message}}}}
                           .dump()
                    << "\n"
                    << std::flush;
      }
      return exit_ok;
    };
  });
}

void add_ls(CLI::App& app, globals& g) {
  auto* ls = app.add_subcommand("ls", "List a context's work units, oldest first (each line starts with the unit id)");
  struct args {
    std::string context;
    size_t limit = 100;
    bool reverse = false;
    std::optional<uint64_t> after_seq;
  };
  auto a = std::make_shared<args>();
  ls->add_option("context", a->context, "Context id")->required();
  ls->add_option("--limit", a->limit, "At most this many units (0: all)")->capture_default_str();
  ls->add_flag("--reverse", a->reverse, "Newest first");
  ls->add_option("--after-seq", a->after_seq, "Only units after this seq");
  ls->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      ec::list_options opts;
      opts.limit = a->limit == 0 ? 1000 : std::min<size_t>(a->limit, 1000);
      opts.reverse = a->reverse;
      opts.after_seq = a->after_seq;
      size_t printed = 0;
      for (const auto& u : c.units(a->context, opts)) {
        if (!u) return report(u.error());
        print_unit(std::cout, *u, g.json, /*with_id=*/true);
        if (++printed == a->limit) break;
      }
      return exit_ok;
    };
  });
}

void add_tail(CLI::App& app, globals& g) {
  auto* tail = app.add_subcommand(
      "tail", "Show the last events of contexts (units, context updates, lease events); -f follows them live");
  struct args {
    std::string target;
    bool follow = false;
    std::optional<uint64_t> since;
    size_t lines = 10;
    std::vector<std::string> agents, types;
  };
  auto a = std::make_shared<args>();
  tail->add_option("context", a->target, "Context id, comma-separated ids, or a pattern such as 'project-7/*'")
      ->required();
  tail->add_flag("-f,--follow", a->follow, "Keep following live; resumes across disconnects and restarts");
  tail->add_option("--since", a->since, "Everything after this seq (0: from the beginning) instead of the last -n");
  tail->add_option("-n,--lines", a->lines, "How many recent events of each context to show first")
      ->capture_default_str();
  tail->add_option("--agent", a->agents,
                   "Only events by these agents: units they wrote, leases they hold (repeatable or a,b)")
      ->delimiter(',');
  tail->add_option("--type", a->types,
                   "Only these unit types (MESSAGE, …) or events (context_updated, lock_acquired, …) "
                   "(repeatable or a,b)")
      ->delimiter(',')
      ->check(unit_or_event_type);
  tail->callback([a, &g] {
    g.run = [a, &g](ec::client& c) -> int {
      std::vector<std::string> contexts;
      for (auto s = std::string_view(a->target); !s.empty();) {
        const auto comma = s.find(',');
        if (auto one = s.substr(0, comma); !one.empty()) contexts.emplace_back(one);
        s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
      }
      event_filter filter;
      filter.agents.insert(a->agents.begin(), a->agents.end());
      for (const auto& t : a->types) {
        if (auto unit = ec::parse_unit_type(t)) filter.unit_types.insert(*unit);
        else filter.event_kinds.insert(t);
      }
      auto print = [filter, json = g.json](const ec::event& ev) {
        if (filter.matches(ev)) print_event(std::cout, ev, json);
      };
      // Both modes read the stream, so tail and tail -f show the same events: the
      // REST listing (/workunits) holds work units only.
      if (a->since) {
        if (a->follow) return follow(c, std::move(contexts), a->since, {}, print);
        auto read = read_to_head(c, contexts, {}, a->since, print);
        return read ? exit_ok : report(read.error());
      }
      auto recent = last_events(c, contexts, a->lines, filter);
      if (!recent) return report(recent.error());
      cursor_map cursors;
      for (const auto& [id, r] : *recent) {
        for (const auto& ev : r.events) print_event(std::cout, ev, g.json);
        cursors[id] = r.read_to;
      }
      std::cout.flush();
      if (!a->follow) return exit_ok;
      // A context that a pattern comes to match later is new: it is followed from 0.
      return follow(c, std::move(contexts), 0, std::move(cursors), print);
    };
  });
}

void add_ctx_show(CLI::App& ctx, globals& g) {
  auto* show = ctx.add_subcommand("show", "Show a context");
  auto id = std::make_shared<std::string>();
  show->add_option("id", *id, "Context id")->required();
  show->callback([id, &g] {
    g.run = [id, &g](ec::client& c) {
      auto r = c.get_context(*id);
      if (!r) return report(r.error());
      print_context(std::cout, *r, g.json, true);
      return exit_ok;
    };
  });
}

void add_ctx_set(CLI::App& ctx, globals& g) {
  auto* set = ctx.add_subcommand("set", "Create or update a context");
  struct args {
    std::string id;
    std::optional<std::string> name;
    std::vector<std::string> add_agents, remove_agents, pin, unpin, meta, unset_meta;
  };
  auto a = std::make_shared<args>();
  set->add_option("id", a->id, "Context id")->required();
  set->add_option("--name", a->name, "Display name");
  set->add_option("--add-agent", a->add_agents, "Add an agent (repeatable)");
  set->add_option("--remove-agent", a->remove_agents, "Remove an agent (repeatable)");
  set->add_option("--pin", a->pin, "Pin a unit id (repeatable)");
  set->add_option("--unpin", a->unpin, "Unpin a unit id (repeatable)");
  set->add_option("--meta", a->meta, "Set metadata key=value (repeatable)")->check(key_value);
  set->add_option("--unset-meta", a->unset_meta, "Delete a metadata key (repeatable)");
  set->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      ec::context_patch p;
      p.display_name = a->name;
      p.add_agents = a->add_agents;
      p.remove_agents = a->remove_agents;
      p.pin_units = a->pin;
      p.unpin_units = a->unpin;
      for (const auto& [k, v] : pairs(a->meta)) p.meta[k] = v;
      for (const auto& k : a->unset_meta) p.meta[k] = std::nullopt;
      auto r = c.patch_context(a->id, p);
      if (!r) return report(r.error());
      print_context(std::cout, *r, g.json, true);
      return exit_ok;
    };
  });
}

void add_ctx_ls(CLI::App& ctx, globals& g) {
  auto* ls = ctx.add_subcommand("ls", "List contexts in id order");
  auto limit = std::make_shared<size_t>(100);
  ls->add_option("--limit", *limit, "At most this many (0: all)")->capture_default_str();
  ls->callback([limit, &g] {
    g.run = [limit, &g](ec::client& c) {
      size_t printed = 0;
      for (const auto& one : c.contexts(*limit == 0 ? 1000 : std::min<size_t>(*limit, 1000))) {
        if (!one) return report(one.error());
        print_context(std::cout, *one, g.json, false);
        if (++printed == *limit) break;
      }
      return exit_ok;
    };
  });
}

void add_ctx(CLI::App& app, globals& g) {
  auto* ctx = app.add_subcommand("ctx", "Contexts: show, set, ls");
  ctx->require_subcommand(1);
  add_ctx_show(*ctx, g);
  add_ctx_set(*ctx, g);
  add_ctx_ls(*ctx, g);
}

void add_lock_acquire(CLI::App& lock, globals& g) {
  auto* acquire = lock.add_subcommand("acquire", "Acquire one lease, or several all-or-nothing");
  struct args {
    std::vector<std::string> resources;
    std::string context;
    int64_t ttl_ms = 30'000, wait_ms = 0;
  };
  auto a = std::make_shared<args>();
  acquire->add_option("resource", a->resources, "Resource path(s)")->required();
  acquire->add_option("--ttl", a->ttl_ms, "Lease time to live (e.g. 30s)")->transform(duration());
  acquire->add_option("--wait", a->wait_ms, "Wait up to this long for a held resource (e.g. 10s)")
      ->transform(duration());
  acquire->add_option("--context", a->context, "Record the lease's transitions in this context");
  acquire->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      ec::lock_request req;
      req.resources = a->resources;
      req.ttl = std::chrono::milliseconds(a->ttl_ms);
      req.wait = std::chrono::milliseconds(a->wait_ms);
      req.context_id = a->context;
      auto r = c.acquire(req);
      if (!r) return report(r.error());
      for (const auto& l : *r) print_lock(std::cout, l, g.json);
      return exit_ok;
    };
  });
}

// The lease renew and release name: resource and lock_id, held by --agent.
struct held_lease {
  std::string resource, lock_id;
  ec::lock as_lock(const globals& g) const {
    ec::lock held;
    held.resource_path = resource;
    held.lock_id = lock_id;
    held.holder_agent = g.agent;
    return held;
  }
};

void add_lock_renew(CLI::App& lock, globals& g) {
  auto* renew = lock.add_subcommand("renew", "Renew a lease you hold");
  struct args : held_lease {
    int64_t ttl_ms = 30'000;
  };
  auto a = std::make_shared<args>();
  renew->add_option("resource", a->resource, "Resource path")->required();
  renew->add_option("--lock-id", a->lock_id, "The lock_id acquire printed")->required();
  renew->add_option("--ttl", a->ttl_ms, "New time to live (e.g. 30s)")->transform(duration());
  renew->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      auto r = c.renew(a->as_lock(g), std::chrono::milliseconds(a->ttl_ms));
      if (!r) return report(r.error());
      print_lock(std::cout, *r, g.json);
      return exit_ok;
    };
  });
}

void add_lock_release(CLI::App& lock, globals& g) {
  auto* release = lock.add_subcommand("release", "Release a lease you hold");
  auto a = std::make_shared<held_lease>();
  release->add_option("resource", a->resource, "Resource path")->required();
  release->add_option("--lock-id", a->lock_id, "The lock_id acquire printed")->required();
  release->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      auto r = c.release(a->as_lock(g));
      if (!r) return report(r.error());
      std::cout << (g.json ? R"({"released":true})" : "released " + a->resource) << "\n";
      return exit_ok;
    };
  });
}

void add_lock_show(CLI::App& lock, globals& g) {
  auto* show = lock.add_subcommand("show", "Show the live lease on a resource");
  auto resource = std::make_shared<std::string>();
  show->add_option("resource", *resource, "Resource path")->required();
  show->callback([resource, &g] {
    g.run = [resource, &g](ec::client& c) {
      auto r = c.get_lock(*resource);
      if (!r) return report(r.error());
      print_lock(std::cout, *r, g.json);
      return exit_ok;
    };
  });
}

void add_lock_ls(CLI::App& lock, globals& g) {
  auto* ls = lock.add_subcommand("ls", "List live leases");
  struct args {
    std::string holder, prefix;
  };
  auto a = std::make_shared<args>();
  ls->add_option("--holder", a->holder, "Only leases held by this agent");
  ls->add_option("--prefix", a->prefix, "Only resources starting with this");
  ls->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      auto r = c.list_locks(a->holder, a->prefix);
      if (!r) return report(r.error());
      for (const auto& l : *r) print_lock(std::cout, l, g.json);
      return exit_ok;
    };
  });
}

void add_lock(CLI::App& app, globals& g) {
  auto* lock = app.add_subcommand("lock", "Leases: acquire, renew, release, show, ls");
  lock->require_subcommand(1);
  add_lock_acquire(*lock, g);
  add_lock_renew(*lock, g);
  add_lock_release(*lock, g);
  add_lock_show(*lock, g);
  add_lock_ls(*lock, g);
}

// Search hits carry id, context and seq; the server does not send who wrote the
// unit or its type yet, so they come from the units themselves, fetched 8 at a time
// (only for hits that lack them). A hit whose unit cannot be read prints "?".
void fill_hit_authors(ec::client& c, ec::search_result& r) {
  std::vector<ec::search_hit*> missing;
  for (auto& h : r.hits)
    if (h.agent_id.empty() || !h.type) missing.push_back(&h);
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next++) < missing.size();)
      if (auto u = c.get_unit(missing[i]->id)) {
        missing[i]->agent_id = u->agent_id;
        missing[i]->type = u->type;
      }
  };
  std::vector<std::jthread> workers;
  for (size_t k = 0; k < std::min<size_t>(8, missing.size()); ++k) workers.emplace_back(work);
}

void add_search(CLI::App& app, globals& g) {
  auto* search = app.add_subcommand("search", "Search all history (keyword, semantic, hybrid)");
  struct args {
    std::string query, context, mode, vector, model;
    std::vector<std::string> agents, types, meta;
    size_t limit = 20, offset = 0;
  };
  auto a = std::make_shared<args>();
  search->add_option("query", a->query, "Query text (Xapian syntax: words, \"phrases\", AND/OR/NOT, prefix*)");
  search->add_option("--context", a->context, "A context id or pattern such as 'project-7/*'");
  search->add_option("--agent", a->agents, "Only these agents (repeatable, any of)");
  search->add_option("--type", a->types, "Only these types (repeatable, any of)")->check(unit_type_name);
  search->add_option("--meta", a->meta, "Only units with meta key=value (repeatable, all of)")->check(key_value);
  search->add_option("--mode", a->mode, "keyword, semantic or hybrid (default: the server decides)")
      ->check(CLI::IsMember({"keyword", "semantic", "hybrid"}));
  search->add_option("--vector", a->vector,
                     "Query embedding for semantic search, e.g. 0.12,-0.03,0.5 (with query text: hybrid)")
      ->check(vector_list);
  search->add_option("--model", a->model, "Embedding model (space) of --vector (default: the server's \"default\")");
  search->add_option("--limit", a->limit, "Hits per page")->capture_default_str();
  search->add_option("--offset", a->offset, "Skip this many hits");
  search->callback([a, &g] {
    g.run = [a, &g](ec::client& c) {
      ec::search_request req;
      req.query = a->query;
      req.context_id = a->context;
      req.agent_ids = a->agents;
      for (const auto& t : a->types) req.types.push_back(*ec::parse_unit_type(t));
      req.meta_filters = pairs(a->meta);
      req.mode = a->mode;
      req.limit = a->limit;
      req.offset = a->offset;
      req.vector = parse_vector(a->vector);
      req.embedding_model = a->model;
      auto r = c.search(req);
      if (!r) return report(r.error());
      if (!g.json) fill_hit_authors(c, *r);
      print_search(std::cout, *r, g.json);
      return exit_ok;
    };
  });
}

void add_token(CLI::App& app, globals& g) {
  auto* token = app.add_subcommand("token", "Operator tools for bearer tokens");
  token->require_subcommand(1);
  auto* issue = token->add_subcommand("issue", "Issue an HS256 token signed with the server's auth.secret "
                                               "(from --secret-file or $ENGRAM_AUTH_SECRET)");
  struct args {
    std::string agent, secret_file, issuer, audience;
    std::vector<std::string> contexts;
    std::vector<std::string> caps{"read", "write", "lock"};
    int64_t ttl_ms = 3'600'000;
  };
  auto a = std::make_shared<args>();
  issue->add_option("--agent", a->agent, "The token's subject: the agent it acts as")->required();
  issue->add_option("--contexts", a->contexts, "Context patterns it may use, e.g. 'project-7/*' (repeatable)")
      ->required();
  issue->add_option("--caps", a->caps, "Capabilities on those patterns")
      ->delimiter(',')
      ->check(CLI::IsMember({"read", "write", "lock"}))
      ->capture_default_str();
  issue->add_option("--ttl", a->ttl_ms, "Lifetime (e.g. 1h, 30m)")->transform(duration());
  issue->add_option("--secret-file", a->secret_file, "File holding the HS256 secret")->check(CLI::ExistingFile);
  issue->add_option("--issuer", a->issuer, "iss claim (when the server checks auth.issuer)");
  issue->add_option("--audience", a->audience, "aud claim (when the server checks auth.audience)");
  issue->callback([a, &g] {
    g.local_only = true;
    g.run = [a](ec::client&) {
      auto secret = read_secret(a->secret_file);
      if (!secret) {
        std::cerr << "engramctl: " << secret.error() << "\n";
        return exit_usage;
      }
      engram::auth::token_request req;
      req.agent = a->agent;
      uint8_t caps = 0;
      for (const auto& c : a->caps) caps |= *engram::auth::parse_capability(c);
      for (const auto& p : a->contexts) req.grants.push_back({p, caps});
      if (auto ok = engram::auth::parse_grants(engram::auth::grants_json(req.grants)); !ok) {
        std::cerr << "engramctl: " << ok.error().message << "\n";
        return exit_usage;
      }
      req.ttl = std::chrono::seconds(std::max<int64_t>(1, a->ttl_ms / 1000));
      req.now = engram::model::default_clock()->now_s();
      req.issuer = a->issuer;
      req.audience = a->audience;
      auto t = engram::auth::issue(req, engram::auth::algorithm::hs256, *secret);
      if (!t) {
        std::cerr << "engramctl: " << t.error().message << "\n";
        return exit_usage;
      }
      std::cout << *t << "\n";
      return exit_ok;
    };
  });
}

// JSON Lines on stdout: every event of each matching context, in seq order, as the
// server gives them (units keep their ids, seqs and timestamps).
void add_export(CLI::App& app, globals& g) {
  auto* exp = app.add_subcommand("export", "Write contexts as JSON Lines (every event, in seq order) to stdout");
  auto patterns = std::make_shared<std::vector<std::string>>();
  exp->add_option("contexts", *patterns, "Context ids or patterns (p/*); all contexts when none");
  exp->callback([patterns, &g] {
    g.run = [patterns](ec::client& c) {
      std::vector<std::string> ids;
      for (const auto& ctx : c.contexts(1000)) {
        if (!ctx) return report(ctx.error());
        const auto& id = ctx->id;
        if (patterns->empty() || std::any_of(patterns->begin(), patterns->end(),
                                             [&](const auto& p) { return engram::auth::pattern_matches(p, id); }))
          ids.push_back(id);
      }
      size_t events = 0;
      for (const auto& id : ids) {
        uint64_t after = 0;
        for (bool more = true; more;) {
          auto page = c.list_events(id, after);
          if (!page) return report(page.error());
          for (const auto& e : page->events) std::cout << e << "\n";
          events += page->events.size();
          after = page->next_after_seq;
          more = page->more;
        }
      }
      std::cout.flush();
      std::cerr << "exported " << events << " events of " << ids.size() << " contexts\n";
      return std::cout ? exit_ok : exit_refused;
    };
  });
}

// Reads JSON Lines as `export` writes them (one context after another, each in seq
// order) and appends each context's events to the server in chunks, keeping seqs,
// ids and times. Events a context already has (seq <= its head) are skipped, so an
// interrupted import can simply be run again.
void add_import(CLI::App& app, globals& g) {
  auto* imp = app.add_subcommand("import", "Load JSON Lines written by export (seqs, ids and times kept)");
  auto file = std::make_shared<std::string>("-");
  imp->add_option("file", *file, "The export to read ('-' or none: stdin)");
  imp->callback([file, &g] {
    g.run = [file](ec::client& c) {
      std::ifstream opened;
      if (*file != "-") {
        opened.open(*file);
        if (!opened) {
          std::cerr << "engramctl: cannot read " << *file << "\n";
          return exit_usage;
        }
      }
      std::istream& in = *file == "-" ? std::cin : opened;
      constexpr size_t max_events = 1000, max_bytes = 512 * 1024;  // a request stays under the body limit
      std::string context;     // the context being imported
      uint64_t head = 0;       // its head_seq on the server
      bool verified = false;   // its events the server has are the export's
      std::vector<std::string> chunk;
      size_t chunk_bytes = 0, imported = 0, skipped = 0, contexts = 0, line_no = 0;
      auto flush = [&]() -> std::optional<int> {
        if (chunk.empty()) return std::nullopt;
        auto r = c.import_events(context, chunk);
        if (!r) return report(r.error());
        imported += chunk.size();
        head = *r;
        chunk.clear();
        chunk_bytes = 0;
        return std::nullopt;
      };
      for (std::string line; std::getline(in, line);) {
        ++line_no;
        if (line.empty()) continue;
        const auto ev = nlohmann::json::parse(line, nullptr, false);
        if (!ev.is_object() || !ev.contains("context_id") || !ev["context_id"].is_string() ||
            !ev.contains("seq") || !ev["seq"].is_number_unsigned()) {
          std::cerr << "engramctl: line " << line_no << " is not an exported event (JSON with context_id and seq)\n";
          return exit_usage;
        }
        const auto& id = ev["context_id"].get_ref<const std::string&>();
        if (id != context) {
          if (auto failed = flush()) return *failed;
          context = id;
          verified = false;
          ++contexts;
          auto existing = c.get_context(context);
          if (existing) head = existing->head_seq;
          else if (existing.error().status == 404) head = 0;
          else return report(existing.error());
        }
        const uint64_t seq = ev["seq"].get<uint64_t>();
        if (seq <= head) {
          // Skip only the same history: the first event skipped must be the server's.
          if (!verified) {
            auto there = c.list_events(context, seq - 1, 1);
            if (!there) return report(there.error());
            const auto theirs = there->events.empty() ? nlohmann::json() : nlohmann::json::parse(there->events[0]);
            const bool same = theirs.is_object() && theirs.value("seq", uint64_t(0)) == seq &&
                              (ev.contains("id") ? theirs.value("id", "") == ev["id"] : theirs["type"] == ev["type"]);
            if (!same) {
              std::cerr << "engramctl: context " << context << " on the server holds another event at seq " << seq
                        << " than the export (a different history); nothing of it was imported\n";
              return exit_refused;
            }
            verified = true;
          }
          ++skipped;
          continue;
        }
        if (chunk.size() == max_events || (chunk_bytes + line.size() > max_bytes && !chunk.empty()))
          if (auto failed = flush()) return *failed;
        chunk_bytes += line.size() + 1;
        chunk.push_back(std::move(line));
      }
      if (auto failed = flush()) return *failed;
      std::cerr << "imported " << imported << " events into " << contexts << " contexts";
      if (skipped) std::cerr << " (" << skipped << " already there, skipped)";
      std::cerr << "\n";
      return exit_ok;
    };
  });
}

void add_backup(CLI::App& app, globals& g) {
  auto* backup = app.add_subcommand(
      "backup", "Back up the whole server while it serves, into a new directory inside its storage.backup_dir");
  auto dir = std::make_shared<std::string>();
  backup->add_option("dir", *dir, "The backup's directory, relative to the server's storage.backup_dir")->required();
  backup->callback([dir, &g] {
    g.run = [dir, &g](ec::client& c) {
      auto r = c.backup(*dir);
      if (!r) return report(r.error());
      if (g.json) std::cout << nlohmann::json{{"dir", r->dir}, {"seconds", r->seconds}}.dump() << "\n";
      else std::cout << r->dir << "\n";
      return exit_ok;
    };
  });
}

void add_health(CLI::App& app, globals& g) {
  auto* health = app.add_subcommand("health", "Is the server up and ready? (exit 0 ready, 1 not ready, 3 unreachable)");
  health->callback([&g] {
    g.run = [&g](ec::client& c) {
      auto r = c.health();
      if (!r) return report(r.error());
      print_health(std::cout, *r, g.json);
      return r->ready ? exit_ok : exit_refused;
    };
  });
}

// Builds the client from the global flags and runs the chosen command.
int run_command(globals& g) {
  ec::client_options opts;
  opts.url = g.local_only ? std::string("http://127.0.0.1:8080") : g.server;
  opts.token = g.token;
  // With a token the server knows who we are; send an agent only if asked to.
  const bool agent_given = g.agent_opt->count() > 0 || std::getenv("ENGRAM_AGENT");
  opts.agent_id = g.token.empty() || agent_given ? g.agent : std::string();
  opts.timeout = std::chrono::milliseconds(g.timeout_ms);
  auto made = ec::client::create(std::move(opts));
  if (!made) {
    std::cerr << "engramctl: " << made.error().message << "\n";
    return exit_usage;
  }
  return g.run(*made);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engramctl: append to, read, follow, lock and search an Engram server"};
  app.set_version_flag("--version", "engramctl " ENGRAM_VERSION);
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the command
  globals g;
  add_global_options(app, g);
  add_put(app, g);
  add_get(app, g);
  add_ls(app, g);
  add_tail(app, g);
  add_ctx(app, g);
  add_lock(app, g);
  add_calls(app, g);
  add_presence(app, g);
  add_fact(app, g);
  add_packet(app, g);
  add_mcp(app, g);
  add_task(app, g);
  add_search(app, g);
  add_token(app, g);
  add_backup(app, g);
  add_export(app, g);
  add_import(app, g);
  add_health(app, g);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_ok : exit_usage;
  }
  return run_command(g);
}
