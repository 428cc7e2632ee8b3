#include "output.hpp"

#include <ctime>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <ostream>

namespace engramctl {

namespace {

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), and no
// control characters other than tab and newline, so output cannot drive a terminal.
bool printable_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) return false;
      ++i;
      continue;
    }
    size_t n = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) n = 1, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) n = 2, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) n = 3, cp = c & 0x07;
    else return false;
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = cp << 6 | (cc & 0x3f);
    }
    static constexpr uint32_t min_for[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_for[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

// Continuation lines of a multi-line text are indented under the first.
std::string indent(const std::string& text) {
  std::string out;
  for (char c : text) {
    out.push_back(c);
    if (c == '\n') out.append("    ");
  }
  return out;
}

}  // namespace

std::string format_time(ec::timestamp t) {
  const auto ns = t.time_since_epoch().count();
  std::time_t secs = std::time_t(ns / 1'000'000'000);
  int64_t ms = (ns % 1'000'000'000) / 1'000'000;
  if (ms < 0) {
    ms += 1000;
    --secs;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", int(ms));
  return buf;
}

std::string payload_text(const std::string& payload) {
  if (printable_utf8(payload)) return payload;
  return "<" + std::to_string(payload.size()) + " bytes>";
}

void print_unit(std::ostream& out, const ec::work_unit& u, bool json, bool with_id) {
  if (json) {
    out << ec::to_json(u) << "\n";
    return;
  }
  if (with_id) out << u.id << "  ";
  out << format_time(u.ts) << "  " << u.context_id << " #" << u.seq << "  " << u.agent_id << "  "
      << ec::to_string(u.type) << "  " << indent(payload_text(u.payload)) << "\n";
}

void print_event(std::ostream& out, const ec::event& ev, bool json) {
  if (json) {
    out << (ev.unit ? ec::to_json(*ev.unit) : ev.json) << "\n";
  } else if (ev.unit) {
    print_unit(out, *ev.unit, false);
  } else if (ev.lock) {
    out << format_time(ev.lock->acquired_at) << "  " << ev.context_id << " #" << ev.seq << "  " << ev.type << "  "
        << ev.lock->resource_path << " by " << ev.lock->holder_agent << " (token " << ev.lock->fencing_token << ")\n";
  } else if (ev.context) {
    out << format_time(ev.context->updated_at) << "  " << ev.context_id << " #" << ev.seq << "  " << ev.type << "\n";
  } else {
    out << ev.context_id << " #" << ev.seq << "  " << ev.type << "\n";
  }
  out.flush();  // tail -f: a line is visible as soon as it arrives
}

void print_context(std::ostream& out, const ec::context& c, bool json, bool detailed) {
  if (json) {
    out << ec::to_json(c) << "\n";
    return;
  }
  if (!detailed) {
    out << c.id << "  head #" << c.head_seq << "  updated " << format_time(c.updated_at)
        << (c.display_name.empty() ? "" : "  \"" + c.display_name + "\"") << "\n";
    return;
  }
  out << "id:           " << c.id << "\n"
      << "display_name: " << c.display_name << "\n"
      << "head_seq:     " << c.head_seq << "\n"
      << "created_at:   " << format_time(c.created_at) << "\n"
      << "updated_at:   " << format_time(c.updated_at) << "\n";
  out << "agents:      ";
  for (const auto& a : c.agent_ids) out << " " << a;
  out << "\npinned:      ";
  for (const auto& p : c.pinned_units) out << " " << p;
  out << "\n";
  for (const auto& [k, v] : c.meta) out << "meta." << k << " = " << v << "\n";
}

void print_lock(std::ostream& out, const ec::lock& l, bool json) {
  if (json) {
    out << ec::to_json(l) << "\n";
    return;
  }
  out << l.resource_path << "  held by " << l.holder_agent << "  token " << l.fencing_token << "  lock_id "
      << l.lock_id << "  expires " << format_time(l.expires_at) << "\n";
}

void print_task(std::ostream& out, const ec::task& t, bool json) {
  if (json) {
    out << ec::to_json(t) << "\n";
    return;
  }
  out << t.task_id << "  " << t.status;
  if (t.status == "claimed")
    out << " by " << t.holder_agent << " (token " << t.fencing_token << ", until " << format_time(t.claim_expires_at)
        << ")";
  else if (!t.last_holder.empty())
    out << " (last held by " << t.last_holder << ")";
  out << "  attempt " << t.attempts << "/" << t.max_attempts << "  " << t.title << "\n";
  if (!t.progress_json.empty()) out << "    progress " << t.progress_json << "\n";
  if (!t.result_json.empty()) out << "    result " << t.result_json << "\n";
  if (!t.error.empty()) out << "    error " << indent(t.error) << "\n";
}

void print_present(std::ostream& out, const ec::present_agent& a, bool json) {
  if (json) {
    out << nlohmann::json{{"agent_id", a.agent_id},
                          {"joined_at", format_time(a.joined_at)},
                          {"last_seen", format_time(a.last_seen)},
                          {"status", a.status}}
               .dump()
        << "\n";
    return;
  }
  out << a.agent_id << "  joined " << format_time(a.joined_at) << "  last seen " << format_time(a.last_seen)
      << (a.status.empty() ? "" : "  " + a.status) << "\n";
}

void print_search(std::ostream& out, const ec::search_result& r, bool json) {
  if (json) {
    out << ec::to_json(r) << "\n";
    return;
  }
  out << r.total_count << (r.total_count_exact ? "" : "+") << " match(es)"
      << (r.mode.empty() ? "" : ", " + r.mode) << (r.degraded.empty() ? "" : " (degraded: " + r.degraded + ")")
      << "\n";
  for (const auto& h : r.hits) {
    out << format_time(h.ts) << "  " << h.context_id << " #" << h.seq << "  "
        << (h.agent_id.empty() ? "?" : h.agent_id) << "  " << (h.type ? ec::to_string(*h.type) : "?") << "  "
        << h.id << "  score " << std::setprecision(4) << h.score << "\n";
    if (!h.snippet.empty()) out << "    " << indent(h.snippet) << "\n";
  }
}

void print_health(std::ostream& out, const ec::health_status& h, bool json) {
  if (json) {
    out << h.readyz_json << "\n";
    return;
  }
  out << "live:   " << (h.live ? "yes" : "no") << "\n"
      << "ready:  " << (h.ready ? "yes" : "no") << " (" << h.status << ")\n";
  if (!h.search_state.empty()) out << "search: " << h.search_state << ", lag " << h.search_lag << "\n";
}

}  // namespace engramctl
