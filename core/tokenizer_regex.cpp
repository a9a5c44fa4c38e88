#include "core/tokenizer_regex.h"

#include <pcre2.h>

#include "core/error.h"

namespace troupe::tokenizer_detail {

struct regex::code {
  pcre2_code* re = nullptr;
  bool jit = false;
  ~code() { pcre2_code_free(re); }
};

namespace {

// Per-thread scratch: match data and a JIT stack big enough for long whitespace or letter runs
// (the default 32 KiB overflows on patterns like \s+(?!\S) over a few thousand characters).
struct thread_scratch {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  thread_scratch() { pcre2_jit_stack_assign(context, nullptr, stack); }
  ~thread_scratch() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(data);
  }
};

thread_scratch& scratch() {
  thread_local thread_scratch s;
  return s;
}

}  // namespace

regex::regex(const std::string& pattern, const std::string& what) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  auto c = std::make_shared<code>();
  c->re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                        &err, &err_offset, nullptr);
  if (c->re == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    throw error(what + ": bad regex at offset " + std::to_string(err_offset) + ": " +
                reinterpret_cast<const char*>(msg));
  }
  c->jit = pcre2_jit_compile(c->re, PCRE2_JIT_COMPLETE) == 0;
  code_ = std::move(c);
}

std::vector<std::pair<size_t, size_t>> regex::find_all(std::string_view subject) const {
  std::vector<std::pair<size_t, size_t>> out;
  thread_scratch& s = scratch();
  auto* subj = reinterpret_cast<PCRE2_SPTR>(subject.data());
  size_t pos = 0;
  while (pos <= subject.size()) {
    int rc = pcre2_match(code_->re, subj, subject.size(), pos, PCRE2_NO_UTF_CHECK, s.data, s.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      throw error(std::string("tokenizer regex match failed: ") + reinterpret_cast<const char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.data);
    size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(b, e);
      pos = e;
    } else {
      // An empty match: step over one whole character so the next search starts on a boundary.
      if (b >= subject.size()) break;
      pos = b + 1;
      while (pos < subject.size() && (static_cast<unsigned char>(subject[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  return out;
}

std::string regex::escape(std::string_view literal) {
  std::string out = "\\Q";
  for (size_t i = 0; i < literal.size(); ++i) {
    // \E inside \Q...\E would end the quote early: split it.
    if (literal.compare(i, 2, "\\E") == 0) {
      out += "\\E\\\\E\\Q";
      ++i;
    } else {
      out += literal[i];
    }
  }
  out += "\\E";
  return out;
}

}  // namespace troupe::tokenizer_detail
