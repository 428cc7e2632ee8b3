#include "gateway/fields.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <vector>

namespace engram::gateway {

namespace {

// Edit distance counting an insertion, deletion, substitution or swap of two
// neighbours as one edit (optimal string alignment). Names are short, and only the
// first unknown key of a body is measured.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

std::string shown(std::string_view s) {
  constexpr size_t most = 64;  // keys are client input: bound what is echoed
  return "'" + std::string(s.substr(0, most)) + (s.size() > most ? "…'" : "'");
}

std::string joined(field_names known) {
  std::string list;
  for (auto k : known) list.append(list.empty() ? "" : ", ").append(k);
  return list;
}

}  // namespace

std::string_view closest_field(std::string_view name, field_names known) {
  if (name.empty() || name.size() > 256) return {};
  // A truncated or extended name ("target" for "target_id") first: the one nearest
  // in length.
  std::string_view best;
  auto gap = [&](std::string_view k) { return std::max(k.size(), name.size()) - std::min(k.size(), name.size()); };
  if (name.size() >= 3)
    for (auto k : known)
      if ((k.starts_with(name) || name.starts_with(k)) && (best.empty() || gap(k) < gap(best))) best = k;
  if (!best.empty()) return best;
  size_t best_distance = std::max<size_t>(2, name.size() / 3) + 1;  // a typo: at most 2 edits, more if long
  for (auto k : known) {
    const size_t d = edit_distance(name, k);
    if (d < best_distance) best = k, best_distance = d;
  }
  return best;
}

model::status check_fields(const nlohmann::json& object, field_names known, std::string_view where) {
  if (!object.is_object()) return {};
  for (const auto& [key, value] : object.items()) {
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    std::string message = "unknown field " + shown(key) + " in " + std::string(where);
    if (auto near = closest_field(key, known); !near.empty()) message += "; did you mean " + shown(near) + "?";
    else message += " (known: " + joined(known) + ")";
    return model::fail(model::errc::invalid_argument, std::move(message));
  }
  return {};
}

model::status check_unit_fields(const nlohmann::json& unit, std::string_view where) {
  if (auto ok = check_fields(unit, fields::unit, where); !ok) return ok;
  if (!unit.is_object()) return {};
  if (auto rels = unit.find("relationships"); rels != unit.end() && rels->is_array())
    for (const auto& r : *rels)
      if (auto ok = check_fields(r, fields::relationship, std::string(where) + " relationships[]"); !ok) return ok;
  if (auto f = unit.find("fence"); f != unit.end())
    if (auto ok = check_fields(*f, fields::fence, std::string(where) + " fence"); !ok) return ok;
  return {};
}

}  // namespace engram::gateway
