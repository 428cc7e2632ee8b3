#include "gateway/response_bytes.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/status.hpp>

#include <algorithm>
#include <charconv>

namespace engram::gateway {
namespace {

namespace http = boost::beast::http;

bool is_token(std::string_view name) {
  static constexpr std::string_view specials = "!#$%&'*+-.^_`|~";
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') ||
           specials.find(c) != std::string_view::npos;
  });
}

// Fields the server writes itself: framing, and what every answer carries.
bool server_owned(std::string_view name) {
  for (std::string_view own : {"Content-Length", "Transfer-Encoding", "Connection", "X-Content-Type-Options"})
    if (boost::beast::iequals(name, own)) return true;
  return false;
}

void field(std::string& out, std::string_view name, std::string_view value) {
  out.append(name).append(": ");
  const size_t start = out.size();
  out.append(value);
  for (size_t i = start; i < out.size(); ++i) {
    const auto u = static_cast<unsigned char>(out[i]);
    if ((u < 0x20 && u != '\t') || u == 0x7f) out[i] = ' ';
  }
  out.append("\r\n");
}

}  // namespace

response_bytes serialize(response r, unsigned version, bool keep_alive) {
  response_bytes out;
  std::string& h = out.head;
  h.reserve(192 + r.content_type.size() + 64 * r.headers.size());
  h.append("HTTP/").push_back(char('0' + version / 10 % 10));
  h.push_back('.');
  h.push_back(char('0' + version % 10));
  h.push_back(' ');
  char num[24];
  h.append(num, std::to_chars(num, num + sizeof num, r.status).ptr);
  h.push_back(' ');
  h.append(http::obsolete_reason(static_cast<http::status>(r.status)));
  h.append("\r\nServer: engram\r\n");
  if (!r.content_type.empty()) field(h, "Content-Type", r.content_type);
  bool has_cache_control = false;
  for (const auto& [name, value] : r.headers) {
    if (!is_token(name) || server_owned(name)) continue;
    has_cache_control = has_cache_control || boost::beast::iequals(name, "Cache-Control");
    field(h, name, value);
  }
  h.append("X-Content-Type-Options: nosniff\r\n");
  // Answers are private data (or errors about it): never stored by a cache.
  if (!has_cache_control) h.append("Cache-Control: no-store\r\n");
  const bool bodiless = r.status / 100 == 1 || r.status == 204 || r.status == 304;
  if (!bodiless) {
    h.append("Content-Length: ");
    h.append(num, std::to_chars(num, num + sizeof num, r.body.size()).ptr);
    h.append("\r\n");
    out.body = std::move(r.body);
  }
  // HTTP/1.1 stays open unless told; HTTP/1.0 closes unless told.
  if (version >= 11 && !keep_alive) h.append("Connection: close\r\n");
  if (version < 11 && keep_alive) h.append("Connection: keep-alive\r\n");
  h.append("\r\n");
  return out;
}

}  // namespace engram::gateway
