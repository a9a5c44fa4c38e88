// troupe's one exception type: every user-facing failure (bad checkpoint, bad config, bad request) is
// a troupe::error whose what() is a single line naming the file/tensor/field at fault.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace troupe {

class error : public std::runtime_error {
 public:
  explicit error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
// Collects a message with operator<< and throws on destruction of the full expression.
class error_builder {
 public:
  template <typename T>
  error_builder& operator<<(const T& v) {
    os_ << v;
    return *this;
  }
  [[noreturn]] void raise() const { throw troupe::error(os_.str()); }
  std::string str() const { return os_.str(); }

 private:
  std::ostringstream os_;
};

template <typename T>
std::string to_str(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Empty when the comparison holds; otherwise "expr (a vs b)".
template <typename F, typename A, typename B>
std::string check_op(F cmp, const A& a, const B& b, const char* expr) {
  if (cmp(a, b)) return std::string();
  return std::string(expr) + " (" + to_str(a) + " vs " + to_str(b) + ")";
}

// Aborts via exception after the streamed context has been appended (used by TROUPE_CHECK*).
class check_failure {
 public:
  check_failure(const char* file, int line, const std::string& what) {
    os_ << file << ":" << line << ": check failed: " << what;
  }
  template <typename T>
  check_failure& operator<<(const T& v) {
    os_ << " " << v;
    return *this;
  }
  ~check_failure() noexcept(false) { throw troupe::error(os_.str()); }

 private:
  std::ostringstream os_;
};
}  // namespace detail

}  // namespace troupe

// Always-on invariant checks that print both sides; extra context with <<.
// Written as loops, not if/else, so that a check used as the body of an unbraced `if` cannot capture its
// `else`; the failure object throws at the end of the full expression, so the loop never repeats.
#define TROUPE_CHECK(cond) \
  while (!(cond)) ::troupe::detail::check_failure(__FILE__, __LINE__, #cond)

#define TROUPE_CHECK_OP(a, b, op)                                                                  \
  for (std::string troupe_msg_ = ::troupe::detail::check_op(                                       \
           [](const auto& x, const auto& y) { return x op y; }, (a), (b), #a " " #op " " #b); \
       !troupe_msg_.empty();)                                                                      \
  ::troupe::detail::check_failure(__FILE__, __LINE__, troupe_msg_)

#define TROUPE_CHECK_EQ(a, b) TROUPE_CHECK_OP(a, b, ==)
#define TROUPE_CHECK_NE(a, b) TROUPE_CHECK_OP(a, b, !=)
#define TROUPE_CHECK_LT(a, b) TROUPE_CHECK_OP(a, b, <)
#define TROUPE_CHECK_LE(a, b) TROUPE_CHECK_OP(a, b, <=)
#define TROUPE_CHECK_GT(a, b) TROUPE_CHECK_OP(a, b, >)
#define TROUPE_CHECK_GE(a, b) TROUPE_CHECK_OP(a, b, >=)
