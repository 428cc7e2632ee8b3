#include "gateway/access_log.hpp"

#include <spdlog/spdlog.h>

#include <charconv>
#include <string>

#include "model/log_context.hpp"

namespace engram::gateway {
namespace {

std::shared_ptr<spdlog::logger> access_logger;  // set before any I/O thread runs

}  // namespace

void set_access_logger(std::shared_ptr<spdlog::logger> logger) { access_logger = std::move(logger); }

void flush_access_log() {
  if (access_logger) access_logger->flush();
}

void log_access(const access_line& a) {
  char ms[32];  // to_chars, not snprintf: printf's float formatting showed in the profile of a GET
  auto [end, ec] = std::to_chars(ms, ms + sizeof ms, a.seconds * 1000, std::chars_format::fixed, 3);
  if (ec != std::errc()) end = ms;  // a duration beyond 1e28 ms: logged empty rather than garbled
  std::vector<model::log_field> fields{{"request_id", std::string(a.request_id)},
                                       {"method", std::string(a.method)},
                                       {"path", std::string(a.path)},
                                       {"status", std::to_string(a.status), false},
                                       {"bytes", std::to_string(a.bytes), false},
                                       {"duration_ms", std::string(ms, end), false},
                                       {"agent", std::string(a.agent)},
                                       {"ip", std::string(a.ip)}};
  if (!a.stream.empty()) {
    fields.push_back({"stream", std::string(a.stream)});
    if (a.events) fields.push_back({"events", std::to_string(*a.events), false});
    if (!a.ended_by.empty()) fields.push_back({"ended_by", std::string(a.ended_by)});
  }
  // The request's own scope has the id too.
  model::log_scope scope(std::move(fields), model::log_scope::outer_fields::hide);
  (access_logger ? access_logger.get() : spdlog::default_logger_raw())->info("access");
}

}  // namespace engram::gateway
