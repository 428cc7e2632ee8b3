#pragma once
// JSON codecs for the Engram v3 wire format (DESIGN.md §5): snake_case fields,
// integer enums on output (names accepted on input), {"seconds","nanos"}
// timestamps, base64 payloads. Parsing validates every field and reports the first
// problem as an invalid_argument error naming the field.

#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engram.pb.h"
#include "model/error.hpp"
#include "wire/timestamp.hpp"

namespace engram::model {

using json = nlohmann::json;

// Limits on client-supplied fields; bodies are bounded separately by the server.
inline constexpr size_t max_id_bytes = 256;
inline constexpr size_t max_meta_entries = 256;
inline constexpr size_t max_meta_value_bytes = 64 * 1024;
inline constexpr size_t max_relationships = 256;
inline constexpr size_t max_display_name_bytes = 1024;
inline constexpr size_t max_embedding_dimension = 4096;
// The embedding model of a vector that names none.
inline constexpr std::string_view default_embedding_model = "default";

// {"seconds":S,"nanos":N}, nanos non-negative (api/wire/timestamp.hpp).
using wire::timestamp_json;
// A point in time as ns since the epoch, from {"seconds":S,"nanos":N} (what
// timestamp_json writes) or an RFC 3339 string ("2026-11-21T20:40:00.5Z",
// "…+01:00").
result<int64_t> timestamp_from_json(const json& value, std::string_view field);
result<int64_t> parse_rfc3339(std::string_view text);
json to_json(const api::Context& context);
json to_json(const api::Lock& lock);
// A task as the task routes and task_* events show it (lock_id is never shown:
// the fencing token is what a holder presents).
json to_json(const api::Task& task);
// The server's token estimate of a unit (README, Token counts): ⌈characters / 4⌉ of
// a UTF-8 payload, ⌈bytes / 4⌉ of any other, and 0 for an empty one.
uint32_t estimate_tokens(std::string_view payload);
// A unit's token count: its stored one, or (units written before counts were
// stored) the estimate.
inline uint32_t unit_tokens(const api::WorkUnit& u) { return u.tokens() ? u.tokens() : estimate_tokens(u.payload()); }
inline constexpr uint32_t max_unit_tokens = 100'000'000;

// A fact version as the fact routes and fact_* events show it: the direct writer
// (members in name order; the packet writes many) and the same as a json value.
void append_fact_json(std::string& out, const api::Fact& fact);
json to_json(const api::Fact& fact);
// A fact key: dotted segments of letters, digits, '_' and '-' ("repo.main_branch"),
// at most 256 bytes. Returns a message naming `field` when invalid.
std::optional<std::string> check_fact_key(std::string_view field, std::string_view key);

// Work units are the hot path (every write response, every page of up to 1000), so
// they are rendered by a direct writer rather than through nlohmann::json (measured
// ~5x faster: bench/engram-micro BM_UnitToJson). The only work-unit encoder. Meta keys are
// sorted so the same unit always renders to the same bytes.
// `extras`, when set, appends further members (",\"k\":v") before the closing brace.
using unit_extras = std::function<void(std::string&)>;
void append_unit_json(std::string& out, const api::WorkUnit& unit, const unit_extras& extras = {});
std::string unit_json(const api::WorkUnit& unit);
// About what append_unit_json writes for `unit` (no extras, no escapes), so that a
// caller can reserve it once.
size_t unit_json_size_hint(const api::WorkUnit& unit);
// `[unit,…]`; with_text: each unit also carries its payload as "text"
// (append_text_json, ?text=1).
void append_units_json(std::string& out, const std::vector<api::WorkUnit>& units, bool with_text = false);
// Appends `s` as a JSON string literal (quotes included).
void append_json_string(std::string& out, std::string_view s);

// Serialise compactly; never throws (invalid UTF-8 would be replaced, though every
// string we store has been validated).
std::string dump(const json& value);

// Parse a JSON text; nullopt when it is not valid JSON (including invalid UTF-8).
std::optional<json> parse_json(std::string_view text);

namespace detail {
// parse_json's fast path on its own (simdjson): the value, or nullopt where
// parse_json leaves the text to nlohmann. For tests.
std::optional<json> parse_json_fast(std::string_view text);
}  // namespace detail

// Values used when the unit object omits them (a batch's context, X-Agent-ID).
struct unit_defaults {
  std::string_view context_id;
  std::string_view agent_id;
};

// Parse one work unit from a request object. Server-assigned fields (id, seq, ts)
// are ignored if present. `text` (UTF-8) may replace base64 `payload`. An optional
// `embedding` (array of finite numbers, not all zero) with `embedding_model`
// becomes the unit's `embedding`.
result<api::WorkUnit> unit_from_json(const json& object, const unit_defaults& defaults);

// A vector from a JSON array of 1..max_embedding_dimension finite numbers, not all
// zero (its direction is what is compared).
result<std::vector<float>> vector_from_json(const json& value, std::string_view field);
// `,"text":"…"`: the payload as a JSON string when it is valid UTF-8, else
// `,"text":null` (?text=1 on unit reads and streams; the base64 `payload` stays).
void append_text_json(std::string& out, std::string_view payload);
// A rendered unit object (`unit_json`, or a stream event of a unit) with that
// member added before its closing brace; unchanged if it is not a unit object.
std::string with_text_json(std::string_view unit_object);
// `"embedding":[…],"embedding_model":"…"` members (leading comma included).
void append_embedding_json(std::string& out, const api::Embedding& embedding);

// Work unit type from an integer or a name ("MESSAGE", "message",
// "WORK_UNIT_TYPE_MESSAGE"); an error lists the accepted values.
result<api::WorkUnitType> unit_type_from_json(const json& value, std::string_view field);
result<api::RelationshipType> relationship_type_from_json(const json& value,
                                                         std::string_view field);

// PATCH /contexts/{id}. Lists are applied as sets: additions, then removals (an id
// both added and removed ends up removed). A null meta value deletes the key.
struct context_patch {
  std::optional<std::string> display_name;
  std::vector<std::string> add_agents, remove_agents, pin_units, unpin_units;
  std::vector<std::pair<std::string, std::optional<std::string>>> meta;
  // "retention": {"max_age_seconds", "max_events"} sets it; null returns the context
  // to the server's default.
  std::optional<std::optional<api::Retention>> retention;
};
result<context_patch> patch_from_json(const json& object);
result<std::optional<api::Retention>> retention_from_json(const json& value);

// One event of a context's log as GET /contexts/{id}/events and the streams give
// it (what `engramctl export` writes), for an import into `context_id`: a work unit
// (with its id, seq and ts), context_updated, context_deleted, checkpoint_saved,
// agent_joined / agent_left, a lock_* or a task_* event. Presence and task events
// are history in the log: importing them does not make anyone present or create
// the task.
// Control events without "ts" take their context's updated_at (context_updated) or
// 0 (the importer then uses the previous event's time).
result<api::Event> event_from_json(const json& object, std::string_view context_id);
void apply_patch(api::Context& context, const context_patch& patch);

}  // namespace engram::model
