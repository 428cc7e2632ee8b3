#pragma once
// The memory packet (README "Memory packet", DESIGN.md §8): what an agent should be
// shown of a context under a token budget, each item with why it is there and each
// omission with why it is not.
//
// Building one has two halves. engine::packet() gathers the candidates as the log
// stood at `as_of_seq` (storage and the search index, on the read pool); then
// assemble_packet() — pure, no I/O, tested directly — scores them by named signals,
// fills each section's budget and then the global one greedily in score order, and
// renders the result. Token counts are the units' stored ones; nothing is
// re-serialised to count it.

#include <array>
#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engram.pb.h"

namespace engram::engine {

// In the order a packet shows them.
enum class packet_section : uint8_t { pinned, facts, tasks, leases, checkpoint, summaries, retrieved, recent };
inline constexpr size_t packet_section_count = 8;
std::string_view to_string(packet_section s);
std::optional<packet_section> packet_section_from(std::string_view name);

// The named signals a candidate's score sums, each weighted by the policy.
enum class packet_signal : uint8_t {
  section,          // the section's priority (the policy's)
  keyword_rank,     // 1/rank in the keyword ranking of the query
  vector_rank,      // 1/rank in the vector ranking
  rrf,              // reciprocal-rank fusion of the two, 1.0 for first in both
  recency,          // 0.5^(age / half-life), age against the log's time at as_of_seq
  type_importance,  // the policy's weight of the unit's type
  authored,         // written (or created, or held) by the asking agent
  addressed,        // addressed to it: meta "to" names it; a task it holds
  open,             // a tool call without its result; an open or stranded task
};
inline constexpr size_t packet_signal_count = 9;
std::string_view to_string(packet_signal s);
std::optional<packet_signal> packet_signal_from(std::string_view name);

struct packet_policy {
  std::string name;
  size_t recent_window = 40;    // newest units considered for `recent`
  size_t retrieve_limit = 20;   // search hits considered for `retrieved`
  size_t summaries_limit = 10;  // newest summaries considered
  std::vector<int> types;       // unit types a packet may show; empty: all
  double half_life_s = 3600;
  std::array<double, packet_signal_count> weights{};
  std::array<double, packet_section_count> priority{};  // the `section` signal per section
  std::array<double, packet_section_count> share{};     // a section's default budget: share of max_tokens
  std::array<double, 10> type_importance{};             // by api::WorkUnitType
};

// "default", "catch_up", "answer", "resume"; null for any other name.
const packet_policy* named_packet_policy(std::string_view name);
std::span<const std::string_view> packet_policy_names();

struct packet_request {
  std::string context_id;
  std::string agent_id;  // whose packet: authored / addressed / own checkpoint
  std::string purpose;   // free text, shown in meta (a policy's name selects it)
  std::string query_text;
  std::vector<float> query_vector;
  std::string query_model;
  uint32_t max_tokens = 4000;
  std::array<std::optional<uint32_t>, packet_section_count> section_budget{};
  packet_policy policy;
  std::optional<uint64_t> as_of_seq;
  std::optional<uint64_t> since_seq;
  std::optional<int64_t> now_ns;  // pins generated_at (else the server's clock)
  bool text = false;              // format: text
  bool has_query() const { return !query_text.empty() || !query_vector.empty(); }
};

// Limits on a request (the gateway checks them).
inline constexpr uint32_t max_packet_tokens = 1'000'000;
inline constexpr size_t max_packet_window = 1000;

// Everything a packet may show, as the log stood at as_of_seq.
struct packet_inputs {
  api::Context context;
  uint64_t as_of_seq = 0;
  int64_t log_time_ns = 0;       // ts of the event at as_of_seq: what recency is measured from
  int64_t generated_at_ns = 0;   // the server's time (or the request's `now`)
  std::vector<api::WorkUnit> pinned;
  std::vector<api::WorkUnit> recent;
  std::vector<api::Fact> facts;         // every version set by as_of_seq, as it stood then
  std::vector<api::Task> tasks;         // open, claimed or stranded (current state), by id
  std::vector<api::Lock> leases;        // held in this context by other agents (current state)
  std::vector<api::Event> checkpoints;  // the agent's versions written by as_of_seq
  struct hit {
    api::WorkUnit unit;
    std::optional<size_t> keyword_rank, vector_rank;  // 1-based
  };
  std::vector<hit> retrieved;
  std::vector<api::WorkUnit> summaries;
  std::set<std::string, std::less<>> open_calls;  // call ids without a result at as_of_seq
  std::string search;    // the search mode that ran; empty: none ran
  std::string degraded;  // why search fell short (no index, vector fell back…)
  std::vector<std::string> truncated;  // kinds of state a limit cut (packet.max_*)
};

struct packet_output {
  std::string body;          // application/json or text/plain
  std::string etag;          // weak (W/"…"): over the body without generated_at (see README)
  bool text = false;
};

packet_output assemble_packet(const packet_request& req, const packet_inputs& in);

}  // namespace engram::engine
