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
#define TROUPE_CHECK(cond) \
  if (cond) {              \
  } else                   \
    ::troupe::detail::check_failure(__FILE__, __LINE__, #cond)

#define TROUPE_CHECK_OP(a, b, op)                                                          \
  if (auto&& troupe_a_ = (a); auto&& troupe_b_ = (b); troupe_a_ op troupe_b_) {            \
  } else                                                                                   \
    ::troupe::detail::check_failure(__FILE__, __LINE__,                                    \
                                    std::string(#a " " #op " " #b " (") +                  \
                                        ::troupe::detail::to_str(troupe_a_) + " vs " +     \
                                        ::troupe::detail::to_str(troupe_b_) + ")")

#define TROUPE_CHECK_EQ(a, b) TROUPE_CHECK_OP(a, b, ==)
#define TROUPE_CHECK_NE(a, b) TROUPE_CHECK_OP(a, b, !=)
#define TROUPE_CHECK_LT(a, b) TROUPE_CHECK_OP(a, b, <)
#define TROUPE_CHECK_LE(a, b) TROUPE_CHECK_OP(a, b, <=)
#define TROUPE_CHECK_GT(a, b) TROUPE_CHECK_OP(a, b, >)
#define TROUPE_CHECK_GE(a, b) TROUPE_CHECK_OP(a, b, >=)

namespace troupe::detail {
template <typename T>
std::string to_str(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
}  // namespace troupe::detail
