// engram: the server. Parses flags, loads config, boots the app and waits for a
// signal; everything else lives in internal/.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <iostream>

#include "app/app.hpp"
#include "config/config.hpp"

int main(int argc, char** argv) {
  auto cl = engram::config::parse_command_line(argc, argv);
  if (cl.exit_code) return *cl.exit_code;
  auto cfg = engram::config::load(cl.src);
  if (!cfg) {
    std::cerr << "engram: " << cfg.error().message << "\n";
    return 2;
  }
  // Signals are taken synchronously by run_until_signal; block them before any
  // thread starts (the log's flusher, the I/O threads) so no other thread gets them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  engram::app::setup_logging(cfg->log);

  auto app = engram::app::app::start(*cfg);
  if (!app) {
    spdlog::critical("{}", app.error().message);
    return 1;
  }
  return (*app)->run_until_signal();
}
