#pragma once
// Server configuration, loaded once by cmd/engram before any module starts and
// handed to app as plain options. Layers and validation rules: README.md.

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/options.hpp"
#include "engine/presence.hpp"
#include "engine/tasks.hpp"
#include "gateway/options.hpp"
#include "locks/options.hpp"
#include "model/error.hpp"
#include "search/options.hpp"
#include "storage/options.hpp"

namespace engram::config {

struct log_options {
  std::string level = "info";   // trace, debug, info, warn, error, critical, off
  std::string format = "text";  // text or json
  // Access lines wait in memory until this many bytes are waiting, or for at most
  // a second; 0 writes each line at once (log.access_buffer_bytes).
  uint64_t access_buffer_bytes = 65'536;
};

struct config {
  gateway::options server;
  storage::options storage;
  engine::options engine;
  engine::retention_options retention;
  engine::presence_options presence;
  engine::tasks_options tasks;
  locks::options locks;
  search::options search;
  log_options log;
  std::chrono::milliseconds shutdown_timeout{10'000};

  // Where each key that is not at its default was set: the config file's path,
  // "environment ENGRAM_…" or "command line".
  std::map<std::string, std::string, std::less<>> origins;
  // An error about `key`'s value found after loading (a secret too short, a
  // certificate file that does not load, an address in use), naming where the value
  // came from: "config key 'auth.secret' (environment ENGRAM_AUTH_SECRET): …".
  std::string explain(std::string_view key, std::string_view problem) const;
};

// Everything that can feed the configuration, as plain data so tests can build it.
struct sources {
  std::optional<std::string> file;                         // YAML path
  std::map<std::string, std::string> env;                  // e.g. ENGRAM_SERVER_ADDR
  std::vector<std::pair<std::string, std::string>> flags;  // key → value, in order
};

model::result<config> load(const sources& in);

// Environment variable for a key: "storage.data_dir" → "ENGRAM_STORAGE_DATA_DIR".
std::string env_name(std::string_view key);

// All ENGRAM_* variables of this process.
std::map<std::string, std::string> process_env();

// Parse argv with CLI11. Returns sources, or an exit code when the command line
// asked for --help/--version (0) or was invalid (2); messages go to stdout/stderr.
struct command_line {
  sources src;
  std::optional<int> exit_code;
};
command_line parse_command_line(int argc, const char* const* argv);

}  // namespace engram::config
