#pragma once
// The Engram data model as the SDK sees it (DESIGN.md §2, api/openapi.yaml): plain
// value types decoded from and encoded to the v3 wire JSON. No I/O here.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace engram::client {

// Server time; the wire carries {"seconds","nanos"}.
using timestamp = std::chrono::sys_time<std::chrono::nanoseconds>;
using string_map = std::map<std::string, std::string>;

enum class unit_type : int {
  unknown = 0,
  message = 1,
  reasoning = 2,
  tool_call = 3,
  tool_result = 4,
  file_change = 5,
  task_status = 6,
  error = 7,
  system = 8,
  summary = 9,  // meta covers_from_seq / covers_to_seq name the span it summarises
};
// "MESSAGE", …; a value outside the known set prints as its number.
std::string to_string(unit_type t);
// A name (any case: "message", "TOOL_CALL") or a number 0-9.
std::optional<unit_type> parse_unit_type(std::string_view s);

enum class relationship_type : int {
  unspecified = 0,
  sequential = 1,
  causes = 2,
  depends_on = 3,
  references = 4,
  responds_to = 5,
  modifies = 6,
  replaces = 7,
};

struct relationship {
  std::string target_id;
  relationship_type type = relationship_type::unspecified;
  string_map meta;
};

// A committed, immutable work unit.
struct work_unit {
  std::string id;  // UUIDv7
  std::string context_id;
  uint64_t seq = 0;
  std::string agent_id;
  unit_type type = unit_type::unknown;
  timestamp ts{};
  string_map meta;
  std::string payload;  // raw bytes (base64 on the wire)
  std::vector<relationship> relationships;
  std::string idempotency_key;
  std::string call_id;  // TOOL_CALL / TOOL_RESULT: the tool call (README, Tool calls)
  uint32_t tokens = 0;  // size in LLM tokens: the writer's count or the server's estimate
};

// A write that names a lease: refused with 409 when a newer fencing token exists.
struct fence {
  std::string resource;
  uint64_t token = 0;
};

// What append() sends. Empty fields are left out of the request.
struct unit_input {
  std::string context_id;  // required for append(); a batch names its context once
  std::string agent_id;    // empty: the client's agent (client_options::agent_id)
  unit_type type = unit_type::message;
  std::string payload;  // bytes; text is just UTF-8 bytes
  string_map meta;
  std::vector<relationship> relationships;
  std::optional<client::fence> fence;
  std::vector<float> embedding;  // optional vector for semantic search
  std::string embedding_model;   // empty: the server's default model
  // TOOL_CALL: the call's id, unique in the context; TOOL_RESULT: the call it answers.
  std::string call_id;
  // The unit's size by your tokenizer; unset: the server estimates it.
  std::optional<uint32_t> tokens;
};

// GET /contexts/{id}/tool-calls/{call_id}.
struct tool_call {
  work_unit call;
  std::optional<work_unit> result;  // nullopt: pending
  std::string claimed_by;           // holder of the lease "call:<context_id>/<call_id>", if any
};

struct context {
  std::string id;
  std::string display_name;
  std::vector<std::string> agent_ids;
  std::vector<std::string> pinned_units;
  string_map meta;
  timestamp created_at{};
  timestamp updated_at{};
  uint64_t head_seq = 0;
};

// PATCH /contexts/{id}: an upsert; only what is set is sent.
struct context_patch {
  std::optional<std::string> display_name;
  std::vector<std::string> add_agents, remove_agents, pin_units, unpin_units;
  std::map<std::string, std::optional<std::string>> meta;  // nullopt deletes the key
};

// A lease on a resource.
struct lock {
  std::string resource_path;
  std::string holder_agent;
  std::string lock_id;
  uint64_t fencing_token = 0;
  timestamp expires_at{};
  timestamp acquired_at{};
  std::string context_id;  // empty when the lease is not tagged with a context

  client::fence fence() const { return {resource_path, fencing_token}; }
};

struct lock_request {
  std::vector<std::string> resources;  // one, or several taken all-or-nothing
  std::chrono::milliseconds ttl{0};    // 0: the server's default
  std::chrono::milliseconds wait{0};   // wait in the server's FIFO queue up to this long
  std::string context_id;              // lock transitions enter this context's log
  std::string agent_id;                // empty: the client's agent
};

struct relationship_filter {
  std::string target_id;
  std::optional<relationship_type> type;  // any type when empty
};

struct search_request {
  std::string query;       // Xapian query syntax; empty: every unit passing the filters
  std::string context_id;  // an id, or a prefix pattern ending in '*'
  std::vector<std::string> agent_ids;  // any of
  std::vector<unit_type> types;        // any of
  string_map meta_filters;             // all of
  std::vector<relationship_filter> relationships;  // all of
  std::optional<timestamp> from, to;   // [from, to)
  size_t limit = 100;
  size_t offset = 0;
  std::optional<bool> snippets;
  std::string mode;  // "keyword" | "semantic" | "hybrid"; empty: the server decides
  std::vector<float> vector;
  std::string embedding_model;
};

struct search_hit {
  std::string id;
  std::string context_id;
  uint64_t seq = 0;
  double score = 0;
  std::optional<uint64_t> keyword_rank, vector_rank;
  std::optional<double> keyword_score, vector_score;
  timestamp ts{};
  std::string snippet;
  // The unit's author and type, when the server includes them in hits; empty and
  // nullopt otherwise (get_unit(id) has them).
  std::string agent_id;
  std::optional<unit_type> type;
};

struct search_result {
  std::vector<std::string> ids;  // the v3 "results", in rank order
  std::vector<search_hit> hits;
  uint64_t total_count = 0;
  bool total_count_exact = true;
  size_t limit = 0, offset = 0;
  std::string mode;      // the mode that ran
  std::string degraded;  // why a vector search fell back to keyword, if it did
};

// A page of GET /contexts/{id}/events: each event as the server's JSON text (the
// form the streams deliver), for tools that pass events through unchanged.
struct events_page {
  std::vector<std::string> events;
  uint64_t head_seq = 0;
  uint64_t next_after_seq = 0;
  bool more = false;
};

// POST /admin/backup: where the server wrote the backup (on its own disk).
// An agent's checkpoint in a context (README, Checkpoints).
struct checkpoint {
  std::string context_id;
  std::string agent_id;
  uint64_t version = 0;     // 1, 2, 3 … per agent and context
  uint64_t cursor_seq = 0;  // the last seq the agent had dealt with
  std::string state_json;   // the saved JSON object, as text
  uint64_t seq = 0;         // of its checkpoint_saved event
};

// A task (README, Tasks): work one agent does at a time, claimed through the lease
// task:<task_id>.
struct task {
  std::string task_id;
  std::string context_id;
  std::string title;
  std::string spec_json;      // JSON object text ("" when none)
  std::vector<std::string> depends_on;
  std::string status;         // open, claimed, stranded, done, failed
  std::string holder_agent;   // claimed
  uint64_t fencing_token = 0; // claimed
  timestamp claim_expires_at{};
  std::string progress_json;  // the last progress reported ("" when none)
  std::string result_json;    // done
  std::string error;          // failed
  uint32_t attempts = 0;
  uint32_t max_attempts = 0;
  std::string last_holder;
  std::string created_by;
  timestamp created_at{};
  timestamp updated_at{};
};

struct task_input {
  std::string context_id;
  std::string task_id;  // empty: the server makes one
  std::string title;
  std::string spec_json;  // a JSON object, or empty
  std::vector<std::string> depends_on;
  uint32_t max_attempts = 0;  // 0: the server's default
};

struct task_claim {
  task claimed;  // as claimed: with the last progress, when another agent's claim had stranded it
  lock lease;    // task:<task_id>; its fencing token guards the holder's writes
};

// What a heartbeat did to one of the agent's claims.
struct claim_renewal {
  std::string task_id;
  bool renewed = false;  // false: the claim is lost
};

// A fact version (README, Facts): what the team believes about `key` in a context.
struct fact {
  std::string key;
  std::string value_json;  // any JSON value, as text
  std::string status;      // "active" or "disputed"
  std::string agent_id;
  std::vector<uint64_t> sources;
  std::optional<double> confidence;
  uint64_t set_at_seq = 0;
  uint64_t superseded_at_seq = 0;  // 0 while current (as of the read)
  std::string ended_by;            // "superseded" or "retracted" once ended
  std::string json;                // the fact as the server sent it
};

struct fact_input {
  std::string value_json = "null";  // any JSON value, as text
  std::vector<uint64_t> sources;    // seqs of the context's units it rests on
  std::optional<double> confidence;
  bool disputed = false;
  std::string valid_from, valid_to;  // RFC 3339, or empty for no bound
};

struct fact_query {
  std::string prefix;
  std::optional<uint64_t> as_of_seq;  // default: the head (named in the answer)
  std::string valid_at;               // RFC 3339, or empty
  bool include_superseded = false;
};

struct facts_read {
  uint64_t as_of_seq = 0;
  std::vector<fact> facts;
};

// A memory packet request (README, Memory packet). Sections: pinned, facts, tasks,
// leases, checkpoint, summaries, retrieved, recent.
struct packet_request {
  std::string agent_id;  // whose packet; empty: the client's agent
  std::string purpose;   // free text; a policy's name selects that policy
  std::string query;     // retrieval text; empty with no vector: nothing retrieved
  std::vector<float> query_vector;
  uint32_t max_tokens = 4000;
  std::map<std::string, uint32_t> section_budgets;  // section → tokens (a cap)
  std::string policy;       // "default", "catch_up", "answer", "resume"; empty: by purpose
  std::string policy_json;  // overrides as a JSON object ({"recent_window":20,"weights":{…}}); empty: none
  std::optional<uint64_t> as_of_seq;  // default: the head, pinned when the request starts
  std::optional<uint64_t> since_seq;  // only what changed after it
  bool text = false;                  // a prompt block instead of JSON
};

struct packet_item {
  std::string section, kind;  // kind: unit, fact, task, lease, checkpoint
  uint64_t seq = 0;           // 0: state without a seq (tasks, leases)
  std::string key;            // the unit's id, the fact's key, the task's id, the resource
  uint32_t tokens = 0;
  double score = 0;
  std::string json;  // the item as the server sent it (content and `why`)
};

struct packet_omission {
  std::string section, kind, key;
  uint64_t seq = 0;
  uint32_t tokens = 0;
  double score = 0;
  std::string reason;  // section_budget, global_budget, policy_limit, superseded, outside_window, summarized
  uint64_t by_seq = 0;  // superseded / summarized: by which seq
};

struct memory_packet {
  std::string body;  // as sent: the JSON packet, or the text block
  std::string etag;  // the same for the same request at the same as_of_seq
  // Decoded from a JSON packet (empty for text):
  uint64_t as_of_seq = 0;
  uint32_t max_tokens = 0, used_tokens = 0;
  std::vector<packet_item> items;
  std::vector<packet_omission> omitted;
};

// An agent present in a context (README, Presence).
struct present_agent {
  std::string agent_id;
  timestamp joined_at{};
  timestamp last_seen{};
  std::string status;
};

struct backup_info {
  std::string dir;  // absolute path; start a server with --data-dir on it to restore
  double seconds = 0;
};

// /healthz and /readyz.
struct health_status {
  bool live = false;   // /healthz answered 200
  bool ready = false;  // /readyz answered 200 (storage recovery complete)
  std::string status;  // "ready" | "recovering"
  std::string search_state;  // "ready" | "catching_up" | "failed" | "" (search disabled)
  uint64_t search_lag = 0;
  std::string readyz_json;  // the whole /readyz body, for tools that print it
};

// One event from a subscription, in seq order per context.
struct event {
  std::string type;  // "work_unit", "context_updated", "lock_acquired", "lock_released", …
  std::string context_id;
  uint64_t seq = 0;
  std::optional<work_unit> unit;        // type == "work_unit"
  std::optional<client::context> context;  // type == "context_updated"
  std::optional<client::lock> lock;        // type == "lock_*"
  std::string json;  // the event as the server sent it
};

// The v3 wire JSON of each type (integer type, base64 payload, {"seconds","nanos"}),
// for tools that print what they received.
std::string to_json(const work_unit& u);
std::string to_json(const context& c);
std::string to_json(const lock& l);
std::string to_json(const search_result& r);
std::string to_json(const task& t);

}  // namespace engram::client
