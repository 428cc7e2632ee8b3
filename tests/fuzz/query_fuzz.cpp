// The URL/query parsers: the request-target of GET /stream and /stream-sse (with
// Last-Event-ID) and of GET /search, split into parameters as the handler does.
// Input: one flag byte (bit 0: SSE), the target, then "\n" and Last-Event-ID.

#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>

#include "fuzz_check.hpp"
#include "gateway/search_params.hpp"
#include "gateway/stream_params.hpp"
#include "model/text.hpp"
#include "search/terms.hpp"

using namespace engram;
using fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool sse = data[0] & 1;
  const auto text = fuzz::as_text(data + 1, size - 1);
  const auto nl = text.find('\n');
  gateway::request req;
  req.method = "GET";
  req.target = std::string(text.substr(0, nl));
  if (nl != std::string_view::npos) req.set_header("last-event-id", std::string(text.substr(nl + 1)));

  if (auto sub = gateway::parse_stream_query(req, sse)) {
    check(!sub->contexts.empty() || !sub->prefixes.empty(), "a stream names contexts");
    check(sub->contexts.size() + sub->prefixes.size() <= gateway::max_stream_contexts, "at most 100 contexts");
    for (const auto& c : sub->contexts)
      check(!model::check_identifier("context", c, model::max_id_bytes), "exact contexts are identifiers");
    // A resume token the server issues for these cursors reads back as the same cursors.
    if (sse && !sub->since_by_context.empty()) {
      gateway::request again = req;
      again.set_header("last-event-id", gateway::resume_token(sub->since_by_context));
      auto resumed = gateway::parse_stream_query(again, true);
      check(resumed && resumed->since_by_context == sub->since_by_context, "resume tokens round-trip");
    }
  } else {
    fuzz::check_json(model::dump(model::json{{"error", sub.error().message}}), "a stream refusal renders valid JSON");
  }

  if (auto url = boost::urls::parse_origin_form(req.target)) {
    std::vector<std::pair<std::string, std::string>> params;
    for (auto p : url->params()) params.emplace_back(p.key, p.has_value ? p.value : std::string());
    if (auto search = gateway::parse_search_params(params)) {
      check(model::valid_utf8(search->query.text), "query text is UTF-8");
      (void)search::filter_query(search->query);
    } else {
      fuzz::check_json(model::dump(model::json{{"error", search.error().message}}),
                       "a search refusal renders valid JSON");
    }
  }
  return 0;
}
