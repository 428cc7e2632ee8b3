// The JSON request decoders: bodies of POST /work-units and /work-units/batch (each
// item too), PATCH /contexts/{id}, POST /search, POST /locks and …/renew, and the
// `fence` member. Decoding must fail cleanly or produce a value that holds its
// invariants; an accepted unit renders to JSON that decodes back to the same unit.
// parse_json itself must agree with nlohmann's parser on every input.

#include <google/protobuf/util/message_differencer.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "../support/same_json.hpp"
#include "fuzz_check.hpp"
#include "gateway/lock_params.hpp"
#include "gateway/search_params.hpp"
#include "search/terms.hpp"

using namespace engram;
using fuzz::check;

namespace {

void check_unit(api::WorkUnit unit) {
  check(!unit.context_id().empty() && !unit.agent_id().empty(), "an accepted unit has a context and an agent");
  unit.clear_embedding();  // rendered only on request, never by unit_json
  const auto rendered = fuzz::check_json(model::unit_json(unit), "unit_json renders valid JSON");
  auto again = model::unit_from_json(rendered, {});
  check(again.has_value(), "a rendered unit decodes again");
  check(google::protobuf::util::MessageDifferencer::Equals(unit, *again), "a unit survives render + decode");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto text = fuzz::as_text(data, size);
  auto parsed = model::parse_json(text);
  // parse_json parses with simdjson and falls back to nlohmann: it accepts what
  // nlohmann alone accepts, with the same value.
  const auto reference = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  check(parsed.has_value() == !reference.is_discarded(), "parse_json accepts exactly what nlohmann accepts");
  // Compared recursively; nlohmann itself parses any depth, so very deep inputs
  // (beyond what this stack can recurse through) are left out.
  if (parsed && std::count_if(text.begin(), text.end(), [](char c) { return c == '[' || c == '{'; }) < 2000)
    check(test::same_json(*parsed, reference), "parse_json gives nlohmann's value, number kinds included");
  if (!parsed || !parsed->is_object()) return 0;
  const model::json& body = *parsed;

  if (auto unit = model::unit_from_json(body, {"", "header-agent"})) check_unit(*unit);
  if (auto list = body.find("work_units"); list != body.end() && list->is_array())
    for (const auto& item : *list)
      if (auto unit = model::unit_from_json(item, {"batch-context", "header-agent"})) check_unit(*unit);

  std::vector<storage::fence> fences;
  if (gateway::parse_fence(body, fences) && !fences.empty())
    check(!fences.front().resource.empty(), "a fence names a resource");

  if (auto patch = model::patch_from_json(body)) {
    api::Context context;
    context.set_id("c");
    model::apply_patch(context, *patch);
    fuzz::check_json(model::dump(model::to_json(context)), "a patched context renders valid JSON");
  }

  if (auto search = gateway::parse_search_body(body))
    (void)search::filter_query(search->query);  // the Xapian query the filters become

  if (auto acquire = gateway::parse_acquire_body(body, "header-agent")) {
    check(!acquire->request.resources.empty(), "an acquire names resources");
    check(acquire->request.wait.count() >= 0, "wait is never negative");
    check(std::chrono::abs(acquire->request.ttl) <= std::chrono::hours(24 * 365 * 1000), "ttl is bounded");
  }
  if (auto renew = gateway::parse_renew_body(body, "header-agent"))
    check(std::chrono::abs(renew->ttl) <= std::chrono::hours(24 * 365 * 1000), "ttl is bounded");
  return 0;
}
