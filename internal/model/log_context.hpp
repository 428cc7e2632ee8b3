#pragma once
// Fields attached to every log line a thread writes while a log_scope lives (the
// request id of the request being handled, the fields of an access-log line). The
// logger's formatter (app::setup_logging) appends them as JSON members or as
// key=value pairs. Scopes nest; inner fields come after outer ones, unless the inner
// scope is complete by itself (it hides the outer fields, so none is written twice).

#include <initializer_list>
#include <span>
#include <string_view>
#include <type_traits>

namespace engram::model {

// Views, not copies: a scope's fields and the strings they name belong to its
// creator and must outlive the scope (copying them cost an access-log line eight
// allocations; bench/README.md).
struct log_field {
  std::string_view key;  // a literal: lives as long as the program
  std::string_view value;
  bool quoted = true;    // false: a number, written bare in JSON
};

class log_scope {
 public:
  enum class outer_fields { inherit, hide };
  explicit log_scope(std::span<const log_field> fields, outer_fields outer = outer_fields::inherit)
      : fields_(fields), outer_(top()), inherit_(outer == outer_fields::inherit) {
    top() = this;
  }
  // Fields in a temporary (a braced list, a vector) would dangle at once.
  template <class R>
    requires(!std::is_lvalue_reference_v<R> && !std::is_same_v<std::remove_cvref_t<R>, std::span<const log_field>>)
  explicit log_scope(R&&, outer_fields = outer_fields::inherit) = delete;
  log_scope(std::initializer_list<log_field>, outer_fields = outer_fields::inherit) = delete;
  ~log_scope() { top() = outer_; }
  log_scope(const log_scope&) = delete;
  log_scope& operator=(const log_scope&) = delete;

  // Calls f(field) for every field in scope on this thread, outermost first.
  template <class F>
  static void for_each(F&& f) {
    visit(top(), f);
  }

 private:
  template <class F>
  static void visit(const log_scope* s, F& f) {
    if (!s) return;
    if (s->inherit_) visit(s->outer_, f);
    for (const auto& field : s->fields_) f(field);
  }
  static const log_scope*& top() {
    thread_local const log_scope* current = nullptr;
    return current;
  }
  std::span<const log_field> fields_;
  const log_scope* outer_;
  bool inherit_;
};

}  // namespace engram::model
