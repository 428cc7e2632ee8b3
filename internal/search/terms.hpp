#pragma once
// How a work unit becomes a Xapian document, and how filters become boolean
// queries over the same terms. One place defines the term layout (README.md):
//
//   Q<unit id>                 unique id (re-indexing replaces, never duplicates)
//   XC<context id>             context
//   XA<agent id>               agent
//   XT<type>                   work unit type, decimal
//   XM<key>\0<value>           metadata key=value
//   XR<type>:<target id>       relationship of a type to a target
//   XRT<target id>             relationship of any type to a target
//   value slot 0               ts_ns, 8 bytes big-endian (sorts as bytes = by time)
//   value slot 1               seq, 8 bytes big-endian
//   data                       WorkUnit{id, context_id, seq, ts_ns} (protobuf)
//
// Free text comes from the payload (when it is UTF-8 without NULs) and metadata
// values, through Xapian's TermGenerator with positions (phrases work).

#include <xapian.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "engram.pb.h"
#include "model/error.hpp"
#include "search/query.hpp"

namespace engram::search {

inline constexpr Xapian::valueno ts_slot = 0;
inline constexpr Xapian::valueno seq_slot = 1;
// The document's head (see document_head). A value, not the document data: glass
// zlib-compresses every document's data, which cost ~7% of the indexer's time for
// ~80 bytes that do not compress; values are stored as they are. Documents indexed
// before hold the head in their data.
inline constexpr Xapian::valueno head_slot = 2;

// Xapian refuses terms longer than 245 bytes. A boolean term that would be longer
// keeps its first bytes and ends in '#' + a 64-bit hash of the whole value, so
// equality still works; prefix patterns work on the kept bytes.
inline constexpr size_t max_term_bytes = 240;
inline constexpr size_t max_context_prefix_bytes = max_term_bytes - 2 - 17;
std::string bool_term(std::string_view prefix, std::string_view value);

std::string unique_term(std::string_view unit_id);
std::string context_term(std::string_view context_id);
std::string sortable_u64(uint64_t v);
uint64_t read_sortable_u64(std::string_view bytes);  // 0 when not 8 bytes

// The payload as text: nullopt when it is empty, not UTF-8 or contains NUL bytes.
// Long text is cut to `max_bytes` at a character boundary.
std::optional<std::string_view> payload_text(const api::WorkUnit& unit, size_t max_bytes);
// The longest prefix of UTF-8 `text` of at most `max_bytes` that ends on a
// character boundary.
std::string_view cut_utf8(std::string_view text, size_t max_bytes);

// `generator` carries the stemmer and flags; it is reset to the new document.
Xapian::Document make_document(const api::WorkUnit& unit, Xapian::TermGenerator& generator,
                               size_t max_text_bytes);

// The document's stored head: id, context_id, seq, ts_ns, agent_id and type.
api::WorkUnit document_head(const Xapian::Document& doc);

// All filters of `q` ANDed; nullopt when it has none. Fails only for a context
// prefix pattern too long to index.
model::result<std::optional<Xapian::Query>> filter_query(const query& q);

// Undoes the HTML escaping of MSet::snippet (&lt; &gt; &amp; &quot; &#39;), once.
std::string unescape_html(std::string_view html);

}  // namespace engram::search
