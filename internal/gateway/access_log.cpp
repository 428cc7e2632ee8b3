#include "gateway/access_log.hpp"

#include <spdlog/spdlog.h>

#include <array>
#include <charconv>
#include <cstdint>
#include <span>
#include <string_view>

#include "model/log_context.hpp"

namespace engram::gateway {
namespace {

std::shared_ptr<spdlog::logger> access_logger;  // set before any I/O thread runs

}  // namespace

void set_access_logger(std::shared_ptr<spdlog::logger> logger) { access_logger = std::move(logger); }

void flush_access_log() {
  if (access_logger) access_logger->flush();
}

// The fields view `a` and the number buffers here: no copies (8 of them were a
// tenth of a GET's instructions outside the store; bench/README.md).
void log_access(const access_line& a) {
  char ms[32], status[16], bytes[24], events[24];
  auto [ms_end, ec] = std::to_chars(ms, ms + sizeof ms, a.seconds * 1000, std::chars_format::fixed, 3);
  if (ec != std::errc()) ms_end = ms;  // a duration beyond 1e28 ms: logged empty rather than garbled
  // to_chars, not snprintf: printf's float formatting showed in the profile of a GET
  const auto number = [](char* buf, size_t size, uint64_t v) {
    return std::string_view(buf, std::to_chars(buf, buf + size, v).ptr);  // 20 digits at most: fits
  };
  std::array<model::log_field, 11> fields{{{"request_id", a.request_id},
                                           {"method", a.method},
                                           {"path", a.path},
                                           {"status", number(status, sizeof status, a.status), false},
                                           {"bytes", number(bytes, sizeof bytes, a.bytes), false},
                                           {"duration_ms", std::string_view(ms, ms_end), false},
                                           {"agent", a.agent},
                                           {"ip", a.ip}}};
  size_t n = 8;
  if (!a.stream.empty()) {
    fields[n++] = {"stream", a.stream};
    if (a.events) fields[n++] = {"events", number(events, sizeof events, *a.events), false};
    if (!a.ended_by.empty()) fields[n++] = {"ended_by", a.ended_by};
  }
  // The request's own scope has the id too.
  model::log_scope scope(std::span<const model::log_field>(fields.data(), n), model::log_scope::outer_fields::hide);
  (access_logger ? access_logger.get() : spdlog::default_logger_raw())->info("access");
}

}  // namespace engram::gateway
