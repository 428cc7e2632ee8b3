#pragma once
// The dot product the vector index ranks by (search/vectors.cpp), chosen once for
// the CPU the server runs on: AVX-512, AVX2 with FMA, or SSE2 (every x86-64). The
// build stays portable (no -march): each kernel is compiled for its own instruction
// set and only called when the CPU reports it. hnswlib picks its kernel when it is
// compiled, which for a portable build is SSE (bench/README.md has the difference).

#include <cstddef>
#include <vector>

namespace engram::search {

using dot_kernel = float (*)(const float* a, const float* b, size_t n);

struct named_dot {
  const char* name;  // "avx512", "avx2", "sse2" or "scalar"
  dot_kernel kernel;
};

// Every kernel this CPU runs, fastest first (the tests compare them all).
const std::vector<named_dot>& dot_kernels();
// The fastest, and its name.
dot_kernel best_dot();
const char* best_dot_name();

}  // namespace engram::search
