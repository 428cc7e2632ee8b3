#include "config/config.hpp"

#include "model/text.hpp"

#include <xapian.h>
#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <sstream>
#include <cctype>
#include <charconv>
#include <functional>
#include <iostream>
#include <limits>

extern char** environ;

namespace engram::config {
namespace {

using model::errc;
using model::fail;
using setter = std::function<std::optional<std::string>(config&, const std::string&)>;

struct key_spec {
  std::string_view key;
  setter set;  // returns a problem description, or nullopt when the value is valid
};

std::optional<uint64_t> to_uint(const std::string& s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// Builders for the common value shapes, each checking a range.
template <class T>
setter uint_key(T config::*section, auto member, uint64_t lo, uint64_t hi, uint64_t scale = 1) {
  return [=](config& c, const std::string& raw) -> std::optional<std::string> {
    auto v = to_uint(raw);
    if (!v || *v < lo || *v > hi)
      return "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi);
    (c.*section).*member = static_cast<std::remove_reference_t<decltype((c.*section).*member)>>(*v * scale);
    return std::nullopt;
  };
}

template <class T, class D>
setter duration_key(T config::*section, D member, uint64_t lo_ms, uint64_t hi_ms) {
  return [=](config& c, const std::string& raw) -> std::optional<std::string> {
    auto v = to_uint(raw);
    if (!v || *v < lo_ms || *v > hi_ms)
      return "must be a number of milliseconds between " + std::to_string(lo_ms) + " and " +
             std::to_string(hi_ms);
    (c.*section).*member = std::chrono::milliseconds(*v);
    return std::nullopt;
  };
}

// An integer key in [lo, hi] stored wherever `field` points (for nested options).
// `scale` multiplies the value first (seconds → milliseconds); duration fields
// take the result as their tick count.
template <class Field>
setter ranged(Field field, uint64_t lo, uint64_t hi, uint64_t scale = 1) {
  return [=](config& c, const std::string& raw) -> std::optional<std::string> {
    auto v = to_uint(raw);
    if (!v || *v < lo || *v > hi)
      return "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi);
    auto& target = field(c);
    using T = std::remove_reference_t<decltype(target)>;
    if constexpr (std::is_arithmetic_v<T>) target = static_cast<T>(*v * scale);
    else target = T(*v * scale);
    return std::nullopt;
  };
}

std::optional<std::string> set_addr(config& c, const std::string& raw) {
  const auto colon = raw.rfind(':');
  if (colon == std::string::npos) return "must be host:port (e.g. 127.0.0.1:8080)";
  std::string host = raw.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  auto port = to_uint(raw.substr(colon + 1));
  if (host.empty() || !port || *port > 65535)
    return "must be host:port with a port of 0-65535 (e.g. 127.0.0.1:8080)";
  c.server.host = host;
  c.server.port = static_cast<uint16_t>(*port);
  return std::nullopt;
}

std::optional<std::string> set_bool(bool& out, const std::string& raw) {
  if (raw == "true") out = true;
  else if (raw == "false") out = false;
  else return "must be true or false";
  return std::nullopt;
}

// Reads a whole (small) file: keys and secrets referenced by path.
std::optional<std::string> read_small_file(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "cannot be read (does the file exist and is it readable?)";
  std::ostringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  if (out.size() > 64 * 1024) return "is larger than 64 KiB";
  return std::nullopt;
}

// A rate: a non-negative decimal number per second (0: unlimited).
setter rate_key(double gateway::rate_limit::*member, gateway::rate_limit gateway::limit_options::*which) {
  return [=](config& c, const std::string& raw) -> std::optional<std::string> {
    double v = 0;
    auto [p, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), v);
    if (raw.empty() || ec != std::errc() || p != raw.data() + raw.size() || !(v >= 0) || v > 1e9)
      return "must be a number between 0 (unlimited) and 1e9";
    (c.server.limits.*which).*member = v;
    return std::nullopt;
  };
}

std::vector<std::string> split_list(const std::string& raw) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= raw.size()) {
    size_t end = raw.find(',', start);
    if (end == std::string::npos) end = raw.size();
    std::string item = raw.substr(start, end - start);
    while (!item.empty() && std::isspace(uint8_t(item.front()))) item.erase(0, 1);
    while (!item.empty() && std::isspace(uint8_t(item.back()))) item.pop_back();
    if (!item.empty()) out.push_back(std::move(item));
    start = end + 1;
  }
  return out;
}

const std::vector<key_spec>& key_table() {
  using ms = std::chrono::milliseconds;
  constexpr uint64_t day_ms = 24ull * 3600 * 1000;
  static const std::vector<key_spec> table = {
      {"server.addr", set_addr},
      {"server.threads", uint_key(&config::server, &gateway::options::threads, 0, 256)},
      {"server.max_body_bytes",
       uint_key(&config::server, &gateway::options::max_body_bytes, 1024, 1ull << 30)},
      {"server.max_header_bytes",
       uint_key(&config::server, &gateway::options::max_header_bytes, 1024, 1ull << 20)},
      {"server.idle_timeout_ms", duration_key(&config::server, &gateway::options::idle_timeout, 100, day_ms)},
      {"server.read_timeout_ms", duration_key(&config::server, &gateway::options::read_timeout, 100, day_ms)},
      {"server.write_timeout_ms", duration_key(&config::server, &gateway::options::write_timeout, 100, day_ms)},
      {"server.max_connections",
       uint_key(&config::server, &gateway::options::max_connections, 1, 1'000'000)},
      {"server.cors_origins",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         c.server.cors_origins = split_list(raw);
         return std::nullopt;
       }},
      {"server.shutdown_timeout_ms",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         auto v = to_uint(raw);
         if (!v || *v > 3'600'000) return "must be a number of milliseconds between 0 and 3600000";
         c.shutdown_timeout = ms(*v);
         return std::nullopt;
       }},
      {"server.stream_heartbeat_ms",
       duration_key(&config::server, &gateway::options::stream_heartbeat, 100, 3'600'000)},
      {"server.stream_idle_timeout_ms",
       duration_key(&config::server, &gateway::options::stream_idle_timeout, 100, day_ms)},
      {"server.ws_max_message_bytes",
       uint_key(&config::server, &gateway::options::ws_max_message_bytes, 1024, 16ull << 20)},
      {"stream.queue_bytes", ranged([](config& c) -> auto& { return c.engine.stream.queue_bytes; }, 4096, 1ull << 30)},
      {"stream.max_lag", ranged([](config& c) -> auto& { return c.engine.stream.max_lag; }, 1, UINT64_MAX)},
      {"stream.catch_up_batch", ranged([](config& c) -> auto& { return c.engine.stream.catch_up_batch; }, 1, 100'000)},
      {"stream.max_pattern_contexts",
       ranged([](config& c) -> auto& { return c.engine.stream.max_pattern_contexts; }, 1, 10'000'000)},
      {"locks.default_ttl_seconds",
       ranged([](config& c) -> auto& { return c.locks.default_ttl; }, 1, 86'400, 1000)},
      {"locks.max_ttl_seconds", ranged([](config& c) -> auto& { return c.locks.max_ttl; }, 1, 30 * 86'400, 1000)},
      {"locks.max_wait_ms", ranged([](config& c) -> auto& { return c.locks.max_wait; }, 0, 3'600'000)},
      {"locks.max_locks_per_agent", ranged([](config& c) -> auto& { return c.locks.max_locks_per_agent; }, 1, 10'000'000)},
      {"locks.max_resource_bytes", ranged([](config& c) -> auto& { return c.locks.max_resource_bytes; }, 1, 65'536)},
      {"locks.events_context",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (!raw.empty())
           if (auto bad = model::check_identifier("locks.events_context", raw)) return *bad;
         c.locks.events_context = raw;
         return std::nullopt;
       }},
      {"search.enabled", [](config& c, const std::string& raw) { return set_bool(c.search.enabled, raw); }},
      {"search.fsync", [](config& c, const std::string& raw) { return set_bool(c.search.fsync, raw); }},
      {"search.boot_id_file",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (raw.empty()) return "must not be empty";
         c.search.boot_id_file = raw;
         return std::nullopt;
       }},
      {"search.index_dir",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         c.search.index_dir = raw;  // empty: <storage.data_dir>/search
         return std::nullopt;
       }},
      {"search.language",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         try {
           Xapian::Stem check(raw);
         } catch (const Xapian::Error&) {
           return "must be 'none' or a stemmer language: " + Xapian::Stem::get_available_languages();
         }
         c.search.language = raw;
         return std::nullopt;
       }},
      {"search.default_operator",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (raw == "and" || raw == "AND") c.search.default_and = true;
         else if (raw == "or" || raw == "OR") c.search.default_and = false;
         else return "must be 'and' or 'or'";
         return std::nullopt;
       }},
      {"search.indexer_nice", ranged([](config& c) -> auto& { return c.search.indexer_nice; }, 0, 19)},
      {"search.yield_backlog",
       ranged([](config& c) -> auto& { return c.search.yield_backlog; }, 0, 1'000'000'000)},
      {"search.yield_percent", ranged([](config& c) -> auto& { return c.search.yield_percent; }, 1, 100)},
      {"search.commit_interval_ms",
       ranged([](config& c) -> auto& { return c.search.commit_interval; }, 0, 60'000)},
      {"search.max_batch_units", ranged([](config& c) -> auto& { return c.search.max_batch_units; }, 1, 1'000'000)},
      {"search.recent_units", ranged([](config& c) -> auto& { return c.search.recent_units; }, 1, 10'000'000)},
      {"search.query_threads", ranged([](config& c) -> auto& { return c.search.query_threads; }, 1, 256)},
      {"search.max_queued_queries",
       ranged([](config& c) -> auto& { return c.search.max_queued_queries; }, 1, 1'000'000)},
      {"search.exact_count_up_to",
       ranged([](config& c) -> auto& { return c.search.exact_count_up_to; }, 0, 10'000'000)},
      {"search.max_wildcard_terms",
       ranged([](config& c) -> auto& { return c.search.max_wildcard_terms; }, 1, 1'000'000)},
      {"search.max_text_bytes",
       ranged([](config& c) -> auto& { return c.search.max_text_bytes; }, 0, 1ull << 30)},
      {"search.snippet_bytes", ranged([](config& c) -> auto& { return c.search.snippet_bytes; }, 0, 65'536)},
      {"search.embeddings.url",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (!raw.empty() && !raw.starts_with("http://"))
           return "must be an http:// URL of an OpenAI-compatible /v1/embeddings endpoint (or empty)";
         c.search.embeddings.url = raw;
         return std::nullopt;
       }},
      {"search.embeddings.model",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (!raw.empty())
           if (auto bad = model::check_identifier("search.embeddings.model", raw)) return *bad;
         c.search.embeddings.model = raw;
         return std::nullopt;
       }},
      {"search.embeddings.api_key",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         c.search.embeddings.api_key = raw;
         return std::nullopt;
       }},
      {"search.embeddings.batch_size",
       ranged([](config& c) -> auto& { return c.search.embeddings.batch_size; }, 1, 2048)},
      {"search.embeddings.max_input_bytes",
       ranged([](config& c) -> auto& { return c.search.embeddings.max_input_bytes; }, 1, 1 << 20)},
      {"search.embeddings.timeout_ms",
       ranged([](config& c) -> auto& { return c.search.embeddings.timeout; }, 100, 600'000)},
      {"search.embeddings.query_timeout_ms",
       ranged([](config& c) -> auto& { return c.search.embeddings.query_timeout; }, 100, 600'000)},
      {"search.embeddings.max_backoff_ms",
       ranged([](config& c) -> auto& { return c.search.embeddings.max_backoff; }, 10, 3'600'000)},
      {"search.vectors.m", ranged([](config& c) -> auto& { return c.search.vectors.m; }, 4, 128)},
      {"search.vectors.ef_construction",
       ranged([](config& c) -> auto& { return c.search.vectors.ef_construction; }, 8, 4096)},
      {"search.vectors.ef_search", ranged([](config& c) -> auto& { return c.search.vectors.ef_search; }, 1, 10'000)},
      {"search.vectors.snapshots",
       [](config& c, const std::string& raw) { return set_bool(c.search.vector_snapshots, raw); }},
      {"search.vectors.snapshot_dir",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         c.search.vectors.snapshot_dir = raw;  // empty: <storage.data_dir>/vectors
         return std::nullopt;
       }},
      {"search.vectors.snapshot_interval_seconds",
       ranged([](config& c) -> auto& { return c.search.vectors.snapshot_interval; }, 0, 86'400, 1000)},
      {"search.vectors.snapshot_min_vectors",
       ranged([](config& c) -> auto& { return c.search.vectors.snapshot_min_vectors; }, 1, 1'000'000'000)},
      {"search.vectors.insert_threads",
       ranged([](config& c) -> auto& { return c.search.vectors.insert_threads; }, 1, 64)},
      {"search.vectors.exact_filter_limit",
       ranged([](config& c) -> auto& { return c.search.exact_filter_limit; }, 0, 10'000'000)},
      {"search.vectors.fusion_depth", ranged([](config& c) -> auto& { return c.search.fusion_depth; }, 1, 10'000)},
      {"search.vectors.max_results",
       ranged([](config& c) -> auto& { return c.search.max_vector_results; }, 1, 1'000'000)},
      {"server.max_batch_units",
       uint_key(&config::engine, &engine::options::max_batch_units, 1, 100'000)},
      {"checkpoints.max_bytes", ranged([](config& c) -> auto& { return c.engine.checkpoints.max_bytes; }, 2, 64ull << 20)},
      {"checkpoints.keep", ranged([](config& c) -> auto& { return c.engine.checkpoints.keep; }, 1, 100'000)},
      {"facts.max_value_bytes", ranged([](config& c) -> auto& { return c.engine.facts.max_value_bytes; }, 2, 16ull << 20)},
      {"facts.max_sources", ranged([](config& c) -> auto& { return c.engine.facts.max_sources; }, 0, 100'000)},
      {"packet.max_fact_versions",
       ranged([](config& c) -> auto& { return c.engine.packet.max_fact_versions; }, 1, 1'000'000)},
      {"packet.max_tasks", ranged([](config& c) -> auto& { return c.engine.packet.max_tasks; }, 1, 1'000'000)},
      {"drafts.idle_ms", ranged([](config& c) -> auto& { return c.engine.drafts.idle; }, 10, 86'400'000)},
      {"drafts.max_bytes", ranged([](config& c) -> auto& { return c.engine.drafts.max_bytes; }, 1, 1ull << 30)},
      {"drafts.max_delta_bytes", ranged([](config& c) -> auto& { return c.engine.drafts.max_delta_bytes; }, 1, 16ull << 20)},
      {"drafts.max_total_bytes", ranged([](config& c) -> auto& { return c.engine.drafts.max_total_bytes; }, 1, 64ull << 30)},
      {"drafts.max_per_owner", ranged([](config& c) -> auto& { return c.engine.drafts.max_per_owner; }, 1, 1'000'000)},
      {"drafts.max_drafts", ranged([](config& c) -> auto& { return c.engine.drafts.max_drafts; }, 1, 100'000'000)},
      {"presence.ttl_ms", ranged([](config& c) -> auto& { return c.presence.ttl; }, 20, 86'400'000)},
      {"presence.ws_grace_ms", ranged([](config& c) -> auto& { return c.presence.grace; }, 0, 86'400'000)},
      {"tasks.max_attempts", ranged([](config& c) -> auto& { return c.tasks.max_attempts; }, 1, 1'000'000)},
      {"tasks.max_json_bytes", ranged([](config& c) -> auto& { return c.tasks.max_json_bytes; }, 2, 16ull << 20)},
      {"retention.max_age_seconds",
       ranged([](config& c) -> auto& { return c.retention.max_age; }, 0, 100ull * 366 * 24 * 3600)},
      {"retention.max_events", ranged([](config& c) -> auto& { return c.retention.max_events; }, 0, UINT64_MAX)},
      {"retention.interval_ms", ranged([](config& c) -> auto& { return c.retention.interval; }, 10, 86'400'000)},
      {"storage.read_threads", uint_key(&config::engine, &engine::options::read_threads, 1, 256)},
      {"storage.max_queued_reads", uint_key(&config::engine, &engine::options::max_queued_reads, 1, 10'000'000)},
      {"storage.tail_cache_mb",
       uint_key(&config::engine, &engine::options::tail_cache_bytes, 0, 1 << 20, 1 << 20)},
      {"storage.data_dir",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (raw.empty()) return "must not be empty";
         c.storage.data_dir = raw;
         return std::nullopt;
       }},
      {"storage.backup_dir",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         c.storage.backup_dir = raw;
         return std::nullopt;
       }},
      {"storage.durability",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (raw == "sync") c.storage.mode = storage::durability::sync;
         else if (raw == "relaxed") c.storage.mode = storage::durability::relaxed;
         else return "must be 'sync' or 'relaxed'";
         return std::nullopt;
       }},
      {"storage.relaxed_sync_interval_ms",
       duration_key(&config::storage, &storage::options::relaxed_sync_interval, 1, 60'000)},
      {"storage.block_cache_mb",
       uint_key(&config::storage, &storage::options::block_cache_bytes, 1, 1 << 20, 1 << 20)},
      {"storage.write_buffer_mb",
       uint_key(&config::storage, &storage::options::write_buffer_bytes, 1, 1 << 14, 1 << 20)},
      {"storage.max_commit_group",
       uint_key(&config::storage, &storage::options::max_commit_group, 1, 1'000'000)},
      {"storage.commit_queue_limit",
       uint_key(&config::storage, &storage::options::commit_queue_limit, 1, 10'000'000)},
      {"storage.idempotency_ttl_hours",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         auto v = to_uint(raw);
         if (!v || *v < 1 || *v > 24 * 365) return "must be a number of hours between 1 and 8760";
         c.storage.idempotency_ttl = std::chrono::hours(*v);
         return std::nullopt;
       }},
      {"server.tls.cert",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (!raw.empty() && !std::ifstream(raw)) return "cannot be read (a PEM certificate chain)";
         c.server.tls_cert_file = raw;
         return std::nullopt;
       }},
      {"server.tls.key",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (!raw.empty() && !std::ifstream(raw)) return "cannot be read (a PEM private key)";
         c.server.tls_key_file = raw;
         return std::nullopt;
       }},
      {"auth.enabled", [](config& c, const std::string& raw) { return set_bool(c.server.auth.enabled, raw); }},
      {"auth.algorithm",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         auto alg = auth::parse_algorithm(raw);
         if (!alg) return "must be HS256, RS256 or ES256";
         c.server.auth.alg = *alg;
         return std::nullopt;
       }},
      {"auth.secret",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         c.server.auth.secret = raw;
         return std::nullopt;
       }},
      {"auth.secret_file",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (raw.empty()) return std::nullopt;
         if (auto bad = read_small_file(raw, c.server.auth.secret)) return bad;
         while (!c.server.auth.secret.empty() && std::isspace(uint8_t(c.server.auth.secret.back())))
           c.server.auth.secret.pop_back();  // a trailing newline is not part of the secret
         return std::nullopt;
       }},
      {"auth.public_key_file",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (raw.empty()) return std::nullopt;
         return read_small_file(raw, c.server.auth.public_key_pem);
       }},
      {"auth.leeway_seconds", ranged([](config& c) -> auto& { return c.server.auth.leeway; }, 0, 3600)},
      {"auth.issuer",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         c.server.auth.issuer = raw;
         return std::nullopt;
       }},
      {"auth.audience",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         c.server.auth.audience = raw;
         return std::nullopt;
       }},
      {"auth.cookie_name",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (raw.empty() || raw.find_first_of("=; \t,\"") != std::string::npos) return "must be a cookie name";
         c.server.auth.cookie_name = raw;
         return std::nullopt;
       }},
      {"limits.writes_per_second", rate_key(&gateway::rate_limit::per_second, &gateway::limit_options::writes)},
      {"limits.writes_burst", rate_key(&gateway::rate_limit::burst, &gateway::limit_options::writes)},
      {"limits.searches_per_second", rate_key(&gateway::rate_limit::per_second, &gateway::limit_options::searches)},
      {"limits.searches_burst", rate_key(&gateway::rate_limit::burst, &gateway::limit_options::searches)},
      {"limits.locks_per_second", rate_key(&gateway::rate_limit::per_second, &gateway::limit_options::locks)},
      {"limits.locks_burst", rate_key(&gateway::rate_limit::burst, &gateway::limit_options::locks)},
      {"limits.connections_per_second",
       rate_key(&gateway::rate_limit::per_second, &gateway::limit_options::connections)},
      {"limits.connections_burst", rate_key(&gateway::rate_limit::burst, &gateway::limit_options::connections)},
      {"limits.max_streams", ranged([](config& c) -> auto& { return c.server.limits.max_streams; }, 1, 10'000'000)},
      {"limits.max_streams_per_agent",
       ranged([](config& c) -> auto& { return c.server.limits.max_streams_per_agent; }, 0, 10'000'000)},
      {"log.access", [](config& c, const std::string& raw) { return set_bool(c.server.access_log, raw); }},
      {"log.access_buffer_bytes", ranged([](config& c) -> auto& { return c.log.access_buffer_bytes; }, 0, 16ull << 20)},
      {"server.reject_unknown_fields",
       [](config& c, const std::string& raw) { return set_bool(c.server.reject_unknown_fields, raw); }},
      {"log.level",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         static const std::vector<std::string> levels = {"trace", "debug", "info", "warn",
                                                         "error", "critical", "off"};
         if (std::find(levels.begin(), levels.end(), raw) == levels.end())
           return "must be one of trace, debug, info, warn, error, critical, off";
         c.log.level = raw;
         return std::nullopt;
       }},
      {"log.format",
       [](config& c, const std::string& raw) -> std::optional<std::string> {
         if (raw != "text" && raw != "json") return "must be 'text' or 'json'";
         c.log.format = raw;
         return std::nullopt;
       }},
  };
  return table;
}

model::status apply(config& c, std::string_view key, const std::string& value,
                    std::string_view origin) {
  for (const auto& spec : key_table()) {
    if (spec.key != key) continue;
    if (auto problem = spec.set(c, value)) {
      // Never echo a secret into an error message (and from there into logs).
      const bool secret = key.find("secret") != std::string_view::npos || key.find("api_key") != std::string_view::npos;
      return fail(errc::invalid_argument, "config key '" + std::string(key) + "' (" + std::string(origin) + "): " +
                                              (secret ? std::string("the value") : "'" + value + "'") + " " +
                                              *problem);
    }
    c.origins[std::string(key)] = origin;
    // The secret itself comes from the file: errors about it name both.
    if (key == "auth.secret_file") c.origins["auth.secret"] = "read from auth.secret_file, " + std::string(origin);
    return {};
  }
  return fail(errc::invalid_argument,
              "unknown config key '" + std::string(key) + "' (" + std::string(origin) + ")");
}

model::status apply_yaml(config& c, const YAML::Node& node, const std::string& prefix,
                         const std::string& file) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      const std::string key = kv.first.as<std::string>();
      if (auto ok = apply_yaml(c, kv.second, prefix.empty() ? key : prefix + "." + key, file); !ok)
        return ok;
    }
    return {};
  }
  if (node.IsNull()) return {};
  std::string value;
  if (node.IsSequence()) {
    for (const auto& item : node) {
      if (!item.IsScalar())
        return fail(errc::invalid_argument, "config key '" + prefix + "' (" + file +
                                                "): list items must be plain values");
      if (!value.empty()) value += ',';
      value += item.as<std::string>();
    }
  } else {
    value = node.as<std::string>();
  }
  return apply(c, prefix, value, file);
}

}  // namespace

std::string config::explain(std::string_view key, std::string_view problem) const {
  const auto it = origins.find(key);
  // "auth.secret must be …" reads better without its key repeated after the prefix.
  if (problem.starts_with(key) && problem.size() > key.size() && (problem[key.size()] == ' ' || problem[key.size()] == ':')) {
    problem.remove_prefix(key.size());
    while (!problem.empty() && (problem.front() == ' ' || problem.front() == ':')) problem.remove_prefix(1);
  }
  return "config key '" + std::string(key) + "' (" + (it != origins.end() ? it->second : std::string("default")) +
         "): " + std::string(problem);
}

std::string env_name(std::string_view key) {
  std::string out = "ENGRAM_";
  for (char ch : key) out.push_back(ch == '.' ? '_' : char(std::toupper(uint8_t(ch))));
  return out;
}

std::map<std::string, std::string> process_env() {
  std::map<std::string, std::string> out;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    if (!kv.starts_with("ENGRAM_")) continue;
    const auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    out.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return out;
}

model::result<config> load(const sources& in) {
  config c;
  std::optional<std::string> file = in.file;
  if (!file) {
    if (auto it = in.env.find("ENGRAM_CONFIG"); it != in.env.end() && !it->second.empty())
      file = it->second;
  }
  if (file) {
    try {
      const YAML::Node root = YAML::LoadFile(*file);
      if (!root.IsNull() && !root.IsMap())
        return fail(errc::invalid_argument, "config file " + *file + " must be a YAML mapping");
      if (auto ok = apply_yaml(c, root, "", *file); !ok) return std::unexpected(ok.error());
    } catch (const YAML::Exception& e) {
      return fail(errc::invalid_argument, "config file " + *file + ": " + e.what());
    }
  }
  for (const auto& spec : key_table()) {
    const std::string name = env_name(spec.key);
    if (auto it = in.env.find(name); it != in.env.end()) {
      if (auto ok = apply(c, spec.key, it->second, "environment " + name); !ok)
        return std::unexpected(ok.error());
    }
  }
  for (const auto& [key, value] : in.flags) {
    if (auto ok = apply(c, key, value, "command line"); !ok) return std::unexpected(ok.error());
  }
  if (c.server.tls_cert_file.empty() != c.server.tls_key_file.empty()) {
    const bool cert = !c.server.tls_cert_file.empty();
    return fail(errc::invalid_argument, c.explain(cert ? "server.tls.cert" : "server.tls.key",
                                                  cert ? "is set without server.tls.key; set both or neither"
                                                       : "is set without server.tls.cert; set both or neither"));
  }
  // The auth key is read and checked once, when app builds the authenticator.
  return c;
}

command_line parse_command_line(int argc, const char* const* argv) {
  CLI::App app{"engram: a real-time shared workspace for teams of AI agents"};
  app.set_version_flag("--version", "engram 0.1.0");
  command_line out;
  std::string config_file, addr, data_dir, log_level, durability;
  std::vector<std::string> sets;
  app.add_option("-c,--config", config_file, "YAML configuration file (also ENGRAM_CONFIG)");
  app.add_option("--addr", addr, "listen address host:port (server.addr)");
  app.add_option("--data-dir", data_dir, "RocksDB data directory (storage.data_dir)");
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error (log.level)");
  app.add_option("--durability", durability, "sync|relaxed (storage.durability)");
  app.add_option("--set", sets, "override any config key: --set server.threads=4")
      ->type_name("KEY=VALUE");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    out.exit_code = app.exit(e);
    if (*out.exit_code != 0) out.exit_code = 2;
    return out;
  }
  if (!config_file.empty()) out.src.file = config_file;
  out.src.env = process_env();
  for (const auto& s : sets) {
    const auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::cerr << "--set expects KEY=VALUE, got '" << s << "'\n";
      out.exit_code = 2;
      return out;
    }
    out.src.flags.emplace_back(s.substr(0, eq), s.substr(eq + 1));
  }
  // Dedicated flags win over --set, as they are more specific.
  if (!addr.empty()) out.src.flags.emplace_back("server.addr", addr);
  if (!data_dir.empty()) out.src.flags.emplace_back("storage.data_dir", data_dir);
  if (!log_level.empty()) out.src.flags.emplace_back("log.level", log_level);
  if (!durability.empty()) out.src.flags.emplace_back("storage.durability", durability);
  return out;
}

}  // namespace engram::config
