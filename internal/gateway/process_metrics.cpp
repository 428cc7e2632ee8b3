#include "gateway/process_metrics.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>

namespace engram::gateway {
namespace {

prometheus::MetricFamily family(std::string name, std::string help, prometheus::MetricType type, double value) {
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) m.counter.value = value;
  else m.gauge.value = value;
  return {std::move(name), std::move(help), type, {m}};
}

// /proc/stat's btime: the boot time in unix seconds (start times are relative to it).
double boot_time() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value = 0;
  while (in >> key) {
    if (key == "btime" && in >> value) return value;
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

}  // namespace

std::vector<prometheus::MetricFamily> process_metric_families() {
  std::ifstream in("/proc/self/stat");
  std::string stat;
  if (!std::getline(in, stat)) return {};
  // Fields after the command name (which may contain spaces, so skip past its ')').
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream fields(stat.substr(close + 2));
  std::vector<std::string> f((std::istream_iterator<std::string>(fields)), std::istream_iterator<std::string>());
  // proc(5) numbers fields from 1 with the pid; f[0] is field 3 (state).
  auto field = [&](size_t n) { return n - 3 < f.size() ? std::stod(f[n - 3]) : 0.0; };
  static const double ticks = double(sysconf(_SC_CLK_TCK));
  static const double page = double(sysconf(_SC_PAGESIZE));
  static const double booted = boot_time();

  double fds = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec))
    ++fds;
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);

  using prometheus::MetricType;
  return {
      family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds", MetricType::Counter,
             (field(14) + field(15)) / ticks),
      family("process_resident_memory_bytes", "Resident memory size in bytes", MetricType::Gauge, field(24) * page),
      family("process_virtual_memory_bytes", "Virtual memory size in bytes", MetricType::Gauge, field(23)),
      family("process_open_fds", "Number of open file descriptors", MetricType::Gauge, fds),
      family("process_max_fds", "Maximum number of open file descriptors", MetricType::Gauge,
             double(nofile.rlim_cur)),
      family("process_threads", "Number of OS threads in the process", MetricType::Gauge, field(20)),
      family("process_start_time_seconds", "Start time of the process since unix epoch in seconds",
             MetricType::Gauge, booted + field(22) / ticks),
  };
}

}  // namespace engram::gateway
