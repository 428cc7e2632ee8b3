#pragma once
// Reciprocal rank fusion (Cormack, Clarke, Büttcher 2009): a document's score is
// Σ 1/(k + rank) over the rankings that contain it, so agreeing signals add up
// and no signal's raw scale matters. Pure; tested directly.

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace engram::search {

struct ranked {
  std::string id;
  double score = 0;  // the signal's own score (BM25, cosine), reported, not fused
};

struct fused {
  std::string id;
  double score = 0;
  std::optional<size_t> keyword_rank, vector_rank;  // 1-based
  std::optional<double> keyword_score, vector_score;
};

// Best first; ties go to the better single rank, then to the keyword ranking's order.
inline std::vector<fused> fuse_rrf(const std::vector<ranked>& keyword, const std::vector<ranked>& vector,
                                   double k = 60) {
  std::vector<fused> out;
  std::unordered_map<std::string, size_t> at;
  auto entry = [&](const std::string& id) -> fused& {
    auto [it, fresh] = at.emplace(id, out.size());
    if (fresh) {
      out.emplace_back();
      out.back().id = id;
    }
    return out[it->second];
  };
  for (size_t i = 0; i < keyword.size(); ++i) {
    auto& f = entry(keyword[i].id);
    if (f.keyword_rank) continue;  // a ranking lists an id once; keep its best rank
    f.keyword_rank = i + 1;
    f.keyword_score = keyword[i].score;
    f.score += 1.0 / (k + double(i + 1));
  }
  for (size_t i = 0; i < vector.size(); ++i) {
    auto& f = entry(vector[i].id);
    if (f.vector_rank) continue;
    f.vector_rank = i + 1;
    f.vector_score = vector[i].score;
    f.score += 1.0 / (k + double(i + 1));
  }
  auto best_rank = [](const fused& f) {
    return std::min(f.keyword_rank.value_or(SIZE_MAX), f.vector_rank.value_or(SIZE_MAX));
  };
  std::stable_sort(out.begin(), out.end(), [&](const fused& a, const fused& b) {
    if (a.score != b.score) return a.score > b.score;
    return best_rank(a) < best_rank(b);
  });
  return out;
}

}  // namespace engram::search
