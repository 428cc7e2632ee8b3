// The WebSocket client-message handler's decoding: any text frame is parsed as JSON
// and a "subscribe" message becomes a subscription, which is then authorized for a
// token granting read on "team/*" and "solo". A granted subscription never reaches
// a context outside the grants.

#include <nlohmann/json.hpp>

#include "fuzz_check.hpp"
#include "gateway/stream_params.hpp"
#include "model/text.hpp"

using namespace engram;
using fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto msg = model::parse_json(fuzz::as_text(data, size));
  if (!msg || !msg->is_object()) return 0;
  auto sub = gateway::parse_subscribe_message(*msg);
  if (!sub) {
    fuzz::check_json(model::dump(model::json{{"type", "error"}, {"error", sub.error().message}}),
                     "a refused subscribe renders valid JSON");
    return 0;
  }
  check(!sub->contexts.empty() || !sub->prefixes.empty(), "a subscription names contexts");
  check(sub->contexts.size() + sub->prefixes.size() <= gateway::max_stream_contexts, "at most 100 contexts");
  for (const auto& c : sub->contexts)
    check(!model::check_identifier("context", c, model::max_id_bytes), "exact contexts are identifiers");

  gateway::caller who;
  who.principal = auth::principal{"agent", {{"team/*", auth::read}, {"solo", auth::read | auth::write}}};
  const bool all_readable = std::ranges::all_of(sub->contexts, [&](const auto& c) { return who.can(auth::read, c); });
  auto granted = gateway::authorize_stream(*sub, who);
  check(granted.has_value() == all_readable, "a subscription is refused exactly when it names an unreadable context");
  if (granted) {
    check(bool(sub->permit), "a restricted token filters pattern streams");
    for (const auto& p : sub->prefixes) check(!sub->permit(p + "x") || p.starts_with("team/") || p + "x" == "solo",
                                              "a pattern stream delivers only readable contexts");
  }
  return 0;
}
