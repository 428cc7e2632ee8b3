#pragma once
// Embeddings computed by an OpenAI-compatible endpoint (POST /v1/embeddings:
// llama.cpp's server, Ollama, vLLM, TEI, or a hosted API behind a key), for units
// that have text and no vector, and for query text (embed_query). Owned by
// search::index; one background thread tails the logs, embed_query runs on the
// caller's thread (README.md). Never on the write path. Thread-safe.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engram.pb.h"
#include "model/error.hpp"

namespace prometheus {
class Registry;
}
namespace engram::storage {
class store;
}

namespace engram::search {

struct embedder_options {
  std::string url;    // http://host:port/v1/embeddings; empty: no embedder
  std::string model;  // sent to the endpoint; also the name of the vector space
  std::string api_key;  // sent as "Authorization: Bearer …" when not empty
  size_t batch_size = 32;
  size_t max_input_bytes = 8192;  // of a unit's text; longer text is cut
  std::chrono::milliseconds timeout{30'000};
  std::chrono::milliseconds query_timeout{5'000};
  std::chrono::milliseconds min_backoff{250};
  std::chrono::milliseconds max_backoff{30'000};
};

struct embedder_status {
  bool up = true;         // the last call to the endpoint succeeded (or none was made)
  uint64_t backlog = 0;   // log events not yet looked at by the embedder
  uint64_t embedded = 0;  // vectors stored since start
  std::string error;      // the last failure while down
};

class embedder {
 public:
  // Checks the options (the URL must be http://), then starts the background
  // thread. The store must outlive the embedder.
  static model::result<std::unique_ptr<embedder>> open(const embedder_options& opts, storage::store& store,
                                                       prometheus::Registry* metrics);
  ~embedder();  // close()s
  embedder(const embedder&) = delete;
  embedder& operator=(const embedder&) = delete;

  const std::string& model() const;

  // Publisher hook: events just committed (cheap).
  void on_committed(const std::vector<std::shared_ptr<const api::Event>>& events);

  // The query's vector; `unavailable` when the endpoint fails or is known down.
  model::result<std::vector<float>> embed_query(const std::string& text);

  embedder_status status() const;
  void close();

  struct impl;

 private:
  explicit embedder(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace engram::search
