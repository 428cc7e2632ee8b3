// engramctl: Engram from a terminal, built on the C++ SDK.
//
// Exit codes scripts can rely on: 0 ok, 1 the server refused (or answered
// something unusable), 2 usage error, 3 server unreachable.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <sstream>
#include <iterator>
#include <map>

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

bool is_pattern(const std::string& ctx) { return ctx.ends_with('*') || ctx.find(',') != std::string::npos; }

// Follows contexts until SIGINT/SIGTERM or a refusal; 0 when stopped by a signal.
int follow(ec::client& c, std::vector<std::string> contexts, std::optional<uint64_t> since, bool json) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before the subscription thread starts
  ec::subscribe_options opts;
  bool connected_once = false;
  opts.on_connected = [&] {
    if (connected_once) std::cerr << "engramctl: resumed\n";
    connected_once = true;
  };
  opts.on_disconnected = [](const ec::error& e) {
    std::cerr << "engramctl: " << e.describe() << "; reconnecting\n";
  };
  auto sub = c.subscribe(std::move(contexts), since, [&](const ec::event& ev) { print_event(std::cout, ev, json); },
                         std::move(opts));
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engramctl: append to, read, follow, lock and search an Engram server"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the command
  std::string server = "http://127.0.0.1:8080", agent = default_agent();
  bool json = false;
  int64_t timeout_ms = 30'000;
  app.add_option("--server", server, "Server URL")->envname("ENGRAM_SERVER")->capture_default_str();
  std::string token;
  auto* agent_opt = app.add_option("--agent", agent, "Agent id to act as (default: $ENGRAM_AGENT, else $USER; "
                                                     "with a token: the token's subject)");
  app.add_option("--token", token, "Bearer token for a server with auth enabled (prefer $ENGRAM_TOKEN: "
                                   "arguments are visible to other users)")
      ->envname("ENGRAM_TOKEN");
  app.add_flag("--json", json, "Print the server's JSON (one object per line for listings)");
  app.add_option("--timeout", timeout_ms, "Per-request timeout (e.g. 5s)")->transform(duration());

  std::function<int(ec::client&)> run;

  // put ------------------------------------------------------------------------------
  auto* put = app.add_subcommand("put", "Append a work unit (text from the argument, or stdin)");
  struct {
    std::string context, text, type = "MESSAGE", key;
    std::vector<std::string> meta;
    bool have_text = false;
  } put_args;
  put->add_option("context", put_args.context, "Context id")->required();
  put->add_option("text", put_args.text, "Text payload (default: read stdin)");
  put->add_option("--type", put_args.type, "Unit type")->check(unit_type_name)->capture_default_str();
  put->add_option("--meta", put_args.meta, "Metadata key=value (repeatable)")->check(key_value);
  put->add_option("--idempotency-key", put_args.key, "Key that makes retries of this put commit once");
  put->callback([&] {
    put_args.have_text = put->count("text") > 0;
    run = [&](ec::client& c) {
      ec::unit_input u;
      u.context_id = put_args.context;
      u.type = *ec::parse_unit_type(put_args.type);
      u.meta = pairs(put_args.meta);
      u.payload = put_args.have_text ? put_args.text
                                     : std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
      auto r = c.append(u, {.idempotency_key = put_args.key});
      if (!r) return report(r.error());
      if (json) print_unit(std::cout, *r, true);
      else std::cout << r->context_id << " #" << r->seq << "  " << r->id << "\n";
      return exit_ok;
    };
  });

  // get ------------------------------------------------------------------------------
  auto* get = app.add_subcommand("get", "Show one work unit");
  std::string get_id;
  get->add_option("id", get_id, "Work unit id")->required();
  get->callback([&] {
    run = [&](ec::client& c) {
      auto r = c.get_unit(get_id);
      if (!r) return report(r.error());
      print_unit(std::cout, *r, json);
      if (!json) {
        std::cout << "  id " << r->id << "\n";
        for (const auto& [k, v] : r->meta) std::cout << "  meta." << k << " = " << v << "\n";
        for (const auto& rel : r->relationships)
          std::cout << "  relationship " << int(rel.type) << " -> " << rel.target_id << "\n";
      }
      return exit_ok;
    };
  });

  // ls -------------------------------------------------------------------------------
  auto* ls = app.add_subcommand("ls", "List a context's work units, oldest first");
  struct {
    std::string context;
    size_t limit = 100;
    bool reverse = false;
    std::optional<uint64_t> after_seq;
  } ls_args;
  ls->add_option("context", ls_args.context, "Context id")->required();
  ls->add_option("--limit", ls_args.limit, "At most this many units (0: all)")->capture_default_str();
  ls->add_flag("--reverse", ls_args.reverse, "Newest first");
  ls->add_option("--after-seq", ls_args.after_seq, "Only units after this seq");
  ls->callback([&] {
    run = [&](ec::client& c) {
      ec::list_options opts;
      opts.limit = ls_args.limit == 0 ? 1000 : std::min<size_t>(ls_args.limit, 1000);
      opts.reverse = ls_args.reverse;
      opts.after_seq = ls_args.after_seq;
      size_t printed = 0;
      for (const auto& u : c.units(ls_args.context, opts)) {
        if (!u) return report(u.error());
        print_unit(std::cout, *u, json);
        if (++printed == ls_args.limit) break;
      }
      return exit_ok;
    };
  });

  // tail -----------------------------------------------------------------------------
  auto* tail = app.add_subcommand("tail", "Show the last units of a context; -f follows it (or a pattern) live");
  struct {
    std::string target;
    bool follow = false;
    std::optional<uint64_t> since;
    size_t lines = 10;
  } tail_args;
  tail->add_option("context", tail_args.target, "Context id, comma-separated ids, or a pattern such as 'project-7/*'")
      ->required();
  tail->add_flag("-f,--follow", tail_args.follow, "Keep following live; resumes across disconnects and restarts");
  tail->add_option("--since", tail_args.since, "Start after this seq (0: from the beginning)");
  tail->add_option("-n,--lines", tail_args.lines, "How many recent units to show first")->capture_default_str();
  tail->callback([&] {
    run = [&](ec::client& c) -> int {
      std::vector<std::string> contexts;
      for (auto s = std::string_view(tail_args.target); !s.empty();) {
        const auto comma = s.find(',');
        if (auto one = s.substr(0, comma); !one.empty()) contexts.emplace_back(one);
        s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
      }
      std::optional<uint64_t> since = tail_args.since;
      if (!since && !is_pattern(tail_args.target)) {
        // The last n units, oldest first, then (with -f) everything after them.
        ec::list_options opts;
        opts.limit = std::clamp<size_t>(tail_args.lines, 1, 1000);
        opts.reverse = true;
        auto recent = c.list_units_page(tail_args.target, opts);
        if (!recent) return report(recent.error());
        auto& items = recent->items;
        if (items.size() > tail_args.lines) items.resize(tail_args.lines);
        for (auto it = items.rbegin(); it != items.rend(); ++it) print_unit(std::cout, *it, json);
        std::cout.flush();
        if (!tail_args.follow) return exit_ok;
        auto ctx = c.get_context(tail_args.target);
        if (!ctx && !ctx.error().is_not_found()) return report(ctx.error());
        since = items.empty() ? (ctx ? ctx->head_seq : 0) : items.front().seq;
      } else if (!tail_args.follow) {
        std::cerr << "engramctl: tail of a pattern or several contexts needs -f\n";
        return exit_usage;
      }
      return follow(c, std::move(contexts), since, json);
    };
  });

  // ctx ------------------------------------------------------------------------------
  auto* ctx = app.add_subcommand("ctx", "Contexts: show, set, ls");
  ctx->require_subcommand(1);
  auto* ctx_show = ctx->add_subcommand("show", "Show a context");
  std::string ctx_id;
  ctx_show->add_option("id", ctx_id, "Context id")->required();
  ctx_show->callback([&] {
    run = [&](ec::client& c) {
      auto r = c.get_context(ctx_id);
      if (!r) return report(r.error());
      print_context(std::cout, *r, json, true);
      return exit_ok;
    };
  });
  auto* ctx_set = ctx->add_subcommand("set", "Create or update a context");
  struct {
    std::optional<std::string> name;
    std::vector<std::string> add_agents, remove_agents, pin, unpin, meta, unset_meta;
  } set_args;
  ctx_set->add_option("id", ctx_id, "Context id")->required();
  ctx_set->add_option("--name", set_args.name, "Display name");
  ctx_set->add_option("--add-agent", set_args.add_agents, "Add an agent (repeatable)");
  ctx_set->add_option("--remove-agent", set_args.remove_agents, "Remove an agent (repeatable)");
  ctx_set->add_option("--pin", set_args.pin, "Pin a unit id (repeatable)");
  ctx_set->add_option("--unpin", set_args.unpin, "Unpin a unit id (repeatable)");
  ctx_set->add_option("--meta", set_args.meta, "Set metadata key=value (repeatable)")->check(key_value);
  ctx_set->add_option("--unset-meta", set_args.unset_meta, "Delete a metadata key (repeatable)");
  ctx_set->callback([&] {
    run = [&](ec::client& c) {
      ec::context_patch p;
      p.display_name = set_args.name;
      p.add_agents = set_args.add_agents;
      p.remove_agents = set_args.remove_agents;
      p.pin_units = set_args.pin;
      p.unpin_units = set_args.unpin;
      for (const auto& [k, v] : pairs(set_args.meta)) p.meta[k] = v;
      for (const auto& k : set_args.unset_meta) p.meta[k] = std::nullopt;
      auto r = c.patch_context(ctx_id, p);
      if (!r) return report(r.error());
      print_context(std::cout, *r, json, true);
      return exit_ok;
    };
  });
  auto* ctx_ls = ctx->add_subcommand("ls", "List contexts in id order");
  size_t ctx_limit = 100;
  ctx_ls->add_option("--limit", ctx_limit, "At most this many (0: all)")->capture_default_str();
  ctx_ls->callback([&] {
    run = [&](ec::client& c) {
      size_t printed = 0;
      for (const auto& one : c.contexts(ctx_limit == 0 ? 1000 : std::min<size_t>(ctx_limit, 1000))) {
        if (!one) return report(one.error());
        print_context(std::cout, *one, json, false);
        if (++printed == ctx_limit) break;
      }
      return exit_ok;
    };
  });

  // lock -----------------------------------------------------------------------------
  auto* lock = app.add_subcommand("lock", "Leases: acquire, renew, release, show, ls");
  lock->require_subcommand(1);
  struct {
    std::vector<std::string> resources;
    std::string resource, lock_id, context, agent_filter, prefix;
    int64_t ttl_ms = 30'000, wait_ms = 0;
  } lock_args;
  auto* acquire = lock->add_subcommand("acquire", "Acquire one lease, or several all-or-nothing");
  acquire->add_option("resource", lock_args.resources, "Resource path(s)")->required();
  acquire->add_option("--ttl", lock_args.ttl_ms, "Lease time to live (e.g. 30s)")->transform(duration());
  acquire->add_option("--wait", lock_args.wait_ms, "Wait up to this long for a held resource (e.g. 10s)")
      ->transform(duration());
  acquire->add_option("--context", lock_args.context, "Record the lease's transitions in this context");
  acquire->callback([&] {
    run = [&](ec::client& c) {
      ec::lock_request req;
      req.resources = lock_args.resources;
      req.ttl = std::chrono::milliseconds(lock_args.ttl_ms);
      req.wait = std::chrono::milliseconds(lock_args.wait_ms);
      req.context_id = lock_args.context;
      auto r = c.acquire(req);
      if (!r) return report(r.error());
      for (const auto& l : *r) print_lock(std::cout, l, json);
      return exit_ok;
    };
  });
  auto* renew = lock->add_subcommand("renew", "Renew a lease you hold");
  renew->add_option("resource", lock_args.resource, "Resource path")->required();
  renew->add_option("--lock-id", lock_args.lock_id, "The lock_id acquire printed")->required();
  renew->add_option("--ttl", lock_args.ttl_ms, "New time to live (e.g. 30s)")->transform(duration());
  renew->callback([&] {
    run = [&](ec::client& c) {
      ec::lock held;
      held.resource_path = lock_args.resource;
      held.lock_id = lock_args.lock_id;
      held.holder_agent = agent;
      auto r = c.renew(held, std::chrono::milliseconds(lock_args.ttl_ms));
      if (!r) return report(r.error());
      print_lock(std::cout, *r, json);
      return exit_ok;
    };
  });
  auto* release = lock->add_subcommand("release", "Release a lease you hold");
  release->add_option("resource", lock_args.resource, "Resource path")->required();
  release->add_option("--lock-id", lock_args.lock_id, "The lock_id acquire printed")->required();
  release->callback([&] {
    run = [&](ec::client& c) {
      ec::lock held;
      held.resource_path = lock_args.resource;
      held.lock_id = lock_args.lock_id;
      held.holder_agent = agent;
      auto r = c.release(held);
      if (!r) return report(r.error());
      std::cout << (json ? R"({"released":true})" : "released " + lock_args.resource) << "\n";
      return exit_ok;
    };
  });
  auto* lock_show = lock->add_subcommand("show", "Show the live lease on a resource");
  lock_show->add_option("resource", lock_args.resource, "Resource path")->required();
  lock_show->callback([&] {
    run = [&](ec::client& c) {
      auto r = c.get_lock(lock_args.resource);
      if (!r) return report(r.error());
      print_lock(std::cout, *r, json);
      return exit_ok;
    };
  });
  auto* lock_ls = lock->add_subcommand("ls", "List live leases");
  lock_ls->add_option("--holder", lock_args.agent_filter, "Only leases held by this agent");
  lock_ls->add_option("--prefix", lock_args.prefix, "Only resources starting with this");
  lock_ls->callback([&] {
    run = [&](ec::client& c) {
      auto r = c.list_locks(lock_args.agent_filter, lock_args.prefix);
      if (!r) return report(r.error());
      for (const auto& l : *r) print_lock(std::cout, l, json);
      return exit_ok;
    };
  });

  // search ---------------------------------------------------------------------------
  auto* search = app.add_subcommand("search", "Search all history (keyword, semantic, hybrid)");
  struct {
    std::string query, context, mode;
    std::vector<std::string> agents, types, meta;
    size_t limit = 20, offset = 0;
  } search_args;
  search->add_option("query", search_args.query, "Query text (Xapian syntax: words, \"phrases\", AND/OR/NOT, prefix*)");
  search->add_option("--context", search_args.context, "A context id or pattern such as 'project-7/*'");
  search->add_option("--agent", search_args.agents, "Only these agents (repeatable, any of)");
  search->add_option("--type", search_args.types, "Only these types (repeatable, any of)")->check(unit_type_name);
  search->add_option("--meta", search_args.meta, "Only units with meta key=value (repeatable, all of)")->check(key_value);
  search->add_option("--mode", search_args.mode, "keyword, semantic or hybrid (default: the server decides)")
      ->check(CLI::IsMember({"keyword", "semantic", "hybrid"}));
  search->add_option("--limit", search_args.limit, "Hits per page")->capture_default_str();
  search->add_option("--offset", search_args.offset, "Skip this many hits");
  search->callback([&] {
    run = [&](ec::client& c) {
      ec::search_request req;
      req.query = search_args.query;
      req.context_id = search_args.context;
      req.agent_ids = search_args.agents;
      for (const auto& t : search_args.types) req.types.push_back(*ec::parse_unit_type(t));
      req.meta_filters = pairs(search_args.meta);
      req.mode = search_args.mode;
      req.limit = search_args.limit;
      req.offset = search_args.offset;
      auto r = c.search(req);
      if (!r) return report(r.error());
      print_search(std::cout, *r, json);
      return exit_ok;
    };
  });

  // token issue ----------------------------------------------------------------------
  auto* token_cmd = app.add_subcommand("token", "Operator tools for bearer tokens");
  token_cmd->require_subcommand(1);
  auto* issue = token_cmd->add_subcommand("issue", "Issue an HS256 token signed with the server's auth.secret "
                                                   "(from --secret-file or $ENGRAM_AUTH_SECRET)");
  struct {
    std::string agent, secret_file, issuer, audience;
    std::vector<std::string> contexts;
    std::vector<std::string> caps{"read", "write", "lock"};
    int64_t ttl_ms = 3'600'000;
  } issue_args;
  issue->add_option("--agent", issue_args.agent, "The token's subject: the agent it acts as")->required();
  issue->add_option("--contexts", issue_args.contexts, "Context patterns it may use, e.g. 'project-7/*' (repeatable)")
      ->required();
  issue->add_option("--caps", issue_args.caps, "Capabilities on those patterns")
      ->delimiter(',')
      ->check(CLI::IsMember({"read", "write", "lock"}))
      ->capture_default_str();
  issue->add_option("--ttl", issue_args.ttl_ms, "Lifetime (e.g. 1h, 30m)")->transform(duration());
  issue->add_option("--secret-file", issue_args.secret_file, "File holding the HS256 secret")->check(CLI::ExistingFile);
  issue->add_option("--issuer", issue_args.issuer, "iss claim (when the server checks auth.issuer)");
  issue->add_option("--audience", issue_args.audience, "aud claim (when the server checks auth.audience)");
  bool local_only = false;
  issue->callback([&] {
    local_only = true;
    run = [&](ec::client&) {
      auto secret = read_secret(issue_args.secret_file);
      if (!secret) {
        std::cerr << "engramctl: " << secret.error() << "\n";
        return exit_usage;
      }
      engram::auth::token_request req;
      req.agent = issue_args.agent;
      uint8_t caps = 0;
      for (const auto& c : issue_args.caps) caps |= *engram::auth::parse_capability(c);
      for (const auto& p : issue_args.contexts) req.grants.push_back({p, caps});
      if (auto ok = engram::auth::parse_grants(engram::auth::grants_json(req.grants)); !ok) {
        std::cerr << "engramctl: " << ok.error().message << "\n";
        return exit_usage;
      }
      req.ttl = std::chrono::seconds(std::max<int64_t>(1, issue_args.ttl_ms / 1000));
      req.now = engram::model::default_clock()->now_s();
      req.issuer = issue_args.issuer;
      req.audience = issue_args.audience;
      auto t = engram::auth::issue(req, engram::auth::algorithm::hs256, *secret);
      if (!t) {
        std::cerr << "engramctl: " << t.error().message << "\n";
        return exit_usage;
      }
      std::cout << *t << "\n";
      return exit_ok;
    };
  });

  // health ---------------------------------------------------------------------------
  auto* health = app.add_subcommand("health", "Is the server up and ready? (exit 0 ready, 1 not ready, 3 unreachable)");
  health->callback([&] {
    run = [&](ec::client& c) {
      auto r = c.health();
      if (!r) return report(r.error());
      print_health(std::cout, *r, json);
      return r->ready ? exit_ok : exit_refused;
    };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? exit_ok : exit_usage;
  }
  ec::client_options opts;
  opts.url = local_only ? std::string("http://127.0.0.1:8080") : server;
  opts.token = token;
  // With a token the server knows who we are; send an agent only if asked to.
  const bool agent_given = agent_opt->count() > 0 || std::getenv("ENGRAM_AGENT");
  opts.agent_id = token.empty() || agent_given ? agent : std::string();
  opts.timeout = std::chrono::milliseconds(timeout_ms);
  auto made = ec::client::create(std::move(opts));
  if (!made) {
    std::cerr << "engramctl: " << made.error().message << "\n";
    return exit_usage;
  }
  return run(*made);
}
