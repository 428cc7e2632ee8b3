#include "search/terms.hpp"

#include <xxhash.h>

#include <array>

#include "model/text.hpp"

namespace engram::search {

std::string bool_term(std::string_view prefix, std::string_view value) {
  std::string term;
  term.reserve(std::min(prefix.size() + value.size(), max_term_bytes));
  term.append(prefix);
  if (prefix.size() + value.size() <= max_term_bytes) return term.append(value);
  const size_t kept = max_term_bytes - prefix.size() - 17;
  term.append(value.substr(0, kept));
  const uint64_t h = XXH3_64bits(value.data(), value.size());
  static constexpr char hex[] = "0123456789abcdef";
  term.push_back('#');
  for (int shift = 60; shift >= 0; shift -= 4) term.push_back(hex[(h >> shift) & 0xF]);
  return term;
}

std::string unique_term(std::string_view unit_id) { return bool_term("Q", unit_id); }
std::string context_term(std::string_view context_id) { return bool_term("XC", context_id); }

std::string sortable_u64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8) out[i] = char(v & 0xFF);
  return out;
}

uint64_t read_sortable_u64(std::string_view bytes) {
  if (bytes.size() != 8) return 0;
  uint64_t v = 0;
  for (const char c : bytes) v = (v << 8) | uint8_t(c);
  return v;
}

std::optional<std::string_view> payload_text(const api::WorkUnit& unit, size_t max_bytes) {
  std::string_view text = unit.payload();
  if (text.empty() || text.find('\0') != std::string_view::npos || !model::valid_utf8(text)) return std::nullopt;
  return cut_utf8(text, max_bytes);
}

std::string_view cut_utf8(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t cut = max_bytes;
  while (cut > 0 && (uint8_t(text[cut]) & 0xC0) == 0x80) --cut;  // not inside a character
  return text.substr(0, cut);
}

namespace {
std::string meta_term(std::string_view key, std::string_view value) {
  std::string kv;
  kv.reserve(key.size() + 1 + value.size());
  kv.append(key).push_back('\0');
  kv.append(value);
  return bool_term("XM", kv);
}

std::string relationship_term(std::optional<int> type, std::string_view target) {
  if (!type) return bool_term("XRT", target);
  return bool_term("XR" + std::to_string(*type) + ":", target);
}

template <class Terms>
Xapian::Query any_of(const Terms& terms) {
  return Xapian::Query(Xapian::Query::OP_OR, terms.begin(), terms.end());
}
}  // namespace

Xapian::Document make_document(const api::WorkUnit& unit, Xapian::TermGenerator& generator,
                               size_t max_text_bytes) {
  Xapian::Document doc;
  generator.set_document(doc);
  if (auto text = payload_text(unit, max_text_bytes))
    generator.index_text(Xapian::Utf8Iterator(text->data(), text->size()));  // no copy of the text
  for (const auto& [key, value] : unit.meta()) {
    generator.increase_termpos();  // no phrase spans two fields
    generator.index_text(value);
  }
  doc.add_boolean_term(unique_term(unit.id()));
  doc.add_boolean_term(context_term(unit.context_id()));
  if (!unit.agent_id().empty()) doc.add_boolean_term(bool_term("XA", unit.agent_id()));
  doc.add_boolean_term("XT" + std::to_string(int(unit.type())));
  for (const auto& [key, value] : unit.meta()) doc.add_boolean_term(meta_term(key, value));
  for (const auto& r : unit.relationships()) {
    doc.add_boolean_term(relationship_term(int(r.type()), r.target_id()));
    doc.add_boolean_term(relationship_term(std::nullopt, r.target_id()));
  }
  doc.add_value(ts_slot, sortable_u64(uint64_t(std::max<int64_t>(0, unit.ts_ns()))));
  doc.add_value(seq_slot, sortable_u64(unit.seq()));
  api::WorkUnit head;
  head.set_id(unit.id());
  head.set_context_id(unit.context_id());
  head.set_seq(unit.seq());
  head.set_ts_ns(unit.ts_ns());
  head.set_agent_id(unit.agent_id());
  head.set_type(unit.type());
  doc.add_value(head_slot, head.SerializeAsString());
  return doc;
}

api::WorkUnit document_head(const Xapian::Document& doc) {
  api::WorkUnit head;
  std::string bytes = doc.get_value(head_slot);
  if (bytes.empty()) bytes = doc.get_data();  // indexed before the head moved to a value
  if (!head.ParseFromString(bytes)) head.Clear();
  return head;
}

model::result<std::optional<Xapian::Query>> filter_query(const query& q) {
  std::vector<Xapian::Query> parts;
  if (!q.context_id.empty() && q.context_id != "*") {
    if (q.context_id.ends_with('*')) {
      const std::string_view prefix = std::string_view(q.context_id).substr(0, q.context_id.size() - 1);
      if (prefix.size() > max_context_prefix_bytes)
        return model::fail(model::errc::invalid_argument,
                           "a context prefix pattern may be at most " + std::to_string(max_context_prefix_bytes) +
                               " bytes before the '*'");
      // Boolean filter: every context term with the prefix, unlimited expansion.
      parts.emplace_back(Xapian::Query::OP_WILDCARD, "XC" + std::string(prefix));
    } else {
      parts.emplace_back(context_term(q.context_id));
    }
  }
  if (q.scope) {
    std::vector<Xapian::Query> allowed;
    for (const auto& pattern : *q.scope) {
      if (pattern.ends_with('*'))
        allowed.emplace_back(Xapian::Query::OP_WILDCARD, "XC" + pattern.substr(0, pattern.size() - 1));
      else
        allowed.emplace_back(context_term(pattern));
    }
    // No readable pattern: an empty query, which matches nothing.
    if (allowed.empty()) parts.emplace_back();
    else parts.emplace_back(Xapian::Query::OP_OR, allowed.begin(), allowed.end());
  }
  if (!q.agent_ids.empty()) {
    std::vector<std::string> terms;
    for (const auto& a : q.agent_ids) terms.push_back(bool_term("XA", a));
    parts.push_back(any_of(terms));
  }
  if (!q.types.empty()) {
    std::vector<std::string> terms;
    for (const int t : q.types) terms.push_back("XT" + std::to_string(t));
    parts.push_back(any_of(terms));
  }
  for (const auto& [key, value] : q.meta) parts.emplace_back(meta_term(key, value));
  for (const auto& r : q.relationships) parts.emplace_back(relationship_term(r.type, r.target_id));
  if (q.from_ns || q.to_ns) {
    const uint64_t from = uint64_t(std::max<int64_t>(0, q.from_ns.value_or(0)));
    if (q.to_ns && *q.to_ns <= int64_t(from)) {
      parts.emplace_back();  // matches nothing
    } else if (!q.to_ns) {
      parts.emplace_back(Xapian::Query::OP_VALUE_GE, ts_slot, sortable_u64(from));
    } else {
      parts.emplace_back(Xapian::Query::OP_VALUE_RANGE, ts_slot, sortable_u64(from),
                         sortable_u64(uint64_t(*q.to_ns) - 1));
    }
  }
  if (parts.empty()) return std::optional<Xapian::Query>();
  if (parts.size() == 1) return std::optional<Xapian::Query>(parts.front());
  return std::optional<Xapian::Query>(Xapian::Query(Xapian::Query::OP_AND, parts.begin(), parts.end()));
}

std::string unescape_html(std::string_view html) {
  static constexpr std::array<std::pair<std::string_view, char>, 5> entities = {
      {{"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&#39;", '\''}}};
  std::string out;
  out.reserve(html.size());
  for (size_t i = 0; i < html.size();) {
    bool replaced = false;
    if (html[i] == '&') {
      for (const auto& [entity, c] : entities) {
        if (html.substr(i, entity.size()) == entity) {
          out.push_back(c);
          i += entity.size();
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) out.push_back(html[i++]);
  }
  return out;
}

}  // namespace engram::search
