#pragma once
// Names the calling thread, for top -H, perf and gdb (Linux keeps at most 15 bytes).

#include <pthread.h>

namespace engram::model {

inline void name_this_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

// For a job on a pool's thread (Asio's pools take no start hook): names the thread
// the first time one runs there.
inline void name_pool_thread(const char* name) {
  thread_local bool named = false;
  if (named) return;
  name_this_thread(name);
  named = true;
}

}  // namespace engram::model
