#pragma once
// The names of the wire enums (DESIGN.md §2, api/engram.proto), shared by the server's
// codec and the SDK so the two cannot disagree on what a number means. Index = value.
// The wire carries the number; names are accepted on input.

#include <array>
#include <optional>
#include <span>
#include <string_view>

namespace engram::wire {

// WorkUnitType: "WORK_UNIT_TYPE_" + name in engram.proto.
inline constexpr std::array<std::string_view, 10> unit_type_names = {
    "UNKNOWN",     "MESSAGE",     "REASONING", "TOOL_CALL", "TOOL_RESULT",
    "FILE_CHANGE", "TASK_STATUS", "ERROR",     "SYSTEM",    "SUMMARY"};
inline constexpr std::string_view unit_type_prefix = "WORK_UNIT_TYPE_";

// RelationshipType: "RELATIONSHIP_TYPE_" + name in engram.proto.
inline constexpr std::array<std::string_view, 8> relationship_type_names = {
    "UNSPECIFIED", "SEQUENTIAL",  "CAUSES",   "DEPENDS_ON",
    "REFERENCES",  "RESPONDS_TO", "MODIFIES", "REPLACES"};
inline constexpr std::string_view relationship_type_prefix = "RELATIONSHIP_TYPE_";

// The value named `name` in any case ("message", "TOOL_CALL"). With a `prefix`, the
// protobuf spelling ("WORK_UNIT_TYPE_MESSAGE") is accepted too. nullopt when unknown.
std::optional<int> enum_from_name(std::span<const std::string_view> names, std::string_view name,
                                  std::string_view prefix = {});

// The name of `value`; empty when it is outside the table (a newer peer's value).
std::string_view enum_name(std::span<const std::string_view> names, int value);

}  // namespace engram::wire
