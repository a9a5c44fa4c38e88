#include "core/chat_template/parser.h"

#include <algorithm>
#include <initializer_list>
#include <set>

#include "core/chat_template/template_error.h"

namespace troupe::jinja {

namespace {

class parser {
 public:
  parser(const std::vector<token>& tokens, int max_depth) : t_(tokens), max_depth_(max_depth) {}

  program run() {
    program prog;
    while (cur_ < t_.size()) prog.push_back(parse_any());
    return prog;
  }

 private:
  const std::vector<token>& t_;
  size_t cur_ = 0;
  int depth_ = 0;
  int max_depth_;

  struct depth_guard {
    parser& p;
    explicit depth_guard(parser& pp) : p(pp) {
      if (++p.depth_ > p.max_depth_)
        p.fail("template nested too deeply (limit " + std::to_string(p.max_depth_) + ")");
    }
    ~depth_guard() { --p.depth_; }
  };

  int line() const {
    if (t_.empty()) return 1;
    return t_[std::min(cur_, t_.size() - 1)].line;
  }
  [[noreturn]] void fail(const std::string& msg) const { throw_template_error(line(), msg); }

  const token& peek() const {
    if (cur_ >= t_.size()) fail("Unexpected end of template");
    return t_[cur_];
  }
  bool is(token_type type, size_t ahead = 0) const {
    return cur_ + ahead < t_.size() && t_[cur_ + ahead].type == type;
  }
  bool is_identifier(const char* name, size_t ahead = 0) const {
    return is(token_type::identifier, ahead) && t_[cur_ + ahead].value == name;
  }
  bool is_statement(std::initializer_list<const char*> names) const {
    if (!is(token_type::open_statement) || !is(token_type::identifier, 1)) return false;
    const std::string& v = t_[cur_ + 1].value;
    return std::any_of(names.begin(), names.end(), [&](const char* n) { return v == n; });
  }
  const token& expect(token_type type, const std::string& msg) {
    const token& tok = peek();
    if (tok.type != type)
      fail("Parser Error: " + msg + ". " + token_type_name(tok.type) + " !== " + token_type_name(type) + ".");
    ++cur_;
    return tok;
  }
  void expect_identifier(const char* name) {
    if (!is_identifier(name)) fail(std::string("Expected ") + name);
    ++cur_;
  }
  node_ptr make(node_kind k, int at_line) {
    auto n = std::make_unique<node>();
    n->kind = k;
    n->line = at_line;
    return n;
  }

  // Statements until one of `names` opens a tag. Running out of tokens first is an error naming the
  // line where the unclosed block began.
  std::vector<node_ptr> parse_until(std::initializer_list<const char*> names, const char* block,
                                    int open_line) {
    std::vector<node_ptr> out;
    while (!is_statement(names)) {
      if (cur_ >= t_.size()) {
        throw_template_error(open_line, std::string("{% ") + block + " %} is never closed (expected {% end" +
                                            block + " %} before the end of the template)");
      }
      out.push_back(parse_any());
    }
    return out;
  }
  void expect_end(const char* name) {
    expect(token_type::open_statement, "Expected {% token");
    expect_identifier(name);
    expect(token_type::close_statement, "Expected %} token");
  }

  node_ptr parse_any() {
    depth_guard guard(*this);
    const token& tok = peek();
    switch (tok.type) {
      case token_type::comment: {
        auto n = make(node_kind::comment, tok.line);
        ++cur_;
        return n;
      }
      case token_type::text: {
        auto n = make(node_kind::string_lit, tok.line);
        n->name = tok.value;
        ++cur_;
        return n;
      }
      case token_type::open_statement:
        return parse_statement();
      case token_type::open_expression: {
        ++cur_;
        auto e = parse_expression();
        expect(token_type::close_expression, "Expected closing expression token");
        return e;
      }
      default:
        fail(std::string("Unexpected token type: ") + token_type_name(tok.type));
    }
  }

  node_ptr parse_statement() {
    expect(token_type::open_statement, "Expected opening statement token");
    const token& tok = peek();
    if (tok.type != token_type::identifier)
      fail(std::string("Unknown statement, got ") + token_type_name(tok.type));
    const std::string name = tok.value;
    int at = tok.line;
    ++cur_;
    if (name == "set") return parse_set(at);
    if (name == "if") {
      auto n = parse_if(at);
      expect_end("endif");
      return n;
    }
    if (name == "macro") {
      auto n = make(node_kind::macro, at);
      auto id = parse_primary();
      if (id->kind != node_kind::identifier) fail("Expected identifier following macro statement");
      n->name = id->name;
      n->list = parse_args(true);
      expect(token_type::close_statement, "Expected closing statement token");
      n->body = parse_until({"endmacro"}, "macro", at);
      expect_end("endmacro");
      return n;
    }
    if (name == "for") {
      auto n = parse_for(at);
      expect_end("endfor");
      return n;
    }
    if (name == "call") {
      auto n = make(node_kind::call_block, at);
      if (is(token_type::open_paren)) n->list = parse_args(true);
      auto callee = parse_primary();
      if (callee->kind != node_kind::identifier) fail("Expected identifier following call statement");
      auto call = make(node_kind::call, at);
      call->a = std::move(callee);
      call->list = parse_args(false);
      n->a = std::move(call);
      expect(token_type::close_statement, "Expected closing statement token");
      n->body = parse_until({"endcall"}, "call", at);
      expect_end("endcall");
      return n;
    }
    if (name == "break" || name == "continue") {
      expect(token_type::close_statement, "Expected closing statement token");
      return make(name == "break" ? node_kind::break_stmt : node_kind::continue_stmt, at);
    }
    if (name == "filter") {
      auto n = make(node_kind::filter_block, at);
      auto f = parse_primary();
      if (f->kind == node_kind::identifier && is(token_type::open_paren)) f = parse_call(std::move(f));
      n->a = std::move(f);
      expect(token_type::close_statement, "Expected closing statement token");
      n->body = parse_until({"endfilter"}, "filter", at);
      expect_end("endfilter");
      return n;
    }
    fail("Unknown statement type: " + name);
  }

  node_ptr parse_set(int at) {
    auto n = make(node_kind::set, at);
    n->a = parse_expression_sequence(false);
    if (is(token_type::equals)) {
      ++cur_;
      n->b = parse_expression_sequence(false);
    } else {
      expect(token_type::close_statement, "Expected %} token");
      n->body = parse_until({"endset"}, "set", at);
      expect(token_type::open_statement, "Expected {% token");
      expect_identifier("endset");
    }
    expect(token_type::close_statement, "Expected closing statement token");
    return n;
  }

  node_ptr parse_if(int at) {
    auto n = make(node_kind::if_stmt, at);
    n->a = parse_expression();
    expect(token_type::close_statement, "Expected closing statement token");
    n->body = parse_until({"elif", "else", "endif"}, "if", at);
    if (is_statement({"elif"})) {
      int elif_line = t_[cur_ + 1].line;
      cur_ += 2;
      n->alt.push_back(parse_if(elif_line));
    } else if (is_statement({"else"})) {
      cur_ += 2;
      expect(token_type::close_statement, "Expected closing statement token");
      n->alt = parse_until({"endif"}, "if", at);
    }
    return n;
  }

  node_ptr parse_for(int at) {
    auto n = make(node_kind::for_stmt, at);
    n->a = parse_expression_sequence(true);
    if (n->a->kind != node_kind::identifier && n->a->kind != node_kind::tuple_lit) {
      fail("Expected identifier/tuple for the loop variable");
    }
    if (!is_identifier("in")) fail("Expected `in` keyword following loop variable");
    ++cur_;
    n->b = parse_expression();
    expect(token_type::close_statement, "Expected closing statement token");
    n->body = parse_until({"endfor", "else"}, "for", at);
    if (is_statement({"else"})) {
      cur_ += 2;
      expect(token_type::close_statement, "Expected closing statement token");
      n->alt = parse_until({"endfor"}, "for", at);
    }
    return n;
  }

  node_ptr parse_expression_sequence(bool primary) {
    int at = line();
    auto first = primary ? parse_primary() : parse_expression();
    if (!is(token_type::comma)) return first;
    auto tuple = make(node_kind::tuple_lit, at);
    tuple->list.push_back(std::move(first));
    while (true) {
      ++cur_;  // comma
      tuple->list.push_back(primary ? parse_primary() : parse_expression());
      if (!is(token_type::comma)) break;
    }
    return tuple;
  }

  node_ptr parse_expression() {
    depth_guard guard(*this);
    return parse_if_expression();
  }

  node_ptr parse_if_expression() {
    auto a = parse_or();
    if (!is_identifier("if")) return a;
    int at = line();
    ++cur_;
    auto test = parse_or();
    if (is_identifier("else")) {
      ++cur_;
      auto n = make(node_kind::ternary, at);
      n->a = std::move(test);
      n->b = std::move(a);
      n->c = parse_if_expression();
      return n;
    }
    auto n = make(node_kind::select, at);
    n->a = std::move(a);
    n->b = std::move(test);
    return n;
  }

  node_ptr binary(std::string op, node_ptr l, node_ptr r, int at) {
    auto n = make(node_kind::binary, at);
    n->name = std::move(op);
    n->a = std::move(l);
    n->b = std::move(r);
    return n;
  }

  node_ptr parse_or() {
    auto left = parse_and();
    while (is_identifier("or")) {
      int at = line();
      ++cur_;
      left = binary("or", std::move(left), parse_and(), at);
    }
    return left;
  }

  node_ptr parse_and() {
    auto left = parse_not();
    while (is_identifier("and")) {
      int at = line();
      ++cur_;
      left = binary("and", std::move(left), parse_not(), at);
    }
    return left;
  }

  node_ptr parse_not() {
    if (!is_identifier("not")) return parse_comparison();
    depth_guard guard(*this);
    auto n = make(node_kind::unary, line());
    n->name = "not";
    ++cur_;
    n->a = parse_not();
    return n;
  }

  node_ptr parse_comparison() {
    auto left = parse_additive();
    while (true) {
      int at = line();
      std::string op;
      if (is_identifier("not") && is_identifier("in", 1)) {
        op = "not in";
        cur_ += 2;
      } else if (is_identifier("in")) {
        op = "in";
        ++cur_;
      } else if (is(token_type::comparison)) {
        op = t_[cur_++].value;
      } else {
        break;
      }
      left = binary(op, std::move(left), parse_additive(), at);
    }
    return left;
  }

  node_ptr parse_additive() {
    auto left = parse_multiplicative();
    while (is(token_type::additive)) {
      int at = line();
      std::string op = t_[cur_++].value;
      left = binary(op, std::move(left), parse_multiplicative(), at);
    }
    return left;
  }

  node_ptr parse_multiplicative() {
    auto left = parse_power();
    while (is(token_type::multiplicative)) {
      int at = line();
      std::string op = t_[cur_++].value;
      left = binary(op, std::move(left), parse_power(), at);
    }
    return left;
  }

  node_ptr parse_power() {
    auto left = parse_test();
    while (is(token_type::power)) {
      int at = line();
      ++cur_;
      left = binary("**", std::move(left), parse_test(), at);
    }
    return left;
  }

  node_ptr parse_test() {
    auto operand = parse_filter();
    while (is_identifier("is")) {
      auto n = make(node_kind::test, line());
      ++cur_;
      if (is_identifier("not")) {
        n->flag = true;
        ++cur_;
      }
      auto test = parse_primary();
      if (test->kind != node_kind::identifier) fail("Expected identifier for the test");
      n->name = test->name;
      n->a = std::move(operand);
      operand = std::move(n);
    }
    return operand;
  }

  node_ptr parse_filter() {
    auto operand = parse_unary_sign();
    while (is(token_type::pipe)) {
      auto n = make(node_kind::filter, line());
      ++cur_;
      auto f = parse_primary();
      if (f->kind != node_kind::identifier) fail("Expected identifier for the filter");
      if (is(token_type::open_paren)) f = parse_call(std::move(f));
      n->a = std::move(operand);
      n->b = std::move(f);
      operand = std::move(n);
    }
    return operand;
  }

  node_ptr parse_unary_sign() {
    if ((is(token_type::unary) || is(token_type::additive)) &&
        (t_[cur_].value == "-" || t_[cur_].value == "+")) {
      depth_guard guard(*this);
      auto n = make(node_kind::unary, line());
      n->name = t_[cur_++].value;
      n->a = parse_unary_sign();
      return n;
    }
    auto member = parse_member(parse_primary());
    if (is(token_type::open_paren)) return parse_call(std::move(member));
    return member;
  }

  node_ptr parse_call(node_ptr callee) {
    depth_guard guard(*this);
    auto n = make(node_kind::call, line());
    n->a = std::move(callee);
    n->list = parse_args(false);
    node_ptr expr = parse_member(std::move(n));
    if (is(token_type::open_paren)) expr = parse_call(std::move(expr));
    return expr;
  }

  std::vector<node_ptr> parse_args(bool parameters) {
    expect(token_type::open_paren, "Expected opening parenthesis for arguments list");
    std::vector<node_ptr> args;
    std::set<std::string> names;
    bool saw_keyword = false, saw_spread = false;
    while (!is(token_type::close_paren)) {
      if (cur_ >= t_.size()) fail("Unexpected end of template in an argument list");
      bool kw_spread = is(token_type::power);
      bool pos_spread = is(token_type::multiplicative) && t_[cur_].value == "*";
      if (parameters && (kw_spread || pos_spread))
        fail("Argument unpacking is not allowed in parameter declarations");
      if (kw_spread) {
        auto n = make(node_kind::kwspread, line());
        ++cur_;
        n->a = parse_expression();
        args.push_back(std::move(n));
        if (is(token_type::comma)) ++cur_;
        if (!is(token_type::close_paren))
          fail("Expected closing parenthesis: `**` must be applied to the final argument");
        break;
      }
      node_ptr arg;
      if (pos_spread) {
        if (saw_spread) fail("Only one `*` argument unpacking is allowed");
        saw_spread = true;
        arg = make(node_kind::spread, line());
        ++cur_;
        arg->a = parse_expression();
      } else {
        arg = parse_expression();
        if (is(token_type::equals)) {
          ++cur_;
          if (arg->kind != node_kind::identifier) {
            fail(parameters ? "Expected identifier for parameter declaration"
                            : "Expected identifier for keyword argument");
          }
          auto kw = make(node_kind::kwarg, arg->line);
          kw->name = arg->name;
          kw->a = parse_expression();
          arg = std::move(kw);
        }
        if (parameters) {
          if (arg->kind != node_kind::identifier && arg->kind != node_kind::kwarg) {
            fail("Expected identifier for parameter declaration");
          }
          if (!names.insert(arg->name).second) fail("Duplicate parameter name: " + arg->name);
        }
        if (arg->kind == node_kind::kwarg) {
          saw_keyword = true;
        } else if (saw_keyword) {
          fail(parameters ? "Non-default argument follows default argument"
                          : "Positional arguments must come before keyword arguments");
        } else if (saw_spread) {
          fail("Positional arguments must not follow `*` argument unpacking");
        }
      }
      args.push_back(std::move(arg));
      if (is(token_type::comma)) ++cur_;
    }
    expect(token_type::close_paren, "Expected closing parenthesis for arguments list");
    return args;
  }

  node_ptr parse_subscript() {
    int at = line();
    std::vector<node_ptr> parts;
    bool is_slice = false;
    while (!is(token_type::close_square)) {
      if (cur_ >= t_.size()) fail("Unexpected end of template in a subscript");
      if (is(token_type::colon)) {
        parts.push_back(nullptr);
        ++cur_;
        is_slice = true;
      } else {
        parts.push_back(parse_expression());
        if (is(token_type::colon)) {
          ++cur_;
          is_slice = true;
        }
      }
    }
    if (parts.empty()) fail("Expected at least one argument for member/slice expression");
    if (!is_slice) return std::move(parts[0]);
    if (parts.size() > 3) fail("Expected 0-3 arguments for slice expression");
    auto n = make(node_kind::slice, at);
    n->a = std::move(parts[0]);
    if (parts.size() > 1) n->b = std::move(parts[1]);
    if (parts.size() > 2) n->c = std::move(parts[2]);
    return n;
  }

  node_ptr parse_member(node_ptr object) {
    while (is(token_type::dot) || is(token_type::open_square)) {
      auto n = make(node_kind::member, line());
      bool computed = is(token_type::open_square);
      ++cur_;
      if (computed) {
        n->b = parse_subscript();
        expect(token_type::close_square, "Expected closing square bracket");
      } else {
        n->b = parse_primary();
        if (n->b->kind != node_kind::identifier && n->b->kind != node_kind::int_lit) {
          fail("Expected identifier or integer following dot operator");
        }
      }
      n->flag = computed;
      n->a = std::move(object);
      object = std::move(n);
    }
    return object;
  }

  node_ptr parse_primary() {
    depth_guard guard(*this);
    const token& tok = peek();
    ++cur_;
    switch (tok.type) {
      case token_type::number: {
        bool is_float = tok.value.find('.') != std::string::npos;
        auto n = make(is_float ? node_kind::float_lit : node_kind::int_lit, tok.line);
        n->number = std::stod(tok.value);
        return n;
      }
      case token_type::string: {
        auto n = make(node_kind::string_lit, tok.line);
        n->name = tok.value;
        while (is(token_type::string)) n->name += t_[cur_++].value;  // 'a' 'b' concatenates
        return n;
      }
      case token_type::identifier: {
        auto n = make(node_kind::identifier, tok.line);
        n->name = tok.value;
        return n;
      }
      case token_type::open_paren: {
        auto e = parse_expression_sequence(false);
        expect(token_type::close_paren, "Expected closing parenthesis");
        return e;
      }
      case token_type::open_square: {
        auto n = make(node_kind::array_lit, tok.line);
        while (!is(token_type::close_square)) {
          if (cur_ >= t_.size()) fail("Unexpected end of template in an array literal");
          n->list.push_back(parse_expression());
          if (is(token_type::comma)) ++cur_;
        }
        ++cur_;
        return n;
      }
      case token_type::open_curly: {
        auto n = make(node_kind::object_lit, tok.line);
        while (!is(token_type::close_curly)) {
          if (cur_ >= t_.size()) fail("Unexpected end of template in an object literal");
          n->list.push_back(parse_expression());
          expect(token_type::colon, "Expected colon between key and value in object literal");
          n->list.push_back(parse_expression());
          if (is(token_type::comma)) ++cur_;
        }
        ++cur_;
        return n;
      }
      default:
        --cur_;
        fail(std::string("Unexpected token: ") + token_type_name(tok.type));
    }
  }
};

}  // namespace

program parse(const std::vector<token>& tokens, int max_depth) { return parser(tokens, max_depth).run(); }

}  // namespace troupe::jinja
