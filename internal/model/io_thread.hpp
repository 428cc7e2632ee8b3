#pragma once
// Which of the HTTP server's I/O threads runs this code: its index, or -1 on any
// other thread. The server's threads set it when they start. The store remembers
// it with an append it queues for the committer and hands the answer back to that
// thread (storage::store::executor), so a request is answered on the thread that
// read it: no second hop to the connection's thread, and its memory is freed where
// it was allocated.

namespace engram::model {

inline thread_local int this_io_thread = -1;

}  // namespace engram::model
