#pragma once
// Invariant checks (never input validation): log the broken invariant and abort.

#include <cstdio>
#include <cstdlib>

#define ENGRAM_ASSERT(cond, msg)                                                     \
  do {                                                                               \
    if (!(cond)) [[unlikely]] {                                                      \
      std::fprintf(stderr, "engram: invariant violated at %s:%d: %s (%s)\n", __FILE__, \
                   __LINE__, #cond, msg);                                            \
      std::abort();                                                                  \
    }                                                                                \
  } while (false)
