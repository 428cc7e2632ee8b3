#pragma once
// engramctl's output: one line per item for people, the server's JSON for scripts
// (--json; listings print one JSON object per line).

#include <iosfwd>
#include <string>

#include "engram/client.hpp"

namespace engramctl {

namespace ec = engram::client;

// "2026-11-22 10:00:00.123Z"
std::string format_time(ec::timestamp t);
// The payload as text when it is printable UTF-8, else "<N bytes>".
std::string payload_text(const std::string& payload);

// One line: time, context and seq, agent, type, text; `with_id` puts the unit id
// first (ls, whose ids `get` takes).
void print_unit(std::ostream& out, const ec::work_unit& u, bool json, bool with_id = false);
void print_event(std::ostream& out, const ec::event& ev, bool json);
void print_context(std::ostream& out, const ec::context& c, bool json, bool detailed);
void print_lock(std::ostream& out, const ec::lock& l, bool json);
// id, status, holder or last holder, attempts, title
void print_task(std::ostream& out, const ec::task& t, bool json);
void print_present(std::ostream& out, const ec::present_agent& a, bool json);
void print_search(std::ostream& out, const ec::search_result& r, bool json);
void print_health(std::ostream& out, const ec::health_status& h, bool json);

}  // namespace engramctl
