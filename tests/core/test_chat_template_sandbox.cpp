// Chat-template sandbox limits and error reporting: every failure is a troupe::error naming the line of
// the template at fault, and hostile templates hit a limit instead of exhausting the server.
#include <gtest/gtest.h>

#include <string>

#include "core/chat_template/chat_template.h"

namespace {

std::string render(const std::string& source, const troupe::jinja::render_limits& limits = {},
                   const std::string& context_json = "{}") {
  troupe::chat_template_render_options options;
  options.limits = limits;
  options.now = 0;
  return troupe::chat_template::parse(source).render(nlohmann::ordered_json::parse(context_json), options);
}

// The message of the troupe::error that rendering (or parsing) `source` throws, or "" when it succeeds.
std::string error_of(const std::string& source, const troupe::jinja::render_limits& limits = {},
                     const std::string& context_json = "{}") {
  try {
    render(source, limits, context_json);
  } catch (const troupe::error& e) {
    return e.what();
  }
  return "";
}

TEST(ChatTemplateSandbox, LoopIterationsAreBounded) {
  troupe::jinja::render_limits limits;
  limits.max_loop_iterations = 50;
  // Every iteration counts, the outer loop's too: 5 + 5 * 9 = 50.
  EXPECT_EQ(render("{% for i in range(5) %}{% for j in range(9) %}x{% endfor %}{% endfor %}", limits).size(),
            45u);
  EXPECT_EQ(error_of("{% for i in range(10) %}\n{% for j in range(10) %}x{% endfor %}{% endfor %}", limits),
            "chat template line 2: loop iterations exceed the limit of 50");
  EXPECT_EQ(error_of("{{ range(51) | length }}", limits),
            "chat template line 1: range() of 51 items exceeds the limit of 50");
}

TEST(ChatTemplateSandbox, RecursionDepthIsBounded) {
  troupe::jinja::render_limits limits;
  limits.max_call_depth = 10;
  EXPECT_EQ(render("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{{ n }}{% endmacro %}{{ f(9) }}",
                   limits),
            "0123456789");
  EXPECT_EQ(error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n\n{{ f(0) }}", limits),
            "chat template line 1: call depth exceeds the limit of 10");
}

TEST(ChatTemplateSandbox, OutputSizeIsBounded) {
  troupe::jinja::render_limits limits;
  limits.max_output_bytes = 100;
  EXPECT_EQ(render("{% for i in range(33) %}abc{% endfor %}", limits).size(), 99u);
  EXPECT_EQ(error_of("{% for i in range(34) %}abc{% endfor %}", limits),
            "chat template line 1: output exceeds the limit of 100 bytes");
  // Doubling a string in a loop hits the per-string limit long before memory runs out.
  EXPECT_EQ(
      error_of(
          "{% set ns = namespace(s='x') %}{% for i in range(40) %}\n{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
          limits),
      "chat template line 2: string of 128 bytes exceeds the limit of 100 bytes");
}

TEST(ChatTemplateSandbox, TotalWorkIsBounded) {
  troupe::jinja::render_limits limits;
  limits.max_work_bytes = 1000;
  EXPECT_EQ(
      error_of("{% set ns = namespace(s='') %}{% for i in range(100) %}{% set ns.s = ns.s ~ 'abcdefghij' %}"
               "{% endfor %}",
               limits),
      "chat template line 1: template built more than 1000 bytes of strings");
}

TEST(ChatTemplateSandbox, NestingDepthIsBoundedAtParse) {
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_EQ(error_of(deep), "chat template line 1: template nested too deeply (limit 256)");
  EXPECT_EQ(render("{{ ((((1)))) }}"), "1");
}

TEST(ChatTemplateSandbox, SelfReferencingNamespaceIsHarmless) {
  EXPECT_EQ(render("{% set ns = namespace() %}{% set ns.me = ns %}ok"), "ok");
  EXPECT_EQ(error_of("{% set ns = namespace() %}{% set ns.me = ns %}\n{{ ns | tojson }}"),
            "chat template line 2: value nested too deeply to convert to JSON");
}

TEST(ChatTemplateSandbox, NoHostAccess) {
  // Nothing but the documented globals exists: file, environment and import helpers are undefined.
  EXPECT_EQ(render("[{{ open }}{{ environ }}{{ os }}{{ import }}{{ config }}{{ self }}]"), "[]");
  EXPECT_EQ(error_of("{{ open('/etc/passwd') }}"),
            "chat template line 1: Cannot call something that is not a function: got UndefinedValue");
}

TEST(ChatTemplateErrors, SyntaxErrorsNameTheLine) {
  EXPECT_EQ(error_of("a\nb\n{% if %}x{% endif %}"), "chat template line 3: Unexpected token: CloseStatement");
  EXPECT_EQ(error_of("x\n{{ a $ b }}"), "chat template line 2: Unexpected character: $");
  EXPECT_EQ(error_of("ok\n{{ 'abc }}"), "chat template line 2: Unexpected end of input");
  EXPECT_EQ(error_of("{% for m in messages %}\n{% if m %}\nx\n{% endfor %}"),
            "chat template line 4: Unknown statement type: endfor");
  EXPECT_EQ(
      error_of("line\n{% if x %}\nabc"),
      "chat template line 2: {% if %} is never closed (expected {% endif %} before the end of the template)");
  EXPECT_EQ(error_of("{% frobnicate %}"), "chat template line 1: Unknown statement type: frobnicate");
  EXPECT_EQ(error_of("{{ 'a' | }}"), "chat template line 1: Unexpected token: CloseExpression");
  EXPECT_EQ(error_of("{{ '\\q' }}"), "chat template line 1: Unexpected escaped character: q");
}

TEST(ChatTemplateErrors, RuntimeErrorsNameTheLine) {
  EXPECT_EQ(error_of("line1\n{{ none ~ 'x' }}"),
            "chat template line 2: Cannot perform operation on null values");
  EXPECT_EQ(error_of("\n\n{{ raise_exception('Conversation roles must alternate') }}"),
            "chat template line 3: Conversation roles must alternate");
  EXPECT_EQ(error_of("{{ [1] | frob }}"), "chat template line 1: Unknown ArrayValue filter: frob");
  EXPECT_EQ(error_of("{{ 1 is frob }}"), "chat template line 1: Unknown test: frob");
  EXPECT_EQ(error_of("{% for x in 5 %}{% endfor %}"),
            "chat template line 1: Expected iterable or object type in for loop: got IntegerValue");
  EXPECT_EQ(error_of("{% set x = 1 %}{% set x.y = 2 %}"),
            "chat template line 1: cannot assign attribute on non-namespace object");
  EXPECT_EQ(error_of("{{ x | default }}"),
            "chat template line 1: Cannot apply filter \"default\" to type: UndefinedValue");
  EXPECT_EQ(error_of("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}"),
            "chat template line 1: macro 'm' takes not more than 1 argument(s)");
  EXPECT_EQ(error_of("{% break %}"), "chat template line 1: break or continue outside a loop");
  EXPECT_EQ(error_of("x", {}, R"({"true": 1})"), "chat template: Variable already declared: true");
}

TEST(ChatTemplateErrors, ContextMustBeAnObject) {
  auto t = troupe::chat_template::parse("x");
  EXPECT_THROW(t.render(nlohmann::ordered_json::array()), troupe::error);
  troupe::chat_template never_parsed;
  EXPECT_THROW(never_parsed.render(nlohmann::ordered_json::object()), troupe::error);
}

}  // namespace
