#pragma once
// Use-case limits, filled in by config.

#include <cstddef>

namespace engram::engine {

struct options {
  size_t max_batch_units = 1000;  // POST /workunits
  size_t default_page_limit = 100;
  size_t max_page_limit = 1000;
};

}  // namespace engram::engine
