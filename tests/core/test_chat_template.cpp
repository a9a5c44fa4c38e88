// Chat-template interpreter: each construct renders exactly what the reference renderer
// (@huggingface/jinja 0.5.11) renders for it; the expected strings were checked against it.
#include <gtest/gtest.h>

#include <string>

#include "core/chat_template/chat_template.h"

namespace {

// 2024-07-26 13:20:00 UTC; the strftime test only reads fields no time zone can change.
constexpr std::time_t kNow = 1722000000;

std::string render(const std::string& source, const std::string& context_json = "{}") {
  troupe::chat_template_render_options options;
  options.now = kNow;
  return troupe::chat_template::parse(source).render(nlohmann::ordered_json::parse(context_json), options);
}

TEST(ChatTemplate, TextExpressionsAndComments) {
  EXPECT_EQ(render("Hello {{ name }}!{# not shown #}", R"({"name": "Ann"})"), "Hello Ann!");
  EXPECT_EQ(render("{{ 'a' }}{{ \"b\" }}{{ 'c' 'd' }}"), "abcd");
  EXPECT_EQ(render(""), "");
}

TEST(ChatTemplate, TrimBlocksAndLstripBlocksAreOn) {
  // One trailing newline of the template is dropped, the newline after a block tag is eaten and
  // indentation before a block tag is stripped, as transformers.js configures the reference.
  EXPECT_EQ(render("{% if true %}\n  yes\n{% endif %}\n"), "  yes\n");
  EXPECT_EQ(render("  {% if true %}x{% endif %}\n  {{ 'y' }}"), "x  y");
}

TEST(ChatTemplate, WhitespaceControl) {
  EXPECT_EQ(render("a  {{- 'x' -}}  b|{%- if true -%}  y  {%- endif -%}|{#- c -#}  z"), "axb|y|z");
}

TEST(ChatTemplate, GenerationTagsAreRemoved) {
  EXPECT_EQ(
      render("{% generation %}  kept {% endgeneration %}|  {%- generation -%}  x  {%- endgeneration %} end"),
      "  kept |x end");
}

TEST(ChatTemplate, IfElifElse) {
  const std::string t = "{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %}";
  EXPECT_EQ(render(t, R"({"n": 1})"), "one");
  EXPECT_EQ(render(t, R"({"n": 2})"), "two");
  EXPECT_EQ(render(t, R"({"n": 5})"), "many");
}

TEST(ChatTemplate, ForLoopVariables) {
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
                   "{{ loop.length }}{{ loop.revindex0 }}{{ x }};{% endfor %}",
                   R"({"xs": ["a", "b"]})"),
            "10truefalse21a;21falsetrue20b;");
}

TEST(ChatTemplate, ForElseFilterBreakContinueAndMappings) {
  EXPECT_EQ(render("{% for x in [] %}x{% else %}none{% endfor %}"), "none");
  EXPECT_EQ(
      render(
          "{% for x in [1,2,3,4] if x is even %}{{ x }}{% endfor %}|{% for i in range(6) %}"
          "{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
      "24|023");
  // Object key order is the context's, not alphabetical.
  EXPECT_EQ(
      render("{% for k, v in d | items %}{{ k }}={{ v }},{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
             R"({"d": {"b": 1, "a": 2}})"),
      "b=1,a=2,ba");
}

TEST(ChatTemplate, SetScopesNamespacesAndBlocks) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}"
                   "{% set ns = namespace(n=1) %}{% for i in [1, 2] %}{% set ns.n = ns.n * 10 %}{% endfor "
                   "%}{{ ns.n }}"),
            "1100");
  EXPECT_EQ(
      render("{% set a, b = 1, 'two' %}{{ b }}{{ a }}{% set blk %}hi {{ 1 + 1 }}{% endset %}[{{ blk }}]"),
      "two1[hi 2]");
}

TEST(ChatTemplate, MacrosAndCallBlocks) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('Bo') }} {{ greet('Al', punct='?') }} {{ greet(name='Cy') }}"),
            "Hi Bo! Hi Al? Hi Cy!");
  EXPECT_EQ(
      render("{% macro box(w) %}[{{ w }}:{{ caller() }}]{% endmacro %}{% call box(3) %}inner{% endcall %}"
             "{% macro list_args() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ list_args(1, 'a', k=true) }}"),
      R"([3:inner][1, "a"]{"k": true})");
  EXPECT_EQ(render("{% filter upper %}ab{{ 'c' }}{% endfilter %}"), "ABC");
}

TEST(ChatTemplate, TojsonMatchesReferenceFormatting) {
  // Python-style separators, non-ASCII kept, JSON.stringify escapes.
  EXPECT_EQ(render("{{ {'b': 1, 'a': [true, none, 'é', 1.5]} | tojson }}"),
            R"({"b": 1, "a": [true, null, "é", 1.5]})");
  EXPECT_EQ(render(R"({{ 'a"b\n\\' | tojson }})"), R"("a\"b\n\\")");
  EXPECT_EQ(render("{{ 'é🎉' | tojson(ensure_ascii=true) }}"), R"("\u00e9\ud83c\udf89")");
  EXPECT_EQ(render("{{ {'a': [1, 2], 'b': {}, 'c': []} | tojson(indent=2) }}"),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": []\n}");
  EXPECT_EQ(render("{{ {'a': [1, 2]} | tojson(separators=(',', ':')) }}"), R"({"a":[1,2]})");
  // Keys that are array indices come first, in numeric order, as in a JavaScript object.
  EXPECT_EQ(render("{{ d | tojson }}", R"({"d": {"b": 1, "2": 2, "a": 3, "1": 4, "01": 5}})"),
            R"({"1": 4, "2": 2, "b": 1, "a": 3, "01": 5})");
}

TEST(ChatTemplate, StringFilters) {
  EXPECT_EQ(render("{{ '  a b \n' | trim }}"), "a b");
  // length counts UTF-16 units, as JavaScript does.
  EXPECT_EQ(render("{{ 'héllo' | length }} {{ '🎉' | length }} {{ [1, 2] | length }} {{ {'a': 1} | length }}"),
            "5 2 2 1");
  EXPECT_EQ(render("{{ 'aBc' | upper }}{{ 'ÀÉSS' | lower }}"), "ABCàéss");
  EXPECT_EQ(
      render(
          "{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'a.b' | replace('.', '') }}|{{ 'ab' | replace('', '-') }}"),
      "bba|ab|-a-b-");
  EXPECT_EQ(render("{{ '<b>' | safe }}"), "<b>");
}

TEST(ChatTemplate, DefaultFirstLastJoin) {
  EXPECT_EQ(render("{{ x | default('d') }}|{{ '' | default('d', true) }}|{{ none | default('d') }}|{{ 0 | "
                   "default('d') }}"
                   "|{{ [1,2,3] | first }}{{ [1,2,3] | last }}"),
            "d|d||0|13");
  EXPECT_EQ(render("{{ ['a', 1, none, 2.5, true] | join('-') }}|{{ [1, 2] | join }}"), "a-1--2.5-true|12");
}

TEST(ChatTemplate, SelectRejectMapItems) {
  const std::string ctx = R"({"messages": [{"role": "system", "content": "s"},
      {"role": "user", "content": "u1", "name": "n"}, {"role": "assistant", "content": "a"},
      {"role": "user", "content": "u2"}]})";
  EXPECT_EQ(
      render("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|"
             "{{ messages | rejectattr('role', 'equalto', 'user') | map(attribute='role') | join(',') }}|"
             "{{ messages | selectattr('name') | list | length }}",
             ctx),
      "u1,u2|system,assistant|1");
  EXPECT_EQ(
      render("{{ {'b': 2, 'A': 1, 'a': 0} | dictsort }}|{{ [3, 1, 2] | sort }}|{{ ['b', 'A', 'a'] | sort }}|"
             "{{ [1, 2, 1, '1'] | unique }}|{{ [1, 2] | reverse }}"),
      R"([["A", 1], ["a", 0], ["b", 2]]|[1, 2, 3]|["A", "a", "b"]|[1, 2, "1"]|[2, 1])");
}

TEST(ChatTemplate, StringIntAndAbsFilters) {
  EXPECT_EQ(render("{{ [1, 'a'] | string }}|{{ 1.0 | string }}|{{ true | string }}|{{ '12abc' | int }}|"
                   "{{ 'abc' | int }}|{{ 3.7 | int }}|{{ 'x' | int(5) }}|{{ -3 | abs }}"),
            R"([1, "a"]|1.0|true|12|0|3|5|3)");
}

TEST(ChatTemplate, Tests) {
  EXPECT_EQ(
      render("{{ x is defined }}{{ y is defined }}{{ n is none }}{{ x is string }}{{ d is mapping }}"
             "{{ l is iterable }}{{ x is iterable }}{{ d is iterable }}{{ x is not none }}{{ b is true }}"
             "{{ b is false }}",
             R"({"x": "s", "n": null, "d": {}, "l": [], "b": false})"),
      "truefalsetruetruetruetruetruefalsetruefalsetrue");
}

TEST(ChatTemplate, StringMethods) {
  EXPECT_EQ(render("{{ 'hello'.startswith('he') }}{{ 'hello'.endswith(('x', 'lo')) }}|{{ '  x  '.strip() }}|"
                   "{{ '  l'.lstrip() }}|{{ 'r  '.rstrip() }}|{{ 'Mixed'.upper() }}{{ 'Mixed'.lower() }}"),
            "truetrue|x|l|r|MIXEDmixed");
  // The reference ignores strip's characters argument and strips white space.
  EXPECT_EQ(render(R"({{ 'xxaxx'.strip('x') }}|{{ '\nx\n'.strip('\n') }})"), "xxaxx|x");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}"),
            R"(["a", "b", "", "c"]|["a", "b"]|["a", "b c"])");
}

TEST(ChatTemplate, SlicingAndIndexing) {
  EXPECT_EQ(render("{{ [1,2,3,4,5][1:3] }}{{ [1,2,3,4,5][::-1] }}{{ [1,2,3,4,5][-2:] }}"),
            "[2, 3][5, 4, 3, 2, 1][4, 5]");
  EXPECT_EQ(
      render("{{ 'hello'[1:] }}|{{ 'hello'[-3:] }}|{{ 'hello'[::2] }}|{{ [1,2,3][-1] }}|{{ 'héllo'[1] }}|"
             "{{ 'abc'[5] }}|"),
      "ello|llo|hlo|3|é||");
}

TEST(ChatTemplate, MembershipConcatenationAndTernaries) {
  EXPECT_EQ(render("{{ 'a' in 'cat' }} {{ 2 in [1,2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'cat' }} "
                   "{{ 'n' ~ 1 ~ true ~ 2.0 ~ [1, 'b'] }} {{ 'x' + 1 }}"),
            "true true true true n1true21,b x1");
  EXPECT_EQ(render("{{ 'x' if false else 'y' }}|{{ 'z' if false }}|{{ 1 if 0 else 2 if 0 else 3 }}"), "y||3");
}

TEST(ChatTemplate, NumbersPrintLikeTheReference) {
  EXPECT_EQ(
      render("{{ 7 / 2 }} {{ 4 / 2 }} {{ 0.1 + 0.2 }} {{ 10 // 4 }} {{ -7 % 3 }} {{ 2 ** 3 }} {{ 2 ** -1 }} "
             "{{ x }} {{ y }} {{ z }} {{ w }} {{ 1 == 1.0 }} {{ '1' == 1 }} {{ none == undefined_thing }}",
             R"({"x": 1.0, "y": 1e300, "z": 1e-7, "w": 0.000001})"),
      "3.5 2.0 0.30000000000000004 2 -1 8 0.5 1 1e+300 1e-7 0.000001 true true true");
}

TEST(ChatTemplate, ValuesPrintAsJsonAndNothingForNone) {
  EXPECT_EQ(render("{{ [1, 2.0, none, true, 'x'] }} {{ {'a': none} }} {{ true }} {{ none }}|{{ nothing }}|"
                   "{{ nothing.attr }}|{{ (1, 2) ~ '' }}"),
            R"([1, 2, null, true, "x"] {"a": null} true |||1,2)");
}

TEST(ChatTemplate, StrftimeNowUsesTheGivenClock) {
  EXPECT_EQ(render("{{ strftime_now('%Y-%m %B %b %% %Q') }}"), "2024-07 July Jul % %Q");
}

TEST(ChatTemplate, ContextFromModelTemplate) {
  troupe::model_chat_template m;
  m.tmpl = troupe::chat_template::parse(
      "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }}{{ eos_token }}{% endfor %}"
      "{% if tools %}[{{ tools | length }} tools]{% endif %}"
      "{% if add_generation_prompt %}assistant:{% if enable_thinking is false %}<nothink>{% endif %}{% endif "
      "%}");
  m.bos_token = "<s>";
  m.eos_token = "</s>";
  auto messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  auto tools = nlohmann::ordered_json::parse(R"([{"type": "function"}])");
  EXPECT_EQ(m.apply(messages, nullptr, false), "<s>user:hi</s>");
  EXPECT_EQ(m.apply(messages, &tools, true, nlohmann::ordered_json::parse(R"({"enable_thinking": false})")),
            "<s>user:hi</s>[1 tools]assistant:<nothink>");
  EXPECT_EQ(m.apply(messages, nullptr, true, nlohmann::ordered_json::parse(R"({"bos_token": "<B>"})")),
            "<B>user:hi</s>assistant:");
  EXPECT_THROW(m.apply(messages, nullptr, true, nlohmann::ordered_json::parse(R"({"messages": []})")),
               troupe::error);
}

TEST(ChatTemplate, JinjaLookingContentIsNotInterpreted) {
  EXPECT_EQ(render("{{ m }}", R"({"m": "{{ x }} {% if %} {# c #}"})"), "{{ x }} {% if %} {# c #}");
}

TEST(ChatTemplate, PlainJsonContextKeysArriveSorted) {
  troupe::chat_template_render_options options;
  auto t = troupe::chat_template::parse("{{ d | tojson }}");
  EXPECT_EQ(t.render(nlohmann::json::parse(R"({"d": {"b": 1, "a": 2}})"), options), R"({"a": 2, "b": 1})");
}

}  // namespace
