// The protobuf storage decoder and everything downstream of it: bytes read from
// RocksDB are decoded as each record kind the store keeps, then rendered the way the
// server serves them (replays and live events through router::to_wire, contexts and
// leases as JSON, units as Xapian documents). Corrupt records must yield an error or
// well-formed output, never a crash or a broken frame.

#include <google/protobuf/stubs/logging.h>
#include <xapian.h>

#include "fuzz_check.hpp"
#include "records.pb.h"
#include "router/router.hpp"
#include "search/terms.hpp"

using namespace engram;
using fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Protobuf logs every string field that is not UTF-8; corrupt input is the point here.
  static const bool quiet = (google::protobuf::SetLogHandler(nullptr), true);
  (void)quiet;
  const int n = int(size);
  if (api::Event ev; ev.ParseFromArray(data, n)) {
    const auto wire = router::to_wire(ev);
    fuzz::check_json(wire->json, "a stored event renders valid JSON");
    check(wire->sse_event.find_first_of("\r\n") == std::string::npos, "an SSE event name stays on its line");
    if (ev.has_work_unit()) {
      static Xapian::TermGenerator generator;
      const auto& unit = ev.work_unit();
      const auto doc = search::make_document(unit, generator, 4096);
      const auto head = search::document_head(doc);
      check(head.id() == unit.id() && head.context_id() == unit.context_id() && head.seq() == unit.seq(),
            "a document's head is the unit's");
    }
  }
  if (storage::ContextRecord rec; rec.ParseFromArray(data, n))
    fuzz::check_json(model::dump(model::to_json(rec.context())), "a stored context renders valid JSON");
  if (api::Lock lock; lock.ParseFromArray(data, n))
    fuzz::check_json(model::dump(model::to_json(lock)), "a stored lease renders valid JSON");
  if (storage::IdempotencyRecord rec; rec.ParseFromArray(data, n)) (void)rec.count();
  if (storage::VectorRecord rec; rec.ParseFromArray(data, n)) (void)rec.embedding().values_size();
  return 0;
}
