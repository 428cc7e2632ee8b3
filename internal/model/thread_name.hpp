#pragma once
// Names the calling thread, for top -H, perf and gdb (Linux keeps at most 15 bytes).

#include <pthread.h>

namespace engram::model {

inline void name_this_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

}  // namespace engram::model
