#pragma once
// Use cases over the stores (DESIGN.md §1): append, list and fetch work units;
// read, patch and list contexts. Owns id generation and paging cursors; knows
// nothing of HTTP. Thread-safe: every method may be called from any I/O thread.

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/options.hpp"
#include "engine/stream.hpp"
#include "model/clock.hpp"
#include "model/codec.hpp"
#include "model/error.hpp"
#include "model/ids.hpp"
#include "search/index.hpp"
#include "search/query.hpp"
#include "storage/store.hpp"

namespace prometheus {
class Registry;
}

namespace engram::engine {

struct idempotency {
  std::string key;          // empty: the request is not idempotent
  std::string fingerprint;  // identifies the request body for that key
};

struct list_request {
  std::optional<size_t> limit;
  std::string cursor;  // opaque, from a previous page's next_cursor
  bool reverse = false;
  uint64_t after_seq = 0;
};

struct units_page {
  std::vector<api::WorkUnit> units;
  std::string next_cursor;  // empty on the last page
};

struct contexts_page {
  std::vector<api::Context> contexts;
  std::string next_cursor;
};

class engine {
 public:
  // `router` (may be null) is where streams subscribe; it must outlive the engine.
  engine(options opts, std::shared_ptr<const model::clock> clock, router::router* router = nullptr,
         prometheus::Registry* metrics = nullptr);

  // Called once recovery has opened the store; until then every use case answers
  // `unavailable` and ready() is false. The store must outlive the engine's use.
  void attach(storage::store* store);
  bool ready() const { return store_.load(std::memory_order_acquire) != nullptr; }
  // The search index, once open (null: search answers `unavailable`).
  void attach_search(search::index* index);
  // Null while search is not attached.
  std::optional<search::index_status> search_status() const;

  using append_done = std::function<void(model::result<storage::append_result>)>;
  // Appends units (already validated by the codec) to one context, atomically.
  void append(std::string context_id, std::vector<api::WorkUnit> units, idempotency idem,
              append_done done, std::vector<storage::fence> fences = {});

  model::result<api::WorkUnit> get_unit(std::string_view id) const;
  // The unit's stored embedding; nullopt when it has none.
  model::result<std::optional<api::Embedding>> get_vector(std::string_view id) const;
  model::result<units_page> list_units(std::string_view context_id, const list_request& req) const;

  model::result<api::Context> get_context(std::string_view id) const;
  void patch_context(std::string context_id, model::context_patch patch,
                     std::function<void(model::result<api::Context>)> done);
  model::result<contexts_page> list_contexts(std::string_view cursor,
                                             std::optional<size_t> limit) const;

  // Keyword search over all history. `limit` defaults and is capped like list pages;
  // `done` runs on a search thread.
  void search(search::query q, std::optional<size_t> limit,
              std::function<void(model::result<search::results>)> done) const;

  // Opens a live subscription (see stream.hpp). `notify` is called when the stream
  // has events to poll.
  model::result<std::shared_ptr<stream>> open_stream(stream_request req, std::function<void()> notify);

  const options& opts() const { return opts_; }

 private:
  model::result<storage::store*> store() const;
  model::result<size_t> page_limit(std::optional<size_t> requested) const;

  options opts_;
  std::shared_ptr<const model::clock> clock_;
  router::router* router_;
  stream_counters stream_counters_;
  std::atomic<storage::store*> store_{nullptr};
  std::atomic<search::index*> search_{nullptr};
  mutable model::uuid_v7_generator ids_;
};

}  // namespace engram::engine
