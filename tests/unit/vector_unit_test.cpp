// Vectors in storage (real RocksDB in a temp dir), the HNSW vector index over them,
// and reciprocal rank fusion.
#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <random>
#include <set>

#include "model/ids.hpp"
#include "search/distance.hpp"
#include "search/fusion.hpp"
#include "search/vectors.hpp"
#include "storage/store.hpp"
#include "support/test_support.hpp"

namespace engram::search {
namespace {

using namespace std::chrono_literals;

// Every dot-product kernel this CPU runs agrees with a double-precision sum, at
// lengths around each kernel's block sizes (4, 8, 16, 32 floats) and unaligned.
TEST(DotKernels, AgreeWithAReferenceSumAtEveryLength) {
  std::mt19937 rng(3);
  std::normal_distribution<float> n;
  ASSERT_FALSE(dot_kernels().empty());
  EXPECT_STREQ(best_dot_name(), dot_kernels().front().name);
  for (const auto& [name, kernel] : dot_kernels()) {
    for (size_t len : {0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 383, 384, 385, 1024}) {
      for (size_t offset : {0, 1}) {
        // Exactly offset + len floats each, so that ASan sees any read past the end.
        std::vector<float> a(offset + len), b(offset + len);
        for (auto& x : a) x = n(rng);
        for (auto& x : b) x = n(rng);
        double want = 0, scale = 0;
        for (size_t i = offset; i < offset + len; ++i) {
          want += double(a[i]) * b[i];
          scale += std::abs(double(a[i]) * b[i]);
        }
        EXPECT_NEAR(kernel(a.data() + offset, b.data() + offset, len), want, 1e-5 * (scale + 1))
            << name << " length " << len << " offset " << offset;
      }
    }
  }
}

class VectorStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { open(); }
  void open() {
    auto s = test::open_test_store(dir_);
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
  }

  api::WorkUnit unit(const std::vector<float>& v, const std::string& model = "m") {
    api::WorkUnit u;
    u.set_id(ids_.next(1'700'000'000'000).to_string());
    u.set_agent_id("a");
    u.set_payload("text");
    if (!v.empty()) {
      u.mutable_embedding()->set_model(model);
      u.mutable_embedding()->mutable_values()->Add(v.begin(), v.end());
    }
    return u;
  }

  model::result<storage::append_result> append(std::vector<api::WorkUnit> units, const std::string& ctx = "c") {
    std::promise<model::result<storage::append_result>> p;
    auto f = p.get_future();
    store_->append({ctx, std::move(units), {}, {}, {}}, [&](auto r) { p.set_value(std::move(r)); });
    return f.get();
  }

  model::status put(storage::vector_write w) {
    std::promise<model::status> p;
    auto f = p.get_future();
    store_->put_vectors(std::move(w), [&](model::status s) { p.set_value(std::move(s)); });
    return f.get();
  }

  test::temp_dir dir_;
  std::unique_ptr<storage::store> store_;
  model::uuid_v7_generator ids_;
};

TEST_F(VectorStoreTest, VectorsAreStoredInCommitOrderApartFromTheLog) {
  auto r = append({unit({1, 2}), unit({}), unit({3, 4})});
  ASSERT_TRUE(r) << r.error().message;
  for (const auto& u : r->units) EXPECT_FALSE(u.has_embedding());  // never in the log
  auto logged = store_->read_events("c", 0, 10);
  ASSERT_TRUE(logged);
  for (const auto& e : *logged) EXPECT_FALSE(e.work_unit().has_embedding());

  auto v = store_->read_vectors(0, 10);
  ASSERT_TRUE(v);
  ASSERT_EQ(v->size(), 2u);
  EXPECT_EQ((*v)[0].vseq, 1u);
  EXPECT_EQ((*v)[0].unit_id, r->units[0].id());
  EXPECT_EQ((*v)[1].vseq, 2u);
  EXPECT_EQ((*v)[1].embedding.values(1), 4.f);
  EXPECT_EQ(store_->read_vectors(1, 10)->size(), 1u);
  EXPECT_EQ(store_->last_vector_seq(), 2u);
  EXPECT_FALSE(*store_->get_vector(r->units[1].id()));
  EXPECT_EQ((*store_->get_vector(r->units[2].id()))->values(0), 3.f);

  // The model's dimension is fixed, within one request too, and survives reopening.
  EXPECT_EQ(append({unit({1, 2, 3})}).error().code, model::errc::invalid_argument);
  EXPECT_EQ(append({unit({1, 2, 3}, "n"), unit({1, 2}, "n")}).error().code, model::errc::invalid_argument);
  EXPECT_EQ(store_->vector_models()->size(), 1u);  // the refused request introduced nothing
  store_.reset();
  open();
  EXPECT_EQ(append({unit({1, 2, 3})}).error().code, model::errc::invalid_argument);
  ASSERT_TRUE(append({unit({5, 6})}));
  EXPECT_EQ(store_->last_vector_seq(), 3u);  // vseq continues after a reopen
}

TEST_F(VectorStoreTest, ComputedVectorsNeverReplaceExistingOnesAndCarryCursors) {
  auto r = append({unit({1, 0}), unit({})});
  ASSERT_TRUE(r);
  storage::vector_write w;
  w.cursor_model = "m";
  w.cursors = {{"c", 2}};
  for (const auto& u : r->units) {
    storage::vector_write::item it;
    it.unit_id = u.id();
    it.embedding.set_model("m");
    it.embedding.add_values(9);
    it.embedding.add_values(9);
    w.vectors.push_back(it);
  }
  ASSERT_TRUE(put(w));
  EXPECT_EQ((*store_->get_vector(r->units[0].id()))->values(0), 1.f);  // kept
  EXPECT_EQ((*store_->get_vector(r->units[1].id()))->values(0), 9.f);  // filled
  EXPECT_EQ(*store_->vector_cursor("m", "c"), 2u);
  EXPECT_EQ(*store_->vector_cursor("other", "c"), 0u);
  EXPECT_EQ(store_->read_vectors(0, 10)->size(), 2u);
  ASSERT_TRUE(put(w));  // again: nothing new
  EXPECT_EQ(store_->read_vectors(0, 10)->size(), 2u);
  w.vectors[1].embedding.add_values(1);  // wrong dimension
  EXPECT_FALSE(put(w));
}

std::vector<float> random_unit_vector(std::mt19937& rng, size_t dim) {
  std::normal_distribution<float> n;
  std::vector<float> v(dim);
  for (auto& x : v) x = n(rng);
  normalize(v);
  return v;
}

// The bar: recall@10 >= 0.95 against exact search, 20k random vectors of
// dimension 384 (random vectors are the hard case for a graph index).
TEST_F(VectorStoreTest, NearestNeighboursMatchBruteForce) {
  // Sanitizer builds: 1,000 vectors, within the graph's first allocation (tests/tsan.supp).
  constexpr size_t n = test::sanitized_build ? 1'000 : 20'000, dim = 384, queries = 100, k = 10;
  std::mt19937 rng(42);
  std::vector<std::vector<float>> data;
  std::vector<std::string> ids;
  for (size_t b = 0; b < n / 1000; ++b) {
    std::vector<api::WorkUnit> batch;
    for (size_t i = 0; i < 1000; ++i) {
      data.push_back(random_unit_vector(rng, dim));
      batch.push_back(unit(data.back()));
    }
    auto r = append(std::move(batch), "c" + std::to_string(b));
    ASSERT_TRUE(r) << r.error().message;
    for (const auto& u : r->units) ids.push_back(u.id());
  }
  auto index = vector_index::open(vector_options{}, *store_, nullptr);
  ASSERT_TRUE(index) << index.error().message;
  ASSERT_TRUE(test::wait_until([&] { return (*index)->status().lag == 0 && !(*index)->status().catching_up; }, 600s));
  EXPECT_EQ((*index)->size("m"), n);
  EXPECT_EQ((*index)->dimension("m"), dim);

  size_t hits = 0;
  for (size_t q = 0; q < queries; ++q) {
    const auto query = random_unit_vector(rng, dim);
    std::vector<std::pair<float, size_t>> exact;
    for (size_t i = 0; i < n; ++i) {
      float d = 0;
      for (size_t j = 0; j < dim; ++j) d += query[j] * data[i][j];
      exact.emplace_back(d, i);
    }
    std::partial_sort(exact.begin(), exact.begin() + k, exact.end(), std::greater<>());
    std::set<std::string> truth;
    for (size_t i = 0; i < k; ++i) truth.insert(ids[exact[i].second]);
    auto found = (*index)->nearest("m", query, k);
    ASSERT_TRUE(found);
    ASSERT_EQ(found->size(), k);
    for (size_t i = 0; i < found->size(); ++i) {
      hits += truth.count((*found)[i].unit_id);
      if (i > 0) {
        EXPECT_GE((*found)[i - 1].similarity, (*found)[i].similarity);
      }
    }
    // Each reported similarity is the true one of that unit (approximate: the set).
    for (const auto& nb : *found) {
      const size_t i = size_t(std::find(ids.begin(), ids.end(), nb.unit_id) - ids.begin());
      ASSERT_LT(i, n);
      float d = 0;
      for (size_t j = 0; j < dim; ++j) d += query[j] * data[i][j];
      EXPECT_NEAR(nb.similarity, d, 1e-4);
    }

    // Exact ranking of a subset is exact.
    std::vector<std::string> subset(ids.begin(), ids.begin() + 500);
    auto ranked = (*index)->rank_exact("m", query, subset, k);
    ASSERT_TRUE(ranked);
    std::vector<std::pair<float, std::string>> want;
    for (size_t i = 0; i < 500; ++i) {
      float d = 0;
      for (size_t j = 0; j < dim; ++j) d += query[j] * data[i][j];
      want.emplace_back(d, ids[i]);
    }
    std::sort(want.rbegin(), want.rend());
    // Rank by rank the exact similarity; two units whose similarities differ only by
    // float rounding (summed in another order) may trade places.
    for (size_t i = 0; i < k; ++i) {
      EXPECT_NEAR((*ranked)[i].similarity, want[i].first, 1e-5);
      const auto it = std::find_if(want.begin(), want.end(), [&](const auto& w) { return w.second == (*ranked)[i].unit_id; });
      ASSERT_NE(it, want.end());
      EXPECT_NEAR(it->first, want[i].first, 1e-5) << "rank " << i;
    }
  }
  const double recall = double(hits) / double(queries * k);
  EXPECT_GE(recall, 0.95);
  std::printf("recall@10 = %.4f over %zu queries\n", recall, queries);

  // Wrong dimension: refused; unknown model: nothing.
  EXPECT_FALSE((*index)->nearest("m", std::vector<float>(3, 1.f), k));
  EXPECT_TRUE((*index)->nearest("unknown", std::vector<float>(3, 1.f), k)->empty());

  // Vectors committed later are followed.
  auto more = append({unit(data[0])}, "late");
  ASSERT_TRUE(more);
  (*index)->on_committed(store_->last_vector_seq());
  ASSERT_TRUE(test::wait_until([&] { return (*index)->size("m") == n + 1; }));
}

TEST(FusionTest, ReciprocalRankFusionRewardsAgreement) {
  const std::vector<ranked> keyword = {{"k1", 9}, {"both", 5}, {"k3", 1}};
  const std::vector<ranked> vector = {{"both", 0.9}, {"v2", 0.8}};
  const auto f = fuse_rrf(keyword, vector, 60);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[0].id, "both");
  EXPECT_DOUBLE_EQ(f[0].score, 1.0 / 62 + 1.0 / 61);
  EXPECT_EQ(f[0].keyword_rank, 2u);
  EXPECT_EQ(f[0].vector_rank, 1u);
  EXPECT_EQ(f[0].keyword_score, 5);
  EXPECT_EQ(f[0].vector_score, 0.9);
  EXPECT_EQ(f[1].id, "k1");  // rank 1 in one list beats rank 2 in one list
  EXPECT_EQ(f[2].id, "v2");
  EXPECT_FALSE(f[1].vector_rank);
  EXPECT_FALSE(f[2].keyword_rank);
  EXPECT_EQ(f[3].id, "k3");
  EXPECT_TRUE(fuse_rrf({}, {}).empty());
  // Equal scores: the better single rank first.
  const auto tie = fuse_rrf({{"a", 1}}, {{"b", 1}});
  ASSERT_EQ(tie.size(), 2u);
  EXPECT_EQ(tie[0].id, "a");  // equal in every way: the keyword ranking's order
}

}  // namespace
}  // namespace engram::search
