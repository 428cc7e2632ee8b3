#include "model/codec.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <simdjson.h>
#include <span>

#include "model/assert.hpp"
#include "model/ids.hpp"
#include "model/text.hpp"
#include "wire/enums.hpp"
#include "wire/timestamp.hpp"

namespace engram::model {
namespace {

// The wire's name tables are the protobuf enums without their prefix; a change to
// engram.proto that the tables miss fails the build here.
static_assert(wire::unit_type_names.size() == size_t(api::WorkUnitType_ARRAYSIZE));
static_assert(wire::relationship_type_names.size() == size_t(api::RelationshipType_ARRAYSIZE));

result<int> enum_from_json(const json& value, std::string_view field,
                           std::span<const std::string_view> names, std::string_view proto_prefix) {
  const size_t count = names.size();
  if (value.is_number_integer()) {
    const auto n = value.get<int64_t>();
    if (n >= 0 && n < int64_t(count)) return int(n);
  } else if (value.is_string()) {
    if (auto n = wire::enum_from_name(names, value.get_ref<const std::string&>(), proto_prefix)) return *n;
  } else {
    return fail(errc::invalid_argument,
                std::string(field) + " must be an integer or a type name");
  }
  std::string msg = std::string(field) + " " + dump(value) + " is unknown; expected 0-" +
                    std::to_string(count - 1) + " or one of";
  for (auto n : names) (msg += ' ') += n;
  return fail(errc::invalid_argument, std::move(msg));
}

result<std::string> string_field(const json& object, std::string_view field,
                                 std::string_view fallback) {
  const auto it = object.find(field);
  if (it == object.end() || it->is_null()) return std::string(fallback);
  if (!it->is_string()) return fail(errc::invalid_argument, std::string(field) + " must be a string");
  return it->get<std::string>();
}

status meta_from_json(const json& value, std::string_view field,
                      google::protobuf::Map<std::string, std::string>& out) {
  if (value.is_null()) return {};
  if (!value.is_object())
    return fail(errc::invalid_argument, std::string(field) + " must be an object of strings");
  if (value.size() > max_meta_entries)
    return fail(errc::invalid_argument, std::string(field) + " has more than " +
                                            std::to_string(max_meta_entries) + " entries");
  for (const auto& [key, v] : value.items()) {
    if (key.empty() || key.size() > max_id_bytes)
      return fail(errc::invalid_argument, std::string(field) + " keys must be 1-" +
                                              std::to_string(max_id_bytes) + " bytes");
    if (!v.is_string())
      return fail(errc::invalid_argument,
                  std::string(field) + "." + key + " must be a string");
    if (v.get_ref<const std::string&>().size() > max_meta_value_bytes)
      return fail(errc::invalid_argument, std::string(field) + "." + key + " is longer than " +
                                              std::to_string(max_meta_value_bytes) + " bytes");
    out[key] = v.get<std::string>();
  }
  return {};
}

json meta_json(const google::protobuf::Map<std::string, std::string>& meta) {
  json out = json::object();
  for (const auto& [k, v] : meta) out[k] = v;
  return out;
}

result<std::vector<std::string>> id_list(const json& object, std::string_view field) {
  std::vector<std::string> out;
  const auto it = object.find(field);
  if (it == object.end() || it->is_null()) return out;
  if (!it->is_array())
    return fail(errc::invalid_argument, std::string(field) + " must be an array of strings");
  if (it->size() > 1000)
    return fail(errc::invalid_argument, std::string(field) + " has more than 1000 entries");
  for (const auto& v : *it) {
    if (!v.is_string())
      return fail(errc::invalid_argument, std::string(field) + " must be an array of strings");
    const auto& s = v.get_ref<const std::string&>();
    if (auto bad = check_identifier(std::string(field) + " entry", s, max_id_bytes))
      return fail(errc::invalid_argument, *bad);
    out.push_back(s);
  }
  return out;
}

void add_unique(google::protobuf::RepeatedPtrField<std::string>& list,
                const std::vector<std::string>& items) {
  for (const auto& item : items)
    if (std::find(list.begin(), list.end(), item) == list.end()) *list.Add() = item;
}

void remove_all(google::protobuf::RepeatedPtrField<std::string>& list,
                const std::vector<std::string>& items) {
  for (const auto& item : items) {
    for (int i = list.size() - 1; i >= 0; --i)
      if (list.Get(i) == item) list.DeleteSubrange(i, 1);
  }
}

}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  size_t run = 0;  // start of the pending run of characters that need no escaping
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = uint8_t(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        out.append("\\u00");
        out.push_back(hex[c >> 4]);
        out.push_back(hex[c & 0xF]);
    }
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

namespace {

void append_meta(std::string& out, const google::protobuf::Map<std::string, std::string>& meta) {
  out.push_back('{');
  std::vector<const google::protobuf::MapPair<std::string, std::string>*> entries;
  entries.reserve(meta.size());
  for (const auto& kv : meta) entries.push_back(&kv);
  std::sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i) out.push_back(',');
    append_json_string(out, entries[i]->first);
    out.push_back(':');
    append_json_string(out, entries[i]->second);
  }
  out.push_back('}');
}

}  // namespace

void append_unit_json(std::string& out, const api::WorkUnit& u, const unit_extras& extras) {
  out.append("{\"id\":");
  append_json_string(out, u.id());
  out.append(",\"context_id\":");
  append_json_string(out, u.context_id());
  out.append(",\"seq\":").append(std::to_string(u.seq()));
  out.append(",\"agent_id\":");
  append_json_string(out, u.agent_id());
  out.append(",\"type\":").append(std::to_string(int(u.type())));
  out.append(",\"ts\":");
  wire::append_timestamp_json(out, u.ts_ns());
  out.append(",\"meta\":");
  append_meta(out, u.meta());
  out.append(",\"payload\":\"");
  base64_encode_append(out, u.payload());
  out.append("\",\"relationships\":[");
  for (int i = 0; i < u.relationships_size(); ++i) {
    const auto& r = u.relationships(i);
    if (i) out.push_back(',');
    out.append("{\"target_id\":");
    append_json_string(out, r.target_id());
    out.append(",\"type\":").append(std::to_string(int(r.type()))).append(",\"meta\":");
    append_meta(out, r.meta());
    out.push_back('}');
  }
  out.push_back(']');
  if (!u.idempotency_key().empty()) {
    out.append(",\"idempotency_key\":");
    append_json_string(out, u.idempotency_key());
  }
  if (!u.call_id().empty()) {
    out.append(",\"call_id\":");
    append_json_string(out, u.call_id());
  }
  out.append(",\"tokens\":").append(std::to_string(unit_tokens(u)));
  if (extras) extras(out);
  out.push_back('}');
}

uint32_t estimate_tokens(std::string_view payload) {
  size_t units = payload.size();
  if (valid_utf8(payload)) {
    // One per code point: every byte but the continuation bytes (10xxxxxx),
    // counted eight at a time (a byte at a time was ~2% of an append).
    size_t i = 0;
    for (; i + 8 <= payload.size(); i += 8) {
      uint64_t word;
      std::memcpy(&word, payload.data() + i, 8);
      const uint64_t continuation = word & ~(word << 1) & 0x8080808080808080u;  // bit 7 set, bit 6 clear
      units -= ((continuation >> 7) * 0x0101010101010101u) >> 56;  // the bytes' sum, in the top byte
    }
    for (; i < payload.size(); ++i) units -= (uint8_t(payload[i]) & 0xC0) == 0x80;
  }
  return uint32_t(std::min<size_t>((units + 3) / 4, max_unit_tokens));
}

size_t unit_json_size_hint(const api::WorkUnit& u) {
  size_t n = 256 + (u.payload().size() + 2) / 3 * 4;  // the fixed members, and the payload in base64
  for (const auto& [key, value] : u.meta()) n += key.size() + value.size() + 6;
  for (const auto& r : u.relationships()) {
    n += 48 + r.target_id().size();
    for (const auto& [key, value] : r.meta()) n += key.size() + value.size() + 6;
  }
  return n;
}

std::string unit_json(const api::WorkUnit& unit) {
  std::string out;
  out.reserve(unit_json_size_hint(unit));
  append_unit_json(out, unit);
  return out;
}

void append_units_json(std::string& out, const std::vector<api::WorkUnit>& units, bool with_text) {
  size_t estimate = 2;
  for (const auto& u : units)  // and the text again when asked for
    estimate += 1 + unit_json_size_hint(u) + (with_text ? u.payload().size() : 0);
  out.reserve(out.size() + estimate);
  out.push_back('[');
  for (size_t i = 0; i < units.size(); ++i) {
    if (i) out.push_back(',');
    const auto& u = units[i];
    if (!with_text) append_unit_json(out, u);
    else append_unit_json(out, u, [&](std::string& o) { append_text_json(o, u.payload()); });
  }
  out.push_back(']');
}

result<int64_t> parse_rfc3339(std::string_view t) {
  auto bad = [&] {
    return fail(errc::invalid_argument,
                "'" + std::string(t.substr(0, 64)) + "' is not an RFC 3339 time such as 2026-01-31T12:00:00Z");
  };
  auto digits = [&](size_t pos, size_t n, int& out) {
    if (pos + n > t.size()) return false;
    out = 0;
    for (size_t i = pos; i < pos + n; ++i) {
      if (t[i] < '0' || t[i] > '9') return false;
      out = out * 10 + (t[i] - '0');
    }
    return true;
  };
  int y, mo, d, h, mi, sec;
  if (!digits(0, 4, y) || t.size() < 20 || t[4] != '-' || !digits(5, 2, mo) || t[7] != '-' || !digits(8, 2, d) ||
      (t[10] != 'T' && t[10] != 't' && t[10] != ' ') || !digits(11, 2, h) || t[13] != ':' || !digits(14, 2, mi) ||
      t[16] != ':' || !digits(17, 2, sec))
    return bad();
  const std::chrono::year_month_day date{std::chrono::year(y), std::chrono::month(unsigned(mo)),
                                         std::chrono::day(unsigned(d))};
  if (!date.ok() || h > 23 || mi > 59 || sec > 60) return bad();
  size_t pos = 19;
  int64_t nanos = 0;
  if (pos < t.size() && t[pos] == '.') {
    int64_t scale = 100'000'000;
    size_t n = 0;
    for (++pos; pos < t.size() && t[pos] >= '0' && t[pos] <= '9'; ++pos, ++n) {
      nanos += (t[pos] - '0') * scale;
      scale /= 10;
    }
    if (n == 0) return bad();
  }
  int64_t offset_s = 0;
  if (pos < t.size() && (t[pos] == 'Z' || t[pos] == 'z')) {
    ++pos;
  } else if (pos < t.size() && (t[pos] == '+' || t[pos] == '-')) {
    int oh, om;
    if (!digits(pos + 1, 2, oh) || pos + 3 >= t.size() || t[pos + 3] != ':' || !digits(pos + 4, 2, om) || oh > 23 ||
        om > 59)
      return bad();
    offset_s = (t[pos] == '+' ? 1 : -1) * (oh * 3600 + om * 60);
    pos += 6;
  } else {
    return bad();
  }
  if (pos != t.size()) return bad();
  const int64_t days = std::chrono::sys_days(date).time_since_epoch().count();
  const int64_t seconds = days * 86'400 + h * 3600 + mi * 60 + std::min(sec, 59) - offset_s;
  if (seconds < 0 || seconds > INT64_MAX / 1'000'000'000 - 1) return bad();
  return seconds * 1'000'000'000 + nanos;
}

result<int64_t> timestamp_from_json(const json& value, std::string_view field) {
  if (value.is_string()) {
    auto ns = parse_rfc3339(value.get_ref<const std::string&>());
    if (!ns) return fail(errc::invalid_argument, std::string(field) + ": " + ns.error().message);
    return ns;
  }
  if (value.is_object()) {
    const auto s = value.find("seconds");
    const auto n = value.find("nanos");
    const bool seconds_ok = s != value.end() && s->is_number_integer() && s->get<int64_t>() >= 0 &&
                            s->get<int64_t>() < INT64_MAX / 1'000'000'000 - 1;
    const bool nanos_ok = n == value.end() || (n->is_number_integer() && n->get<int64_t>() >= 0 &&
                                               n->get<int64_t>() < 1'000'000'000);
    if (seconds_ok && nanos_ok)
      return s->get<int64_t>() * 1'000'000'000 + (n == value.end() ? 0 : n->get<int64_t>());
  }
  return fail(errc::invalid_argument, std::string(field) +
                                          " must be {\"seconds\":S,\"nanos\":N} (non-negative) or an RFC 3339 "
                                          "time such as \"2026-01-31T12:00:00Z\"");
}

json to_json(const api::Context& c) {
  json out{{"id", c.id()},
              {"display_name", c.display_name()},
              {"agent_ids", json(std::vector<std::string>(c.agent_ids().begin(), c.agent_ids().end()))},
              {"pinned_units",
               json(std::vector<std::string>(c.pinned_units().begin(), c.pinned_units().end()))},
              {"meta", meta_json(c.meta())},
              {"created_at", timestamp_json(c.created_at_ns())},
              {"updated_at", timestamp_json(c.updated_at_ns())},
              {"head_seq", c.head_seq()}};
  // Additions to the v3 form, present only when they say something.
  if (c.first_seq() > 1) out["first_seq"] = c.first_seq();
  if (c.has_retention()) {
    json r = json::object();
    if (c.retention().max_age_seconds() > 0) r["max_age_seconds"] = c.retention().max_age_seconds();
    if (c.retention().max_events() > 0) r["max_events"] = c.retention().max_events();
    out["retention"] = std::move(r);
  }
  return out;
}

json to_json(const api::Lock& l) {
  json out{{"resource_path", l.resource_path()},
           {"holder_agent", l.holder_agent()},
           {"lock_id", l.lock_id()},
           {"fencing_token", l.fencing_token()},
           {"expires_at", timestamp_json(l.expires_at_ns())},
           {"acquired_at", timestamp_json(l.acquired_at_ns())}};
  if (!l.context_id().empty()) out["context_id"] = l.context_id();
  return out;
}

void append_fact_json(std::string& out, const api::Fact& f) {
  // Members in name order, as nlohmann would write them.
  out.append("{\"agent_id\":");
  append_json_string(out, f.agent_id());
  out.append(",\"confidence\":");
  if (f.has_confidence()) {
    char buf[32];
    auto end = std::to_chars(buf, buf + sizeof buf, f.confidence()).ptr;
    out.append(buf, end);
  } else {
    out.append("null");
  }
  if (f.superseded_at_seq()) {
    out.append(",\"ended_by\":");
    append_json_string(out, f.ended_by());
  }
  out.append(",\"key\":");
  append_json_string(out, f.key());
  if (f.superseded_at_seq() && !f.retracted_by().empty()) {
    out.append(",\"retracted_by\":");
    append_json_string(out, f.retracted_by());
  }
  out.append(",\"set_at\":");
  wire::append_timestamp_json(out, f.set_at_ns());
  out.append(",\"set_at_seq\":").append(std::to_string(f.set_at_seq()));
  out.append(",\"sources\":[");
  for (int i = 0; i < f.sources_size(); ++i) {
    if (i) out.push_back(',');
    out.append(std::to_string(f.sources(i)));
  }
  out.push_back(']');
  out.append(",\"status\":");
  append_json_string(out, f.status());
  if (f.superseded_at_seq()) out.append(",\"superseded_at_seq\":").append(std::to_string(f.superseded_at_seq()));
  out.append(",\"valid_from\":");
  if (f.valid_from_ns()) wire::append_timestamp_json(out, f.valid_from_ns());
  else out.append("null");
  out.append(",\"valid_to\":");
  if (f.valid_to_ns()) wire::append_timestamp_json(out, f.valid_to_ns());
  else out.append("null");
  // The value was checked to be JSON when it was set (compact, as model::dump wrote it).
  out.append(",\"value\":").append(f.value_json().empty() ? "null" : f.value_json());
  out.push_back('}');
}

json to_json(const api::Fact& f) {
  std::string text;
  append_fact_json(text, f);
  auto parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return parsed.is_discarded() ? json(nullptr) : parsed;
}

std::optional<std::string> check_fact_key(std::string_view field, std::string_view key) {
  const std::string name(field);
  if (key.empty() || key.size() > 256) return name + " must be 1-256 bytes";
  bool segment_start = true;
  for (char c : key) {
    if (c == '.') {
      if (segment_start) return name + " '" + std::string(key) + "' has an empty segment; use dotted names like repo.main_branch";
      segment_start = true;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok)
      return name + " may hold only letters, digits, '_', '-' and '.' between segments (like repo.main_branch)";
    segment_start = false;
  }
  if (segment_start) return name + " '" + std::string(key) + "' ends with '.'";
  return std::nullopt;
}

json to_json(const api::Task& t) {
  const auto object_or_null = [](const std::string& text) -> json {
    if (text.empty()) return nullptr;
    auto parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
    return parsed.is_discarded() ? json(nullptr) : parsed;
  };
  json out{{"task_id", t.task_id()},
           {"context_id", t.context_id()},
           {"title", t.title()},
           {"spec", object_or_null(t.spec_json())},
           {"depends_on", t.depends_on()},
           {"status", t.status()},
           {"attempts", t.attempts()},
           {"max_attempts", t.max_attempts()},
           {"progress", object_or_null(t.progress_json())},
           {"created_by", t.created_by()},
           {"created_at", timestamp_json(t.created_at_ns())},
           {"updated_at", timestamp_json(t.updated_at_ns())}};
  if (t.status() == "claimed") {
    out["holder_agent"] = t.holder_agent();
    out["fencing_token"] = t.fencing_token();
    out["claim_expires_at"] = timestamp_json(t.claim_expires_at_ns());
  }
  if (!t.last_holder().empty()) out["last_holder"] = t.last_holder();
  if (!t.result_json().empty()) out["result"] = object_or_null(t.result_json());
  if (!t.error().empty()) out["error"] = t.error();
  return out;
}

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

// The nlohmann value simdjson's parse of the same text stands for. Integers
// keep nlohmann's split: unsigned when not negative, signed otherwise. `zero`
// is set when an integer 0 was met (see parse_json_fast).
json from_simdjson(simdjson::dom::element e, bool& zero) {
  using type = simdjson::dom::element_type;
  switch (e.type()) {
    case type::OBJECT: {
      json out = json::object();
      auto& members = out.get_ref<json::object_t&>();
      // Assigned, not emplaced: nlohmann keeps the last of duplicate keys too.
      const simdjson::dom::object object = e.get_object().value_unsafe();
      for (auto [key, value] : object) members[std::string(key)] = from_simdjson(value, zero);
      return out;
    }
    case type::ARRAY: {
      json out = json::array();
      auto& items = out.get_ref<json::array_t&>();
      const simdjson::dom::array array = e.get_array().value_unsafe();
      for (auto value : array) items.push_back(from_simdjson(value, zero));
      return out;
    }
    case type::INT64: {
      const int64_t n = e.get_int64().value_unsafe();
      zero |= n == 0;
      return n >= 0 ? json(uint64_t(n)) : json(n);
    }
    case type::UINT64: return json(e.get_uint64().value_unsafe());
    case type::DOUBLE: return json(e.get_double().value_unsafe());
    case type::STRING: return json(e.get_string().value_unsafe());
    case type::BOOL: return json(e.get_bool().value_unsafe());
    case type::NULL_VALUE: return json(nullptr);
  }
  ENGRAM_ASSERT(false, "simdjson element of an unknown type");
  return json();
}

// simdjson holds ~15 bytes per byte of text while it parses (measured: 250 KB
// for 16 KiB, 15 MB for 1 MiB). Texts up to `reused_parser_bytes` use a parser
// kept per thread, which keeps what it grew for the largest of them (~250 KB);
// larger ones get a parser of their own, freed after the parse; beyond
// `fast_parse_max_bytes` (the default body limit) nlohmann parses alone, so a
// raised server.max_body_bytes does not multiply what one request may hold.
constexpr size_t reused_parser_bytes = 16 * 1024;
constexpr size_t fast_parse_max_bytes = 1024 * 1024;

// Whether the text may hold the number -0: a "-0" after the start (a BOM
// included), ':', '[' or ',' (with JSON whitespace between), and not followed by
// what would continue a number. A string that looks like that only costs a
// second parse.
bool may_hold_minus_zero(std::string_view text) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  for (size_t at = text.find("-0"); at != std::string_view::npos; at = text.find("-0", at + 1)) {
    if (const size_t next = at + 2; next < text.size()) {
      const char c = text[next];
      if (c == '.' || c == 'e' || c == 'E' || (c >= '0' && c <= '9')) continue;
    }
    size_t before = at;
    while (before > 0 && space(text[before - 1])) --before;
    if (before == 0 || (before == 3 && text.starts_with("\xEF\xBB\xBF")) || text[before - 1] == ':' ||
        text[before - 1] == '[' || text[before - 1] == ',')
      return true;
  }
  return false;
}

}  // namespace

namespace detail {

std::optional<json> parse_json_fast(std::string_view text) {
  if (text.size() > fast_parse_max_bytes) return std::nullopt;
  thread_local simdjson::dom::parser reused;
  std::optional<simdjson::dom::parser> own;
  auto& parser = text.size() <= reused_parser_bytes ? reused : own.emplace();
  simdjson::dom::element root;
  if (parser.parse(text.data(), text.size(), /*realloc_if_needed=*/true).get(root) != simdjson::SUCCESS)
    return std::nullopt;
  bool zero = false;
  json value = from_simdjson(root, zero);
  // simdjson reads "-0" as the integer 0, nlohmann as a signed 0 (which the
  // unsigned-only fields refuse): with an integer 0 and what may be a -0 in the
  // text, nlohmann parses it.
  if (zero && may_hold_minus_zero(text)) return std::nullopt;
  return value;
}

}  // namespace detail

// nlohmann's lexer reads one character at a time: parsing a 300-byte append body
// was ~20% of the append's instructions (callgrind). simdjson parses the text
// and the result is built as the same nlohmann value. What the fast path turns
// down goes to nlohmann, whose verdict stands: simdjson accepts a subset of what
// nlohmann does (not a leading UTF-8 BOM, nor integers beyond 64 bits, which
// nlohmann reads as floats), and gives the same values and number kinds where
// both accept, but for "-0" (ParseJson.AgreesWithNlohmann in model_test).
std::optional<json> parse_json(std::string_view text) {
  if (auto fast = detail::parse_json_fast(text)) return fast;
  auto parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return std::nullopt;
  return parsed;
}

result<api::WorkUnitType> unit_type_from_json(const json& value, std::string_view field) {
  auto n = enum_from_json(value, field, wire::unit_type_names, wire::unit_type_prefix);
  if (!n) return std::unexpected(n.error());
  return api::WorkUnitType(*n);
}

result<api::RelationshipType> relationship_type_from_json(const json& value,
                                                         std::string_view field) {
  auto n = enum_from_json(value, field, wire::relationship_type_names, wire::relationship_type_prefix);
  if (!n) return std::unexpected(n.error());
  return api::RelationshipType(*n);
}

result<api::WorkUnit> unit_from_json(const json& object, const unit_defaults& defaults) {
  if (!object.is_object())
    return fail(errc::invalid_argument, "a work unit must be a JSON object");
  api::WorkUnit unit;

  auto context_id = string_field(object, "context_id", defaults.context_id);
  if (!context_id) return std::unexpected(context_id.error());
  if (auto bad = check_identifier("context_id", *context_id, max_id_bytes))
    return fail(errc::invalid_argument, *bad);
  unit.set_context_id(std::move(*context_id));

  auto agent_id = string_field(object, "agent_id", "");
  if (!agent_id) return std::unexpected(agent_id.error());
  if (agent_id->empty()) *agent_id = defaults.agent_id;
  if (auto bad = check_identifier("agent_id", *agent_id, max_id_bytes))
    return fail(errc::invalid_argument,
                *bad + (agent_id->empty() ? " (in the body or the X-Agent-ID header)" : ""));
  unit.set_agent_id(std::move(*agent_id));

  if (auto it = object.find("type"); it != object.end() && !it->is_null()) {
    auto type = unit_type_from_json(*it, "type");
    if (!type) return std::unexpected(type.error());
    unit.set_type(*type);
  }

  if (auto it = object.find("meta"); it != object.end()) {
    if (auto ok = meta_from_json(*it, "meta", *unit.mutable_meta()); !ok)
      return std::unexpected(ok.error());
  }

  auto call_id = string_field(object, "call_id", "");
  if (!call_id) return std::unexpected(call_id.error());
  if (!call_id->empty()) {
    if (unit.type() != api::WORK_UNIT_TYPE_TOOL_CALL && unit.type() != api::WORK_UNIT_TYPE_TOOL_RESULT)
      return fail(errc::invalid_argument, "call_id is only for TOOL_CALL (3) and TOOL_RESULT (4) units");
    if (auto bad = check_identifier("call_id", *call_id, max_id_bytes)) return fail(errc::invalid_argument, *bad);
    unit.set_call_id(std::move(*call_id));
  }

  const auto payload = object.find("payload");
  const auto text = object.find("text");
  const bool has_payload = payload != object.end() && !payload->is_null();
  const bool has_text = text != object.end() && !text->is_null();
  if (has_payload && has_text)
    return fail(errc::invalid_argument, "give either payload (base64) or text (UTF-8), not both");
  if (has_payload) {
    if (!payload->is_string())
      return fail(errc::invalid_argument, "payload must be a base64 string");
    auto bytes = base64_decode(payload->get_ref<const std::string&>());
    if (!bytes) return fail(errc::invalid_argument, "payload is not valid standard base64");
    unit.set_payload(std::move(*bytes));
  } else if (has_text) {
    if (!text->is_string()) return fail(errc::invalid_argument, "text must be a string");
    unit.set_payload(text->get<std::string>());
  }

  if (auto it = object.find("tokens"); it != object.end() && !it->is_null()) {
    const bool whole = it->is_number_unsigned() || (it->is_number_integer() && it->get<int64_t>() >= 0);
    if (!whole || it->get<uint64_t>() > max_unit_tokens)
      return fail(errc::invalid_argument, "tokens must be a whole number from 0 to " + std::to_string(max_unit_tokens) +
                                              ": the unit's size by your tokenizer (or leave it out for the server's estimate)");
    unit.set_tokens(uint32_t(it->get<uint64_t>()));
  } else {
    unit.set_tokens(estimate_tokens(unit.payload()));
  }
  if (unit.type() == api::WORK_UNIT_TYPE_SUMMARY) {
    uint64_t span[2] = {0, 0};
    const char* names[2] = {"covers_from_seq", "covers_to_seq"};
    for (int i = 0; i < 2; ++i) {
      auto m = unit.meta().find(names[i]);
      const std::string v = m == unit.meta().end() ? std::string() : m->second;
      const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), span[i]);
      if (v.empty() || ec != std::errc() || end != v.data() + v.size() || span[i] == 0)
        return fail(errc::invalid_argument, std::string("a SUMMARY unit names the seqs it covers: meta.") + names[i] +
                                                " must be a seq (a positive integer, as a string)");
    }
    if (span[0] > span[1]) return fail(errc::invalid_argument, "meta.covers_from_seq must not be after meta.covers_to_seq");
  }

  if (auto it = object.find("embedding"); it != object.end() && !it->is_null()) {
    auto values = vector_from_json(*it, "embedding");
    if (!values) return std::unexpected(values.error());
    auto model = string_field(object, "embedding_model", default_embedding_model);
    if (!model) return std::unexpected(model.error());
    if (auto bad = check_identifier("embedding_model", *model, max_id_bytes))
      return fail(errc::invalid_argument, *bad);
    auto* e = unit.mutable_embedding();
    e->set_model(std::move(*model));
    e->mutable_values()->Add(values->begin(), values->end());
  } else if (auto m = object.find("embedding_model"); m != object.end() && !m->is_null()) {
    return fail(errc::invalid_argument, "embedding_model is given without an embedding");
  }

  if (auto it = object.find("relationships"); it != object.end() && !it->is_null()) {
    if (!it->is_array()) return fail(errc::invalid_argument, "relationships must be an array");
    if (it->size() > max_relationships)
      return fail(errc::invalid_argument, "relationships has more than " +
                                              std::to_string(max_relationships) + " entries");
    for (const auto& r : *it) {
      if (!r.is_object())
        return fail(errc::invalid_argument, "each relationship must be an object");
      auto* rel = unit.add_relationships();
      auto target = string_field(r, "target_id", "");
      if (!target) return std::unexpected(target.error());
      if (auto bad = check_identifier("relationships[].target_id", *target, max_id_bytes))
        return fail(errc::invalid_argument, *bad);
      rel->set_target_id(std::move(*target));
      if (auto t = r.find("type"); t != r.end() && !t->is_null()) {
        auto type = relationship_type_from_json(*t, "relationships[].type");
        if (!type) return std::unexpected(type.error());
        rel->set_type(*type);
      }
      if (auto m = r.find("meta"); m != r.end()) {
        if (auto ok = meta_from_json(*m, "relationships[].meta", *rel->mutable_meta()); !ok)
          return std::unexpected(ok.error());
      }
    }
  }
  return unit;
}

result<std::vector<float>> vector_from_json(const json& value, std::string_view field) {
  const std::string name(field);
  if (!value.is_array()) return fail(errc::invalid_argument, name + " must be an array of numbers");
  if (value.empty() || value.size() > max_embedding_dimension)
    return fail(errc::invalid_argument, name + " must have 1 to " + std::to_string(max_embedding_dimension) +
                                            " numbers (it has " + std::to_string(value.size()) + ")");
  std::vector<float> out;
  out.reserve(value.size());
  bool nonzero = false;
  for (const auto& v : value) {
    if (!v.is_number()) return fail(errc::invalid_argument, name + " must contain only numbers");
    const double d = v.get<double>();
    const auto f = float(d);
    if (!std::isfinite(f)) return fail(errc::invalid_argument, name + " values must be finite 32-bit floats");
    nonzero = nonzero || f != 0;
    out.push_back(f);
  }
  if (!nonzero) return fail(errc::invalid_argument, name + " must not be all zeros");
  return out;
}

void append_text_json(std::string& out, std::string_view payload) {
  out.append(",\"text\":");
  if (!valid_utf8(payload)) return out.append("null"), void();
  append_json_string(out, payload);
}

std::string with_text_json(std::string_view unit_object) {
  std::string out(unit_object);
  auto parsed = parse_json(unit_object);
  if (!parsed || !parsed->is_object() || unit_object.empty() || unit_object.back() != '}') return out;
  const auto payload = parsed->find("payload");
  if (payload == parsed->end() || !payload->is_string()) return out;
  auto bytes = wire::base64_decode(payload->get_ref<const std::string&>());
  if (!bytes) return out;
  out.pop_back();
  append_text_json(out, *bytes);
  out.push_back('}');
  return out;
}

void append_embedding_json(std::string& out, const api::Embedding& embedding) {
  out.append(",\"embedding\":[");
  char buf[32];
  for (int i = 0; i < embedding.values_size(); ++i) {
    if (i) out.push_back(',');
    // Shortest text that reads back as the same float.
    const auto r = std::to_chars(buf, buf + sizeof buf, embedding.values(i));
    out.append(buf, r.ptr);
  }
  out.append("],\"embedding_model\":");
  append_json_string(out, embedding.model());
}

result<context_patch> patch_from_json(const json& object) {
  if (!object.is_object())
    return fail(errc::invalid_argument, "the request body must be a JSON object");
  context_patch patch;
  if (auto it = object.find("display_name"); it != object.end() && !it->is_null()) {
    if (!it->is_string()) return fail(errc::invalid_argument, "display_name must be a string");
    const auto& name = it->get_ref<const std::string&>();
    if (name.size() > max_display_name_bytes)
      return fail(errc::invalid_argument, "display_name is longer than " +
                                              std::to_string(max_display_name_bytes) + " bytes");
    // As in Engram v3: an empty name leaves the current one (v3 clients send the
    // field empty when they do not mean to change it).
    if (!name.empty()) patch.display_name = name;
  }
  for (auto [field, target] :
       {std::pair{"add_agents", &patch.add_agents}, std::pair{"remove_agents", &patch.remove_agents},
        std::pair{"pin_units", &patch.pin_units}, std::pair{"unpin_units", &patch.unpin_units}}) {
    auto ids = id_list(object, field);
    if (!ids) return std::unexpected(ids.error());
    *target = std::move(*ids);
  }
  if (auto it = object.find("meta"); it != object.end() && !it->is_null()) {
    if (!it->is_object())
      return fail(errc::invalid_argument, "meta must be an object of strings (null deletes a key)");
    if (it->size() > max_meta_entries)
      return fail(errc::invalid_argument, "meta has more than " +
                                              std::to_string(max_meta_entries) + " entries");
    for (const auto& [key, v] : it->items()) {
      if (key.empty() || key.size() > max_id_bytes)
        return fail(errc::invalid_argument,
                    "meta keys must be 1-" + std::to_string(max_id_bytes) + " bytes");
      if (v.is_null()) {
        patch.meta.emplace_back(key, std::nullopt);
      } else if (v.is_string() && v.get_ref<const std::string&>().size() <= max_meta_value_bytes) {
        patch.meta.emplace_back(key, v.get<std::string>());
      } else {
        return fail(errc::invalid_argument, "meta." + key + " must be a string of at most " +
                                                std::to_string(max_meta_value_bytes) +
                                                " bytes, or null to delete it");
      }
    }
  }
  if (auto it = object.find("retention"); it != object.end()) {
    auto r = retention_from_json(*it);
    if (!r) return std::unexpected(r.error());
    patch.retention = std::move(*r);
  }
  return patch;
}

result<std::optional<api::Retention>> retention_from_json(const json& value) {
  if (value.is_null()) return std::optional<api::Retention>();
  constexpr std::string_view shape =
      "retention must be null or an object {\"max_age_seconds\": n, \"max_events\": n} (0: no limit)";
  if (!value.is_object()) return fail(errc::invalid_argument, std::string(shape));
  api::Retention r;
  for (const auto& [key, v] : value.items()) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
      return fail(errc::invalid_argument, "retention." + key + " must be a non-negative integer");
    if (key == "max_age_seconds") {
      const auto n = v.get<uint64_t>();
      constexpr uint64_t century = 100ull * 366 * 24 * 3600;
      if (n > century) return fail(errc::invalid_argument, "retention.max_age_seconds is more than 100 years");
      r.set_max_age_seconds(int64_t(n));
    } else if (key == "max_events") {
      r.set_max_events(v.get<uint64_t>());
    } else {
      return fail(errc::invalid_argument, "unknown field retention." + key + "; " + std::string(shape));
    }
  }
  return std::optional<api::Retention>(std::move(r));
}

void apply_patch(api::Context& context, const context_patch& patch) {
  if (patch.display_name) context.set_display_name(*patch.display_name);
  if (patch.retention) {
    if (*patch.retention) *context.mutable_retention() = **patch.retention;
    else context.clear_retention();
  }
  add_unique(*context.mutable_agent_ids(), patch.add_agents);
  remove_all(*context.mutable_agent_ids(), patch.remove_agents);
  add_unique(*context.mutable_pinned_units(), patch.pin_units);
  remove_all(*context.mutable_pinned_units(), patch.unpin_units);
  auto& meta = *context.mutable_meta();
  for (const auto& [key, value] : patch.meta) {
    if (value)
      meta[key] = *value;
    else
      meta.erase(key);
  }
}

// ---- events (import): the inverse of the form GET /contexts/{id}/events gives ----

namespace {

result<uint64_t> uint_member(const json& object, std::string_view field, bool required) {
  const auto it = object.find(field);
  if (it == object.end() || it->is_null()) {
    if (required) return fail(errc::invalid_argument, std::string(field) + " is missing");
    return uint64_t(0);
  }
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0))
    return fail(errc::invalid_argument, std::string(field) + " must be a non-negative integer");
  return it->get<uint64_t>();
}

result<int64_t> optional_timestamp(const json& object, std::string_view field) {
  const auto it = object.find(field);
  if (it == object.end() || it->is_null()) return int64_t(0);
  return timestamp_from_json(*it, field);
}

// A task as to_json(api::Task) writes it, in a task_* event of `context_id`.
result<api::Task> task_from_json(const json& value, std::string_view context_id) {
  if (!value.is_object()) return fail(errc::invalid_argument, "task must be an object");
  api::Task t;
  t.set_context_id(std::string(context_id));
  for (auto [field, set] : std::initializer_list<std::pair<const char*, void (api::Task::*)(const std::string&)>>{
           {"task_id", &api::Task::set_task_id},
           {"title", &api::Task::set_title},
           {"status", &api::Task::set_status},
           {"holder_agent", &api::Task::set_holder_agent},
           {"error", &api::Task::set_error},
           {"last_holder", &api::Task::set_last_holder},
           {"created_by", &api::Task::set_created_by}}) {
    auto v = string_field(value, field, "");
    if (!v) return std::unexpected(v.error());
    (t.*set)(*v);
  }
  if (auto bad = check_identifier("task.task_id", t.task_id(), max_id_bytes)) return fail(errc::invalid_argument, *bad);
  for (auto [field, set] : std::initializer_list<std::pair<const char*, void (api::Task::*)(const std::string&)>>{
           {"spec", &api::Task::set_spec_json}, {"progress", &api::Task::set_progress_json},
           {"result", &api::Task::set_result_json}}) {
    const auto it = value.find(field);
    if (it == value.end() || it->is_null()) continue;
    if (!it->is_object()) return fail(errc::invalid_argument, "task." + std::string(field) + " must be an object");
    (t.*set)(dump(*it));
  }
  auto deps = id_list(value, "depends_on");
  if (!deps) return std::unexpected(deps.error());
  for (auto& d : *deps) t.add_depends_on(std::move(d));
  auto token = uint_member(value, "fencing_token", false);
  auto attempts = uint_member(value, "attempts", false);
  auto max_attempts = uint_member(value, "max_attempts", false);
  auto expires = optional_timestamp(value, "claim_expires_at");
  auto created = optional_timestamp(value, "created_at");
  auto updated = optional_timestamp(value, "updated_at");
  for (const auto* r : {&token, &attempts, &max_attempts})
    if (!*r) return std::unexpected(r->error());
  for (const auto* r : {&expires, &created, &updated})
    if (!*r) return std::unexpected(r->error());
  t.set_fencing_token(*token);
  t.set_attempts(uint32_t(std::min<uint64_t>(*attempts, UINT32_MAX)));
  t.set_max_attempts(uint32_t(std::min<uint64_t>(*max_attempts, UINT32_MAX)));
  t.set_claim_expires_at_ns(*expires);
  t.set_created_at_ns(*created);
  t.set_updated_at_ns(*updated);
  return t;
}

result<api::Context> context_from_json(const json& value, std::string_view context_id) {
  if (!value.is_object()) return fail(errc::invalid_argument, "context must be an object");
  api::Context c;
  auto id = string_field(value, "id", context_id);
  if (!id) return std::unexpected(id.error());
  if (*id != context_id)
    return fail(errc::invalid_argument, "context.id '" + *id + "' is not the context imported into");
  c.set_id(*id);
  auto name = string_field(value, "display_name", "");
  if (!name) return std::unexpected(name.error());
  c.set_display_name(std::move(*name));
  for (auto [field, target] : {std::pair{"agent_ids", c.mutable_agent_ids()}, std::pair{"pinned_units", c.mutable_pinned_units()}}) {
    auto ids = id_list(value, field);
    if (!ids) return std::unexpected(ids.error());
    for (auto& v : *ids) *target->Add() = std::move(v);
  }
  if (auto m = value.find("meta"); m != value.end())
    if (auto ok = meta_from_json(*m, "context.meta", *c.mutable_meta()); !ok) return std::unexpected(ok.error());
  auto created = optional_timestamp(value, "created_at");
  auto updated = optional_timestamp(value, "updated_at");
  if (!created) return std::unexpected(created.error());
  if (!updated) return std::unexpected(updated.error());
  c.set_created_at_ns(*created);
  c.set_updated_at_ns(*updated);
  auto first = uint_member(value, "first_seq", false);
  if (!first) return std::unexpected(first.error());
  c.set_first_seq(*first);
  if (auto r = value.find("retention"); r != value.end() && !r->is_null()) {
    auto ret = retention_from_json(*r);
    if (!ret) return std::unexpected(ret.error());
    *c.mutable_retention() = **ret;
  }
  return c;
}

result<api::Lock> lock_from_json(const json& value) {
  if (!value.is_object()) return fail(errc::invalid_argument, "lock must be an object");
  api::Lock l;
  std::string fields[4];
  const char* names[4] = {"resource_path", "holder_agent", "lock_id", "context_id"};
  for (int i = 0; i < 4; ++i) {
    auto v = string_field(value, names[i], "");
    if (!v) return std::unexpected(v.error());
    fields[i] = std::move(*v);
  }
  l.set_resource_path(std::move(fields[0]));
  l.set_holder_agent(std::move(fields[1]));
  l.set_lock_id(std::move(fields[2]));
  l.set_context_id(std::move(fields[3]));
  if (l.resource_path().empty()) return fail(errc::invalid_argument, "lock.resource_path is missing");
  auto token = uint_member(value, "fencing_token", false);
  auto expires = optional_timestamp(value, "expires_at");
  auto acquired = optional_timestamp(value, "acquired_at");
  if (!token) return std::unexpected(token.error());
  if (!expires) return std::unexpected(expires.error());
  if (!acquired) return std::unexpected(acquired.error());
  l.set_fencing_token(*token);
  l.set_expires_at_ns(*expires);
  l.set_acquired_at_ns(*acquired);
  return l;
}

// A fact as to_json(api::Fact) writes it, in a fact_* event.
result<api::Fact> fact_from_json(const json& value) {
  if (!value.is_object()) return fail(errc::invalid_argument, "fact must be an object");
  api::Fact f;
  auto key = string_field(value, "key", "");
  if (!key) return std::unexpected(key.error());
  if (auto bad = check_fact_key("fact.key", *key)) return fail(errc::invalid_argument, *bad);
  f.set_key(std::move(*key));
  f.set_value_json(dump(value.contains("value") ? value["value"] : json(nullptr)));
  std::string text[4];
  const char* names[4] = {"status", "agent_id", "ended_by", "retracted_by"};
  for (int i = 0; i < 4; ++i) {
    auto v = string_field(value, names[i], "");
    if (!v) return std::unexpected(v.error());
    text[i] = std::move(*v);
  }
  f.set_status(std::move(text[0]));
  f.set_agent_id(std::move(text[1]));
  f.set_ended_by(std::move(text[2]));
  f.set_retracted_by(std::move(text[3]));
  if (f.status().empty()) f.set_status("active");
  if (f.status() != "active" && f.status() != "disputed")
    return fail(errc::invalid_argument, "fact.status must be \"active\" or \"disputed\"");
  if (auto src = value.find("sources"); src != value.end() && !src->is_null()) {
    if (!src->is_array()) return fail(errc::invalid_argument, "fact.sources must be an array of seqs");
    for (const auto& s : *src) {
      if (!s.is_number_unsigned()) return fail(errc::invalid_argument, "fact.sources must be an array of seqs");
      f.add_sources(s.get<uint64_t>());
    }
  }
  if (auto c = value.find("confidence"); c != value.end() && !c->is_null()) {
    if (!c->is_number()) return fail(errc::invalid_argument, "fact.confidence must be a number");
    f.set_confidence(c->get<double>());
  }
  auto from = optional_timestamp(value, "valid_from");
  auto to = optional_timestamp(value, "valid_to");
  auto set_at = optional_timestamp(value, "set_at");
  auto set_seq = uint_member(value, "set_at_seq", false);
  auto ended = uint_member(value, "superseded_at_seq", false);
  for (const auto* r : {&from, &to, &set_at})
    if (!*r) return std::unexpected(r->error());
  if (!set_seq) return std::unexpected(set_seq.error());
  if (!ended) return std::unexpected(ended.error());
  f.set_valid_from_ns(*from);
  f.set_valid_to_ns(*to);
  f.set_set_at_ns(*set_at);
  f.set_set_at_seq(*set_seq);
  f.set_superseded_at_seq(*ended);
  return f;
}

}  // namespace

result<api::Event> event_from_json(const json& object, std::string_view context_id) {
  if (!object.is_object()) return fail(errc::invalid_argument, "an event must be a JSON object");
  api::Event ev;
  auto seq = uint_member(object, "seq", true);
  if (!seq) return std::unexpected(seq.error());
  constexpr uint64_t max_seq = uint64_t(1) << 53;  // far beyond any log; exact in JavaScript
  if (*seq == 0 || *seq > max_seq)
    return fail(errc::invalid_argument, "seq must be between 1 and 2^53");
  auto ctx = string_field(object, "context_id", context_id);
  if (!ctx) return std::unexpected(ctx.error());
  if (*ctx != context_id)
    return fail(errc::invalid_argument, "an event of context '" + *ctx + "' in an import into '" +
                                            std::string(context_id) + "'");
  ev.set_context_id(std::string(context_id));
  ev.set_seq(*seq);
  auto ts = optional_timestamp(object, "ts");
  if (!ts) return std::unexpected(ts.error());
  ev.set_ts_ns(*ts);

  const auto type = object.find("type");
  if (type == object.end() || !type->is_string()) {  // a work unit: integer (or named) "type"
    if (object.contains("embedding")) return fail(errc::invalid_argument, "embeddings are not imported");
    auto unit = unit_from_json(object, unit_defaults{context_id, ""});
    if (!unit) return std::unexpected(unit.error());
    auto id = string_field(object, "id", "");
    if (!id) return std::unexpected(id.error());
    if (!uuid::parse(*id)) return fail(errc::invalid_argument, "id must be a work unit id (a UUID)");
    if (!object.contains("ts")) return fail(errc::invalid_argument, "ts is missing");
    auto key = string_field(object, "idempotency_key", "");
    if (!key) return std::unexpected(key.error());
    unit->set_id(std::move(*id));
    unit->set_seq(*seq);
    unit->set_ts_ns(*ts);
    unit->set_idempotency_key(std::move(*key));
    *ev.mutable_work_unit() = std::move(*unit);
    return ev;
  }
  const auto& kind = type->get_ref<const std::string&>();
  if (kind == "context_updated") {
    const auto c = object.find("context");
    if (c == object.end()) return fail(errc::invalid_argument, "context is missing");
    auto parsed = context_from_json(*c, context_id);
    if (!parsed) return std::unexpected(parsed.error());
    parsed->set_head_seq(*seq);  // the state the event carries includes itself
    if (!object.contains("ts")) ev.set_ts_ns(parsed->updated_at_ns());
    *ev.mutable_context_updated()->mutable_context() = std::move(*parsed);
    return ev;
  }
  if (kind == "checkpoint_saved") {
    auto agent = string_field(object, "agent_id", "");
    if (!agent) return std::unexpected(agent.error());
    if (auto bad = check_identifier("agent_id", *agent, max_id_bytes)) return fail(errc::invalid_argument, *bad);
    auto version = uint_member(object, "version", true);
    auto cursor = uint_member(object, "cursor_seq", false);
    if (!version) return std::unexpected(version.error());
    if (!cursor) return std::unexpected(cursor.error());
    if (*version == 0) return fail(errc::invalid_argument, "version must be at least 1");
    const auto state = object.find("state");
    if (state != object.end() && !state->is_null() && !state->is_object())
      return fail(errc::invalid_argument, "state must be a JSON object");
    auto* cp = ev.mutable_checkpoint();
    cp->set_agent_id(std::move(*agent));
    cp->set_version(*version);
    cp->set_cursor_seq(*cursor);
    cp->set_state_json(state == object.end() || state->is_null() ? "{}" : dump(*state));
    return ev;
  }
  if (kind == "context_deleted") {
    auto by = string_field(object, "deleted_by", "");
    auto removed = uint_member(object, "removed_events", false);
    if (!by) return std::unexpected(by.error());
    if (!removed) return std::unexpected(removed.error());
    ev.mutable_context_deleted()->set_deleted_by(std::move(*by));
    ev.mutable_context_deleted()->set_removed_events(*removed);
    return ev;
  }
  if (kind == "agent_joined" || kind == "agent_left") {
    auto agent = string_field(object, "agent_id", "");
    auto text = string_field(object, kind == "agent_joined" ? "status" : "reason", "");
    if (!agent) return std::unexpected(agent.error());
    if (!text) return std::unexpected(text.error());
    if (auto bad = check_identifier("agent_id", *agent, max_id_bytes)) return fail(errc::invalid_argument, *bad);
    auto* p = ev.mutable_presence();
    p->set_agent_id(std::move(*agent));
    p->set_joined(kind == "agent_joined");
    if (p->joined()) p->set_status(std::move(*text));
    else p->set_reason(std::move(*text));
    return ev;
  }
  for (std::string_view known : {"created", "claimed", "progress", "completed", "failed", "stranded", "released"}) {
    if (kind != "task_" + std::string(known)) continue;
    const auto t = object.find("task");
    if (t == object.end()) return fail(errc::invalid_argument, "task is missing");
    auto task = task_from_json(*t, context_id);
    if (!task) return std::unexpected(task.error());
    ev.mutable_task_event()->set_kind(std::string(known));
    *ev.mutable_task_event()->mutable_task() = std::move(*task);
    return ev;
  }
  if (kind == "fact_set" || kind == "fact_retracted") {
    const auto f = object.find("fact");
    if (f == object.end()) return fail(errc::invalid_argument, "fact is missing");
    auto fact = fact_from_json(*f);
    if (!fact) return std::unexpected(fact.error());
    ev.mutable_fact_event()->set_kind(kind == "fact_set" ? "set" : "retracted");
    *ev.mutable_fact_event()->mutable_fact() = std::move(*fact);
    return ev;
  }
  for (std::string_view known : {"acquired", "renewed", "released", "expired"}) {
    if (kind != "lock_" + std::string(known)) continue;
    const auto l = object.find("lock");
    if (l == object.end()) return fail(errc::invalid_argument, "lock is missing");
    auto lock = lock_from_json(*l);
    if (!lock) return std::unexpected(lock.error());
    auto by = string_field(object, "released_by", "");
    if (!by) return std::unexpected(by.error());
    ev.mutable_lock_event()->set_kind(std::string(known));
    *ev.mutable_lock_event()->mutable_lock() = std::move(*lock);
    ev.mutable_lock_event()->set_released_by(std::move(*by));
    return ev;
  }
  return fail(errc::invalid_argument, "unknown event type '" + kind +
                                          "' (expected a work unit, context_updated, context_deleted, checkpoint_saved, "
                                          "agent_joined, agent_left, lock_*, task_* or fact_*)");
}

}  // namespace engram::model
