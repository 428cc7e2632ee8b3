// Authentication input: the Authorization and Cookie headers (with Origin and Host,
// which decide whether a cookie counts) through the authenticator and the HS256
// verifier (libjwt), and the `contexts` claim's grant parser.
// Input lines: Authorization, Cookie, Origin, Host; the whole input is also tried
// as a `contexts` claim.

#include <nlohmann/json.hpp>

#include "fuzz_check.hpp"
#include "gateway/access.hpp"

using namespace engram;
using fuzz::check;

namespace {

const gateway::authenticator& authenticator() {
  static const auto authn = [] {
    auth::options o;
    o.enabled = true;
    o.secret = "fuzz-secret-0123456789abcdef0123456789";  // tests/fuzz/corpus/token seeds are signed with it
    auto a = gateway::authenticator::create(o);
    check(a.has_value(), "the fuzz verifier is created");
    return std::move(*a);
  }();
  return authn;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto text = fuzz::as_text(data, size);
  gateway::request req;
  req.method = "GET";
  req.target = "/stream-sse?context=c";
  for (const char* name : {"authorization", "cookie", "origin", "host"}) {
    const auto nl = text.find('\n');
    if (!text.empty()) req.set_header(name, std::string(text.substr(0, nl)));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
  }
  for (bool cookie_ok : {false, true}) {
    auto who = authenticator().authenticate(req, cookie_ok);
    if (!who) {
      check(who.error().code == model::errc::unauthenticated, "a refused token is a 401");
      continue;
    }
    check(who->principal && !who->principal->agent.empty(), "an accepted token names its agent");
  }

  if (auto claim = model::parse_json(fuzz::as_text(data, size))) {
    if (auto grants = auth::parse_grants(*claim)) {
      auth::principal p{"agent", *grants};
      for (const auto& g : *grants) {
        // An empty capability list is accepted and grants nothing.
        check(!g.pattern.empty() && (g.caps & ~auth::all_capabilities) == 0, "grants are well-formed");
        if (g.caps & auth::read) check(p.can(auth::read, g.pattern.ends_with('*') ? g.pattern.substr(0, g.pattern.size() - 1) + "x" : g.pattern),
                                       "a granted pattern grants");
      }
    }
  }
  return 0;
}
