#include "engine/packet.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "model/codec.hpp"
#include "model/text.hpp"
#include "wire/enums.hpp"

namespace engram::engine {
namespace {

using model::json;
using section = packet_section;
using signal = packet_signal;

constexpr std::string_view section_names[packet_section_count] = {
    "pinned", "facts", "tasks", "leases", "checkpoint", "summaries", "retrieved", "recent"};
constexpr std::string_view signal_names[packet_signal_count] = {
    "section", "keyword_rank", "vector_rank", "rrf", "recency", "type_importance", "authored", "addressed", "open"};
constexpr std::string_view policy_names[] = {"default", "catch_up", "answer", "resume"};

size_t at(section s) { return size_t(s); }
size_t at(signal s) { return size_t(s); }

packet_policy base_policy() {
  packet_policy p;
  p.name = "default";
  p.weights[at(signal::section)] = 1;
  p.weights[at(signal::rrf)] = 2;
  p.weights[at(signal::recency)] = 1;
  p.weights[at(signal::type_importance)] = 0.5;
  p.weights[at(signal::authored)] = 0.25;
  p.weights[at(signal::addressed)] = 0.75;
  p.weights[at(signal::open)] = 1;
  p.priority = {4, 3, 2.5, 2, 3.5, 1.5, 1, 1};
  p.share = {0.25, 0.2, 0.15, 0.05, 0.1, 0.3, 0.4, 0.5};
  // UNKNOWN, MESSAGE, REASONING, TOOL_CALL, TOOL_RESULT, FILE_CHANGE, TASK_STATUS, ERROR, SYSTEM, SUMMARY
  p.type_importance = {0.2, 0.8, 0.3, 0.5, 0.5, 0.6, 0.7, 0.9, 0.4, 0.8};
  return p;
}

const std::array<packet_policy, 4>& policies() {
  static const std::array<packet_policy, 4> all = [] {
    std::array<packet_policy, 4> p{base_policy(), base_policy(), base_policy(), base_policy()};
    // catch_up: what happened lately, most of the budget for the recent window.
    p[1].name = "catch_up";
    p[1].recent_window = 100;
    p[1].retrieve_limit = 10;
    p[1].half_life_s = 1800;
    p[1].weights[at(signal::recency)] = 2;
    p[1].share[at(section::recent)] = 0.7;
    p[1].share[at(section::retrieved)] = 0.2;
    // answer: what the query finds anywhere in the history.
    p[2].name = "answer";
    p[2].recent_window = 10;
    p[2].retrieve_limit = 40;
    p[2].weights[at(signal::rrf)] = 3;
    p[2].weights[at(signal::recency)] = 0.5;
    p[2].share[at(section::retrieved)] = 0.7;
    p[2].share[at(section::recent)] = 0.2;
    // resume: pick up own work — the checkpoint, open calls and tasks first.
    p[3].name = "resume";
    p[3].recent_window = 30;
    p[3].weights[at(signal::open)] = 2;
    p[3].weights[at(signal::authored)] = 0.75;
    p[3].priority[at(section::checkpoint)] = 5;
    p[3].share[at(section::tasks)] = 0.3;
    return p;
  }();
  return all;
}

double round6(double x) { return std::round(x * 1e6) / 1e6; }

enum class kind : uint8_t { unit, fact, task, lease, checkpoint };
constexpr std::string_view kind_names[] = {"unit", "fact", "task", "lease", "checkpoint"};

enum class reason : uint8_t {
  none, section_budget, global_budget, policy_limit, superseded, outside_window, summarized
};
constexpr std::string_view reason_names[] = {"",           "section_budget", "global_budget", "policy_limit",
                                             "superseded", "outside_window", "summarized"};

struct candidate {
  candidate(section sec, kind k, const void* item, uint64_t seq, int64_t ts_ns, std::string key, uint32_t tokens)
      : sec(sec), k(k), item(item), seq(seq), ts_ns(ts_ns), key(std::move(key)), tokens(tokens) {}

  section sec;
  kind k;
  const void* item;  // the api:: message in the inputs
  uint64_t seq = 0;  // 0: state without a seq (tasks, leases)
  int64_t ts_ns = 0;
  std::string key;  // unit id, fact key, task id, resource, checkpoint version
  uint32_t tokens = 0;
  std::array<double, packet_signal_count> signals{};
  double score = 0;
  std::vector<section> also_in;  // other sections that proposed the same unit
  reason omitted = reason::none;
  uint64_t by = 0;  // superseded / summarized: by which seq
  bool kept = false;
  bool beyond_share = false;  // taken with global budget its section's share left unused
  // A summary's span.
  uint64_t covers_from = 0, covers_to = 0;

  const api::WorkUnit& unit() const { return *static_cast<const api::WorkUnit*>(item); }
  bool summary() const { return k == kind::unit && unit().type() == api::WORK_UNIT_TYPE_SUMMARY && covers_to; }
  // What a summary may stand in for: a recent or retrieved unit that is no summary.
  bool raw_unit() const {
    return k == kind::unit && (sec == section::recent || sec == section::retrieved) &&
           unit().type() != api::WORK_UNIT_TYPE_SUMMARY;
  }
};

uint64_t meta_seq(const api::WorkUnit& u, const char* key) {
  auto it = u.meta().find(key);
  uint64_t v = 0;
  if (it == u.meta().end()) return 0;
  std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  return v;
}

bool names_agent(std::string_view list, std::string_view agent) {
  if (agent.empty()) return false;
  while (!list.empty()) {
    auto comma = list.find(',');
    auto item = list.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (item == agent) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

class assembler {
 public:
  assembler(const packet_request& req, const packet_inputs& in) : req_(req), in_(in), p_(req.policy) {}

  packet_output run() {
    gather();
    for (auto& c : cands_) score(c);
    fill_sections();
    fill_global();
    return render();
  }

 private:
  bool type_allowed(int type) const {
    return p_.types.empty() || std::find(p_.types.begin(), p_.types.end(), type) != p_.types.end();
  }
  bool before_since(uint64_t seq) const { return req_.since_seq && seq <= *req_.since_seq; }

  void add_unit(section sec, const api::WorkUnit& u, std::optional<size_t> kw = {}, std::optional<size_t> vec = {}) {
    if (auto it = unit_at_.find(u.seq()); it != unit_at_.end()) {
      auto& c = cands_[it->second];
      if (c.sec != sec) c.also_in.push_back(sec);
      if (kw) kw_rank_[u.seq()] = *kw;
      if (vec) vec_rank_[u.seq()] = *vec;
      return;
    }
    candidate c(sec, kind::unit, &u, u.seq(), u.ts_ns(), u.id(), model::unit_tokens(u));
    if (u.type() == api::WORK_UNIT_TYPE_SUMMARY) {
      c.covers_from = meta_seq(u, "covers_from_seq");
      c.covers_to = meta_seq(u, "covers_to_seq");
    }
    if (kw) kw_rank_[u.seq()] = *kw;
    if (vec) vec_rank_[u.seq()] = *vec;
    if (before_since(u.seq())) c.omitted = reason::outside_window;
    else if (!type_allowed(u.type())) c.omitted = reason::policy_limit;
    unit_at_.emplace(u.seq(), cands_.size());
    cands_.push_back(std::move(c));
  }

  void gather() {
    cands_.reserve(in_.pinned.size() + in_.summaries.size() + in_.retrieved.size() + in_.recent.size() +
                   in_.facts.size() + in_.tasks.size() + in_.leases.size() + in_.checkpoints.size());
    // Units in section order, so a unit two sections propose belongs to the first.
    for (const auto& u : in_.pinned) add_unit(section::pinned, u);
    for (const auto& u : in_.summaries) add_unit(section::summaries, u);
    for (const auto& h : in_.retrieved) add_unit(section::retrieved, h.unit, h.keyword_rank, h.vector_rank);
    for (const auto& u : in_.recent) add_unit(section::recent, u);

    for (const auto& f : in_.facts) {
      candidate c(section::facts, kind::fact, &f, f.set_at_seq(), f.set_at_ns(), f.key(),
                  model::estimate_tokens(f.key()) + model::estimate_tokens(f.value_json()));
      const int64_t now = in_.log_time_ns;
      if (f.superseded_at_seq()) {
        c.omitted = reason::superseded;
        c.by = f.superseded_at_seq();
      } else if (before_since(f.set_at_seq())) {
        c.omitted = reason::outside_window;
      } else if (now < f.valid_from_ns() || (f.valid_to_ns() && now >= f.valid_to_ns())) {
        c.omitted = reason::outside_window;  // not valid at the log's time
      }
      cands_.push_back(std::move(c));
    }
    for (const auto& t : in_.tasks) {
      const uint32_t tokens = model::estimate_tokens(t.title()) + model::estimate_tokens(t.spec_json()) +
                              model::estimate_tokens(t.progress_json()) + 4;
      cands_.push_back(candidate(section::tasks, kind::task, &t, 0, t.updated_at_ns(), t.task_id(), tokens));
    }
    for (const auto& l : in_.leases) {
      const uint32_t tokens = model::estimate_tokens(l.resource_path()) + model::estimate_tokens(l.holder_agent()) + 4;
      cands_.push_back(candidate(section::leases, kind::lease, &l, 0, l.acquired_at_ns(), l.resource_path(), tokens));
    }
    const api::Event* newest = nullptr;
    for (const auto& e : in_.checkpoints)
      if (!newest || e.seq() > newest->seq()) newest = &e;
    for (const auto& e : in_.checkpoints) {
      candidate c(section::checkpoint, kind::checkpoint, &e, e.seq(), e.ts_ns(),
                  std::to_string(e.checkpoint().version()), model::estimate_tokens(e.checkpoint().state_json()) + 4);
      if (&e != newest) {
        c.omitted = reason::superseded;
        c.by = newest->seq();
      } else if (before_since(e.seq())) {
        c.omitted = reason::outside_window;
      }
      cands_.push_back(std::move(c));
    }
  }

  void score(candidate& c) {
    auto& s = c.signals;
    s[at(signal::section)] = p_.priority[at(c.sec)];
    if (c.ts_ns >= in_.log_time_ns || p_.half_life_s <= 0) {
      s[at(signal::recency)] = 1;
    } else {
      const double age_s = double(in_.log_time_ns - c.ts_ns) / 1e9;
      s[at(signal::recency)] = std::exp2(-age_s / p_.half_life_s);
    }
    const auto& me = req_.agent_id;
    switch (c.k) {
      case kind::unit: {
        const auto& u = c.unit();
        auto kw = kw_rank_.find(c.seq);
        auto vec = vec_rank_.find(c.seq);
        double rrf = 0;
        if (kw != kw_rank_.end()) {
          s[at(signal::keyword_rank)] = 1.0 / double(kw->second);
          rrf += 1.0 / (60.0 + double(kw->second));
        }
        if (vec != vec_rank_.end()) {
          s[at(signal::vector_rank)] = 1.0 / double(vec->second);
          rrf += 1.0 / (60.0 + double(vec->second));
        }
        s[at(signal::rrf)] = rrf * 61.0 / 2.0;
        const int type = u.type();
        const bool known = type >= 0 && size_t(type) < p_.type_importance.size();
        s[at(signal::type_importance)] = known ? p_.type_importance[size_t(type)] : 0;
        s[at(signal::authored)] = !me.empty() && u.agent_id() == me;
        auto to = u.meta().find("to");
        s[at(signal::addressed)] = to != u.meta().end() && names_agent(to->second, me);
        s[at(signal::open)] = u.type() == api::WORK_UNIT_TYPE_TOOL_CALL && !u.call_id().empty() &&
                              in_.open_calls.contains(u.call_id());
        break;
      }
      case kind::fact: {
        const auto& f = *static_cast<const api::Fact*>(c.item);
        s[at(signal::authored)] = !me.empty() && f.agent_id() == me;
        break;
      }
      case kind::task: {
        const auto& t = *static_cast<const api::Task*>(c.item);
        s[at(signal::authored)] = !me.empty() && t.created_by() == me;
        s[at(signal::addressed)] = !me.empty() && t.holder_agent() == me;
        s[at(signal::open)] = t.status() == "open" || t.status() == "stranded";
        break;
      }
      case kind::lease:
      case kind::checkpoint:
        break;
    }
    double total = 0;
    for (size_t i = 0; i < packet_signal_count; ++i) {
      s[i] = round6(s[i]);
      total += p_.weights[i] * s[i];
    }
    c.score = round6(total);
  }

  // Score order; ties: newer first, then by key (so the order is total).
  static bool by_score(const candidate* a, const candidate* b) {
    if (a->score != b->score) return a->score > b->score;
    if (a->seq != b->seq) return a->seq > b->seq;
    if (a->sec != b->sec) return a->sec < b->sec;
    return a->key < b->key;
  }

  uint32_t section_budget(section s) const {
    if (auto b = req_.section_budget[at(s)]) return *b;
    return uint32_t(std::floor(double(req_.max_tokens) * p_.share[at(s)]));
  }

  // Each section's budget, its candidates in score order. A unit two sections
  // proposed (the query found a recent one) that does not fit its first section's
  // budget is tried in the next one's.
  void fill_sections() {
    std::array<std::vector<candidate*>, packet_section_count> by_section;
    for (auto& c : cands_)
      if (c.omitted == reason::none) by_section[at(c.sec)].push_back(&c);
    for (size_t si = 0; si < packet_section_count; ++si) {
      auto& in_section = by_section[si];
      std::sort(in_section.begin(), in_section.end(), by_score);
      uint64_t used = 0;
      const uint32_t budget = section_budget(section(si));
      for (auto* c : in_section) {
        if (used + c->tokens <= budget) {
          used += c->tokens;
          c->kept = true;
          continue;
        }
        auto next = std::find_if(c->also_in.begin(), c->also_in.end(), [&](section s) { return at(s) > si; });
        if (next != c->also_in.end()) {
          const section to = *next;
          c->also_in.erase(next);
          c->also_in.push_back(c->sec);
          c->sec = to;
          score(*c);  // the section signal is the new one's
          by_section[at(to)].push_back(c);
          continue;
        }
        c->omitted = reason::section_budget;
        if (c->raw_unit()) tight_ = true;
      }
    }
    uint64_t total = 0;
    for (const auto& c : cands_)
      if (c.kept) total += c.tokens;
    if (total > req_.max_tokens) tight_ = true;
  }

  // Greedy in score order. When the budget is tight, a summary that is taken
  // replaces the raw units (recent, retrieved) of its span: those already taken give
  // their tokens back, later ones are not taken. Then what the sections' default
  // shares cut goes into what is left of max_tokens, by the same rule (a budget the
  // request set for a section is a cap).
  void fill_global() {
    std::vector<candidate*> order;
    for (auto& c : cands_)
      if (c.kept) order.push_back(&c);
    std::sort(order.begin(), order.end(), by_score);
    for (auto* c : order) c->kept = false;  // from here on: taken within the global budget
    for (auto* c : order)
      if (!take(*c) && c->omitted == reason::none) c->omitted = reason::global_budget;
    std::vector<candidate*> cut;
    for (auto& c : cands_)
      if (c.omitted == reason::section_budget && !req_.section_budget[at(c.sec)]) cut.push_back(&c);
    std::sort(cut.begin(), cut.end(), by_score);
    for (auto* c : cut) {
      if (!take(*c)) continue;  // keeps section_budget (or summarized) as its reason
      c->beyond_share = true;
      c->omitted = reason::none;
    }
  }

  static bool spans(const candidate& summary, const candidate& c) {
    return c.seq >= summary.covers_from && c.seq <= summary.covers_to;
  }

  // Takes `c` if it fits what is left of max_tokens (false: it does not, or a taken
  // summary stands in for it, which sets its reason).
  bool take(candidate& c) {
    if (tight_ && c.raw_unit()) {
      for (const auto* s : summaries_taken_) {
        if (!spans(*s, c)) continue;
        c.omitted = reason::summarized;
        c.by = s->seq;
        return false;
      }
    }
    uint64_t freed = 0;
    const bool stands_in = tight_ && c.summary();
    if (stands_in)
      for (const auto& r : cands_)
        if (r.kept && r.raw_unit() && spans(c, r)) freed += r.tokens;
    if (used_ - freed + c.tokens > req_.max_tokens) return false;
    if (stands_in) {
      for (auto& r : cands_) {
        if (!r.kept || !r.raw_unit() || !spans(c, r)) continue;
        r.kept = false;
        r.beyond_share = false;
        r.omitted = reason::summarized;
        r.by = c.seq;
      }
      summaries_taken_.push_back(&c);
    }
    used_ = used_ - freed + c.tokens;
    c.kept = true;
    return true;
  }

  // ---- rendering ----------------------------------------------------------------

  // Shown order: by section; units, facts' versions and checkpoints by seq, the rest
  // by key.
  static bool shown_order(const candidate* a, const candidate* b) {
    if (a->sec != b->sec) return a->sec < b->sec;
    if (a->k == kind::fact && b->k == kind::fact && a->key != b->key) return a->key < b->key;
    if (a->seq != b->seq) return a->seq < b->seq;
    return a->key < b->key;
  }

  static void append_number(std::string& out, double x) {
    char buf[32];
    out.append(buf, std::to_chars(buf, buf + sizeof buf, x).ptr);
  }
  static void append_name(std::string& out, std::string_view name) {
    out += '"';
    out += name;  // our own names: nothing to escape
    out += '"';
  }

  void append_why(std::string& out, const candidate& c) const {
    out += ",\"why\":{\"signals\":{";
    bool first = true;
    for (size_t i = 0; i < packet_signal_count; ++i) {
      if (c.signals[i] == 0) continue;
      if (!first) out += ',';
      first = false;
      append_name(out, signal_names[i]);
      out += ':';
      append_number(out, c.signals[i]);
    }
    out += "},\"score\":";
    append_number(out, c.score);
    out += ",\"selected_by\":";
    append_name(out, section_names[at(c.sec)]);
    if (!c.also_in.empty()) {
      out += ",\"also_in\":[";
      for (size_t i = 0; i < c.also_in.size(); ++i) {
        if (i) out += ',';
        append_name(out, section_names[at(c.also_in[i])]);
      }
      out += ']';
    }
    if (c.beyond_share) out += ",\"beyond_section_share\":true";
    out += '}';
  }

  void append_omission(std::string& out, const candidate& c) const {
    out += "{\"section\":";
    append_name(out, section_names[at(c.sec)]);
    out += ",\"kind\":";
    append_name(out, kind_names[size_t(c.k)]);
    if (c.seq) out += ",\"seq\":" + std::to_string(c.seq);
    out += c.k == kind::unit ? ",\"id\":" : ",\"key\":";
    model::append_json_string(out, c.key);
    out += ",\"tokens\":" + std::to_string(c.tokens) + ",\"score\":";
    append_number(out, c.score);
    out += ",\"reason\":";
    append_name(out, reason_names[size_t(c.omitted)]);
    if (c.by) out += ",\"by_seq\":" + std::to_string(c.by);
    out += '}';
  }

  void append_content(std::string& out, const candidate& c) const {
    switch (c.k) {
      case kind::unit:
        out += ",\"unit\":";
        model::append_unit_json(out, c.unit(), [&](std::string& o) { model::append_text_json(o, c.unit().payload()); });
        break;
      case kind::fact:
        out += ",\"fact\":";
        model::append_fact_json(out, *static_cast<const api::Fact*>(c.item));
        break;
      case kind::task:
        out += ",\"task\":" + model::dump(model::to_json(*static_cast<const api::Task*>(c.item)));
        break;
      case kind::lease:
        out += ",\"lease\":" + model::dump(model::to_json(*static_cast<const api::Lock*>(c.item)));
        break;
      case kind::checkpoint: {
        const auto& e = *static_cast<const api::Event*>(c.item);
        auto state = model::parse_json(e.checkpoint().state_json());
        out += ",\"checkpoint\":" + model::dump(json{{"agent_id", e.checkpoint().agent_id()},
                                                     {"version", e.checkpoint().version()},
                                                     {"cursor_seq", e.checkpoint().cursor_seq()},
                                                     {"state", state ? *state : json(nullptr)}});
        break;
      }
    }
  }

  void append_head(std::string& out, const candidate& c) const {
    out += "{\"section\":";
    model::append_json_string(out, section_names[at(c.sec)]);
    out += ",\"kind\":";
    model::append_json_string(out, kind_names[size_t(c.k)]);
    if (c.seq) out += ",\"seq\":" + std::to_string(c.seq);
    out += c.k == kind::unit ? ",\"id\":" : ",\"key\":";
    model::append_json_string(out, c.key);
    out += ",\"ts\":";
    wire::append_timestamp_json(out, c.ts_ns);
    out += ",\"tokens\":" + std::to_string(c.tokens);
  }

  json policy_json() const {
    json weights = json::object(), priority = json::object(), share = json::object();
    for (size_t i = 0; i < packet_signal_count; ++i) weights[std::string(signal_names[i])] = p_.weights[i];
    for (size_t i = 0; i < packet_section_count; ++i) priority[std::string(section_names[i])] = p_.priority[i];
    json types = json::array();
    for (int t : p_.types) types.push_back(t);
    return json{{"name", p_.name},
                {"recent_window", p_.recent_window},
                {"retrieve_limit", p_.retrieve_limit},
                {"summaries_limit", p_.summaries_limit},
                {"types", std::move(types)},
                {"half_life_s", p_.half_life_s},
                {"weights", std::move(weights)},
                {"section_priority", std::move(priority)}};
  }

  packet_output render() {
    std::vector<const candidate*> shown, omitted;
    for (const auto& c : cands_) (c.kept ? shown : omitted).push_back(&c);
    std::sort(shown.begin(), shown.end(), shown_order);
    std::sort(omitted.begin(), omitted.end(), [](const candidate* a, const candidate* b) {
      if (a->sec != b->sec) return a->sec < b->sec;
      return by_score(a, b);
    });
    std::array<uint64_t, packet_section_count> used{}, items{}, candidates{};
    for (const auto& c : cands_) ++candidates[at(c.sec)];
    uint64_t total = 0;
    for (const auto* c : shown) {
      used[at(c->sec)] += c->tokens;
      ++items[at(c->sec)];
      total += c->tokens;
    }
    return req_.text ? render_text(shown) : render_json(shown, omitted, used, items, candidates, total);
  }

  packet_output render_json(const std::vector<const candidate*>& shown, const std::vector<const candidate*>& omitted,
                            const std::array<uint64_t, packet_section_count>& used,
                            const std::array<uint64_t, packet_section_count>& items,
                            const std::array<uint64_t, packet_section_count>& candidates, uint64_t total) const {
    std::string out;
    // Reserved once: a packet is often hundreds of KB, and growing it by doubling
    // copies it (and faults in fresh pages) several times.
    size_t expected = 4096 + omitted.size() * 192;
    for (const auto* c : shown) {
      expected += 512;
      if (c->k == kind::unit) expected += c->unit().payload().size() * 7 / 3 + c->unit().meta_size() * 64;
      else if (c->k == kind::fact) expected += static_cast<const api::Fact*>(c->item)->value_json().size();
    }
    out.reserve(expected);
    out += "{\"context_id\":";
    model::append_json_string(out, req_.context_id);
    out += ",\"agent_id\":";
    model::append_json_string(out, req_.agent_id);
    out += ",\"items\":[";
    for (size_t i = 0; i < shown.size(); ++i) {
      if (i) out += ',';
      append_head(out, *shown[i]);
      append_content(out, *shown[i]);
      append_why(out, *shown[i]);
      out += '}';
    }
    out += "],\"budget_report\":{\"max_tokens\":" + std::to_string(req_.max_tokens) +
           ",\"used_tokens\":" + std::to_string(total) + ",\"tight\":" + (tight_ ? "true" : "false") +
           ",\"sections\":{";
    for (size_t i = 0; i < packet_section_count; ++i) {
      if (i) out += ',';
      append_name(out, section_names[i]);
      out += ":{\"budget\":" + std::to_string(section_budget(section(i))) + ",\"used\":" + std::to_string(used[i]) +
             ",\"items\":" + std::to_string(items[i]) + ",\"candidates\":" + std::to_string(candidates[i]) + "}";
    }
    out += "},\"omitted\":[";
    for (size_t i = 0; i < omitted.size(); ++i) {
      if (i) out += ',';
      append_omission(out, *omitted[i]);
    }
    out += "]}";
    json search{{"mode", in_.search.empty() ? json(nullptr) : json(in_.search)}};
    if (!in_.degraded.empty()) search["degraded"] = in_.degraded;
    json truncated = json::array();
    for (const auto& t : in_.truncated) truncated.push_back(t);
    json meta{{"as_of_seq", in_.as_of_seq},
              {"since_seq", req_.since_seq ? json(*req_.since_seq) : json(nullptr)},
              {"log_time", wire::timestamp_json(in_.log_time_ns)},
              {"purpose", req_.purpose},
              {"query", req_.query_text},
              {"policy", policy_json()},
              {"search", std::move(search)},
              {"truncated", std::move(truncated)}};
    std::string meta_text = model::dump(meta);
    meta_text.pop_back();  // generated_at goes last, outside what the ETag covers
    out += ",\"meta\":" + meta_text;
    packet_output o;
    o.etag = etag(out);
    out += ",\"generated_at\":";
    wire::append_timestamp_json(out, in_.generated_at_ns);
    out += "}}";
    o.body = std::move(out);
    return o;
  }

  static std::string etag(std::string_view covered) {
    // XXH3: fast over half a megabyte, and its output is specified (stable across
    // versions and machines), so an ETag outlives a server upgrade.
    char hex[17];
    auto h = XXH3_64bits(covered.data(), covered.size());
    for (int i = 15; i >= 0; --i, h >>= 4) hex[i] = "0123456789abcdef"[h & 15];
    hex[16] = 0;
    return std::string("W/\"") + hex + "\"";
  }

  static void line_text(std::string& out, std::string_view payload) {
    if (payload.empty()) return;
    if (!model::valid_utf8(payload)) {
      out += "[" + std::to_string(payload.size()) + " bytes, not text]";
      return;
    }
    out += payload;
  }

  packet_output render_text(const std::vector<const candidate*>& shown) const {
    std::string out;
    out += "Context: " + in_.context.id();
    if (!in_.context.display_name().empty()) out += " (" + in_.context.display_name() + ")";
    out += ", as of seq " + std::to_string(in_.as_of_seq) + " (" + model::rfc3339_seconds(in_.log_time_ns) + ")\n";
    if (!req_.agent_id.empty()) out += "You are: " + req_.agent_id + "\n";
    if (!req_.purpose.empty()) out += "Purpose: " + req_.purpose + "\n";
    static constexpr std::string_view headings[packet_section_count] = {
        "Pinned", "Facts", "Tasks", "Leases held by others", "Your last checkpoint", "Summaries", "Found by the query",
        "Recent"};
    int current = -1;
    for (const auto* c : shown) {
      if (int(c->sec) != current) {
        current = int(c->sec);
        out += "\n## " + std::string(headings[size_t(current)]) + "\n";
      }
      switch (c->k) {
        case kind::unit: {
          const auto& u = c->unit();
          out += "[" + model::rfc3339_seconds(u.ts_ns()) + " #" + std::to_string(u.seq()) + "] " + u.agent_id() + " (" +
                 std::string(wire::enum_name(wire::unit_type_names, u.type())) + "): ";
          line_text(out, u.payload());
          break;
        }
        case kind::fact: {
          const auto& f = *static_cast<const api::Fact*>(c->item);
          out += "- " + f.key() + " = " + f.value_json() + " (set by " + f.agent_id() + " at #" +
                 std::to_string(f.set_at_seq()) + ", " + model::rfc3339_seconds(f.set_at_ns());
          if (f.status() == "disputed") out += ", disputed";
          out += ")";
          break;
        }
        case kind::task: {
          const auto& t = *static_cast<const api::Task*>(c->item);
          out += "- [" + t.status() + "] " + t.task_id() + ": " + t.title();
          if (!t.holder_agent().empty()) out += " (held by " + t.holder_agent() + ")";
          else if (!t.last_holder().empty()) out += " (last held by " + t.last_holder() + ")";
          break;
        }
        case kind::lease: {
          const auto& l = *static_cast<const api::Lock*>(c->item);
          out += "- " + l.resource_path() + ": held by " + l.holder_agent() + " until " +
                 model::rfc3339_seconds(l.expires_at_ns());
          break;
        }
        case kind::checkpoint: {
          const auto& e = *static_cast<const api::Event*>(c->item);
          out += "version " + std::to_string(e.checkpoint().version()) + ", up to #" +
                 std::to_string(e.checkpoint().cursor_seq()) + ": " + e.checkpoint().state_json();
          break;
        }
      }
      out += '\n';
    }
    packet_output o;
    o.text = true;
    o.etag = etag(out);
    o.body = "Current time: " + model::rfc3339_seconds(in_.generated_at_ns) + "\n" + out;
    return o;
  }

  const packet_request& req_;
  const packet_inputs& in_;
  const packet_policy& p_;
  std::vector<candidate> cands_;
  std::map<uint64_t, size_t> unit_at_;
  std::map<uint64_t, size_t> kw_rank_, vec_rank_;
  bool tight_ = false;
  uint64_t used_ = 0;  // tokens taken within max_tokens
  std::vector<const candidate*> summaries_taken_;
};

}  // namespace

std::string_view to_string(packet_section s) { return section_names[at(s)]; }
std::string_view to_string(packet_signal s) { return signal_names[at(s)]; }

std::optional<packet_section> packet_section_from(std::string_view name) {
  for (size_t i = 0; i < packet_section_count; ++i)
    if (section_names[i] == name) return packet_section(i);
  return std::nullopt;
}

std::optional<packet_signal> packet_signal_from(std::string_view name) {
  for (size_t i = 0; i < packet_signal_count; ++i)
    if (signal_names[i] == name) return packet_signal(i);
  return std::nullopt;
}

const packet_policy* named_packet_policy(std::string_view name) {
  for (const auto& p : policies())
    if (p.name == name) return &p;
  return nullptr;
}

std::span<const std::string_view> packet_policy_names() { return policy_names; }

packet_output assemble_packet(const packet_request& req, const packet_inputs& in) { return assembler(req, in).run(); }

}  // namespace engram::engine
