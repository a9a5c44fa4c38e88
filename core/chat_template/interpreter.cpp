#include "core/chat_template/interpreter.h"

#include <cmath>
#include <unordered_set>

#include "core/chat_template/builtins.h"
#include "core/chat_template/js_text.h"
#include "core/chat_template/template_error.h"

namespace troupe::jinja {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw eval_failure(msg); }

env_ptr child_of(const env_ptr& parent) {
  auto e = std::make_shared<environment>();
  e->parent = parent;
  return e;
}

// Whether a macro or call body reads `kwargs` / `varargs` (then extra arguments are collected instead of
// refused). A simplification of the reference's scan: any read in the body counts.
void scan_special(const node* n, bool& kwargs, bool& varargs) {
  if (!n) return;
  if (n->kind == node_kind::identifier) {
    if (n->name == "kwargs") kwargs = true;
    if (n->name == "varargs") varargs = true;
  }
  for (const node* c : {n->a.get(), n->b.get(), n->c.get()}) scan_special(c, kwargs, varargs);
  for (const auto* list : {&n->list, &n->body, &n->alt}) {
    for (const auto& c : *list) scan_special(c.get(), kwargs, varargs);
  }
}

void scan_body(const std::vector<node_ptr>& params, const std::vector<node_ptr>& body, bool& kwargs,
               bool& varargs) {
  kwargs = varargs = false;
  for (const auto& s : body) scan_special(s.get(), kwargs, varargs);
  for (const auto& p : params) {
    if (p->name == "kwargs") kwargs = false;
    if (p->name == "varargs") varargs = false;
  }
}

}  // namespace

const value* environment::lookup(const std::string& name) const {
  for (const environment* e = this; e; e = e->parent.get()) {
    auto it = e->vars.find(name);
    if (it != e->vars.end()) return &it->second;
  }
  return nullptr;
}

interpreter::interpreter(const render_limits& limits, std::time_t now) : limits_(limits), now_(now) {}

interpreter::~interpreter() {
  for (auto& ns : namespaces_) {
    ns->entries.clear();
    ns->index.clear();
  }
}

void interpreter::account(size_t bytes) {
  if (bytes > limits_.max_output_bytes) {
    fail("string of " + std::to_string(bytes) + " bytes exceeds the limit of " +
         std::to_string(limits_.max_output_bytes) + " bytes");
  }
  work_bytes_ += bytes;
  if (work_bytes_ > limits_.max_work_bytes) {
    fail("template built more than " + std::to_string(limits_.max_work_bytes) + " bytes of strings");
  }
}

void interpreter::account_items(size_t n) {
  if (static_cast<int64_t>(n) > limits_.max_loop_iterations) {
    fail("list of " + std::to_string(n) + " items exceeds the limit of " +
         std::to_string(limits_.max_loop_iterations));
  }
}

std::string interpreter::run(const program& prog, const value& context) {
  auto root = std::make_shared<environment>();
  install_globals(root->vars, now_, limits_.max_loop_iterations);
  if (context.is_object()) {
    for (const auto& [k, v] : context.obj->entries) {
      if (root->vars.count(k)) throw troupe::error("chat template: Variable already declared: " + k);
      root->vars[k] = v;
    }
  }
  std::string out;
  for (const auto& stmt : prog) {
    if (exec(*stmt, root, out) != flow::normal)
      throw_template_error(stmt->line, "break or continue outside a loop");
  }
  return out;
}

interpreter::flow interpreter::exec_block(const std::vector<node_ptr>& body, const env_ptr& env,
                                          std::string& out) {
  for (const auto& stmt : body) {
    flow f = exec(*stmt, env, out);
    if (f != flow::normal) return f;
  }
  return flow::normal;
}

std::string interpreter::render_body(const std::vector<node_ptr>& body, const env_ptr& env) {
  std::string out;
  for (const auto& stmt : body) {
    if (exec(*stmt, env, out) != flow::normal)
      throw_template_error(stmt->line, "break or continue outside a loop");
  }
  return out;
}

interpreter::flow interpreter::exec(const node& n, const env_ptr& env, std::string& out) {
  try {
    value v;
    switch (n.kind) {
      case node_kind::set:
        exec_set(n, env);
        return flow::normal;
      case node_kind::if_stmt:
        return exec_block(truthy(eval(*n.a, env)) ? n.body : n.alt, env, out);
      case node_kind::for_stmt:
        return exec_for(n, env, out);
      case node_kind::macro:
        exec_macro(n, env);
        return flow::normal;
      case node_kind::break_stmt:
        return flow::break_loop;
      case node_kind::continue_stmt:
        return flow::continue_loop;
      case node_kind::comment:
        return flow::normal;
      case node_kind::call_block:
        v = exec_call_block(n, env);
        break;
      case node_kind::filter_block: {
        value body = value::string(render_body(n.body, env));
        v = apply_filter(body, *n.a, env);
        break;
      }
      default:
        v = eval(n, env);
        break;
    }
    if (!v.is_null() && !v.is_undefined()) {
      if (v.is_string()) {
        out += v.str;
      } else {
        std::string s = output_string(v);
        account(s.size());
        out += s;
      }
      if (out.size() > limits_.max_output_bytes) {
        fail("output exceeds the limit of " + std::to_string(limits_.max_output_bytes) + " bytes");
      }
    }
    return flow::normal;
  } catch (const eval_failure& e) {
    throw_template_error(n.line, e.what());
  }
}

void interpreter::exec_set(const node& n, const env_ptr& env) {
  value rhs = n.b ? eval(*n.b, env) : value::string(render_body(n.body, env));
  const node& target = *n.a;
  if (target.kind == node_kind::identifier) {
    env->vars[target.name] = std::move(rhs);
  } else if (target.kind == node_kind::tuple_lit) {
    if (!rhs.is_array()) fail(std::string("Cannot unpack non-iterable type in set: ") + type_name(rhs.k));
    if (rhs.items().size() != target.list.size()) {
      fail(std::string("Too ") + (target.list.size() > rhs.items().size() ? "few" : "many") +
           " items to unpack in set");
    }
    for (size_t i = 0; i < target.list.size(); ++i) {
      if (target.list[i]->kind != node_kind::identifier) fail("Cannot unpack to non-identifier in set");
      env->vars[target.list[i]->name] = rhs.items()[i];
    }
  } else if (target.kind == node_kind::member) {
    value object = eval(*target.a, env);
    if (object.k != kind::name_space) fail("cannot assign attribute on non-namespace object");
    if (target.b->kind != node_kind::identifier) fail("Cannot assign to member with non-identifier property");
    object.obj->set(target.b->name, std::move(rhs));
  } else {
    fail("Invalid LHS inside assignment expression");
  }
}

interpreter::flow interpreter::exec_for(const node& n, const env_ptr& env, std::string& out) {
  auto scope = child_of(env);
  const node* test = nullptr;
  value iterable;
  if (n.b->kind == node_kind::select) {
    iterable = eval(*n.b->a, scope);
    test = n.b->b.get();
  } else {
    iterable = eval(*n.b, scope);
  }
  if (!iterable.is_array() && !iterable.is_object()) {
    fail(std::string("Expected iterable or object type in for loop: got ") + type_name(iterable.k));
  }
  value_list all;
  if (iterable.is_object()) {
    for (const auto& [k, v] : iterable.obj->entries) all.push_back(value::string(k));
  } else {
    all = iterable.items();
  }
  const node& var = *n.a;
  auto bind = [&](const env_ptr& e, const value& item) {
    if (var.kind == node_kind::identifier) {
      e->vars[var.name] = item;
      return;
    }
    for (size_t j = 0; j < var.list.size(); ++j) {
      if (var.list[j]->kind != node_kind::identifier) fail("Cannot unpack non-identifier type");
      e->vars[var.list[j]->name] = item.items()[j];
    }
  };
  value_list items;
  for (const auto& item : all) {
    if (++iterations_ > limits_.max_loop_iterations) {
      fail("loop iterations exceed the limit of " + std::to_string(limits_.max_loop_iterations));
    }
    if (var.kind == node_kind::tuple_lit) {
      if (item.k != kind::array) fail(std::string("Cannot unpack non-iterable type: ") + type_name(item.k));
      if (var.list.size() != item.items().size()) {
        fail(std::string("Too ") + (var.list.size() > item.items().size() ? "few" : "many") +
             " items to unpack");
      }
    }
    if (test) {
      auto loop_scope = child_of(scope);
      bind(loop_scope, item);
      if (!truthy(eval(*test, loop_scope))) continue;
    }
    items.push_back(item);
  }
  bool no_iteration = true;
  const size_t count = items.size();
  for (size_t i = 0; i < count; ++i) {
    auto loop = std::make_shared<object_map>();
    loop->set("index", value::integer(static_cast<double>(i + 1)));
    loop->set("index0", value::integer(static_cast<double>(i)));
    loop->set("revindex", value::integer(static_cast<double>(count - i)));
    loop->set("revindex0", value::integer(static_cast<double>(count - i - 1)));
    loop->set("first", value::boolean(i == 0));
    loop->set("last", value::boolean(i == count - 1));
    loop->set("length", value::integer(static_cast<double>(count)));
    loop->set("previtem", i > 0 ? items[i - 1] : value::undefined());
    loop->set("nextitem", i + 1 < count ? items[i + 1] : value::undefined());
    scope->vars["loop"] = value::object(loop);
    bind(scope, items[i]);
    // The reference renders each iteration into its own string, so break/continue drop what the
    // iteration had printed so far.
    size_t mark = out.size();
    flow f = exec_block(n.body, scope, out);
    if (f == flow::continue_loop) {
      out.resize(mark);
      continue;
    }
    if (f == flow::break_loop) {
      out.resize(mark);
      break;
    }
    no_iteration = false;
  }
  if (no_iteration) return exec_block(n.alt, scope, out);
  return flow::normal;
}

void interpreter::bind_macro_args(const std::string& display_name, const std::vector<node_ptr>& params,
                                  bool uses_kwargs, bool uses_varargs, value_list args,
                                  const env_ptr& scope) {
  std::shared_ptr<object_map> kw;
  if (!args.empty() && args.back().k == kind::kwargs) {
    kw = args.back().obj;
    args.pop_back();
  }
  std::unordered_set<std::string> used;
  std::vector<const node*> pending;
  for (size_t i = 0; i < params.size(); ++i) {
    const node& p = *params[i];
    const node* default_value = p.kind == node_kind::kwarg ? p.a.get() : nullptr;
    value v;
    bool given = i < args.size();
    if (given) {
      v = args[i];
    } else if (kw && kw->find(p.name)) {
      v = *kw->find(p.name);
      used.insert(p.name);
      given = true;
    }
    if (!given && default_value) pending.push_back(&p);
    scope->vars[p.name] = given ? v : value::undefined();
  }
  auto rest = std::make_shared<object_map>();
  if (kw) {
    for (const auto& [k, v] : kw->entries) {
      if (!used.count(k)) rest->set(k, v);
    }
  }
  if (uses_kwargs) {
    scope->vars["kwargs"] = value::object(rest);
  } else if (rest->size() > 0) {
    fail("macro " + display_name + " takes no keyword argument '" + rest->entries[0].first + "'");
  }
  if (uses_varargs) {
    value_list extra;
    for (size_t i = params.size(); i < args.size(); ++i) extra.push_back(args[i]);
    scope->vars["varargs"] = value::array(std::move(extra));
  } else if (args.size() > params.size()) {
    fail("macro " + display_name + " takes not more than " + std::to_string(params.size()) + " argument(s)");
  }
  for (const node* p : pending) scope->vars[p->name] = eval(*p->a, scope);
}

void interpreter::exec_macro(const node& n, const env_ptr& env) {
  const node* m = &n;
  bool uses_kwargs = false, uses_varargs = false;
  scan_body(n.list, n.body, uses_kwargs, uses_varargs);
  env->vars[n.name] = value::function(
      n.name, [m, uses_kwargs, uses_varargs](interpreter& in, value_list& args, const env_ptr& call_env) {
        auto scope = child_of(call_env);  // macros see the caller's variables, as in the reference
        in.bind_macro_args("'" + m->name + "'", m->list, uses_kwargs, uses_varargs, args, scope);
        return value::string(in.render_body(m->body, scope));
      });
}

value interpreter::exec_call_block(const node& n, const env_ptr& env) {
  const node* cb = &n;
  bool uses_kwargs = false, uses_varargs = false;
  scan_body(n.list, n.body, uses_kwargs, uses_varargs);
  value caller = value::function(
      "caller", [cb, env, uses_kwargs, uses_varargs](interpreter& in, value_list& args, const env_ptr&) {
        auto scope = child_of(env);
        in.bind_macro_args("None", cb->list, uses_kwargs, uses_varargs, args, scope);
        return value::string(in.render_body(cb->body, scope));
      });
  const node& call_expr = *n.a;
  auto [args, kw] = eval_args(call_expr.list, env);
  args.push_back(value::object(kw, kind::kwargs));
  value fn = eval(*call_expr.a, env);
  if (fn.k != kind::function)
    fail(std::string("Cannot call something that is not a function: got ") + type_name(fn.k));
  auto call_env = child_of(env);
  call_env->vars["caller"] = caller;
  return call(fn, args, call_env);
}

value interpreter::call(const value& fn, value_list& args, const env_ptr& env) {
  if (++call_depth_ > limits_.max_call_depth) {
    --call_depth_;
    fail("call depth exceeds the limit of " + std::to_string(limits_.max_call_depth));
  }
  struct restore {
    int& depth;
    ~restore() { --depth; }
  } guard{call_depth_};
  return fn.fn->fn(*this, args, env);
}

std::pair<value_list, std::shared_ptr<object_map>> interpreter::eval_args(const std::vector<node_ptr>& args,
                                                                          const env_ptr& env) {
  value_list positional;
  auto kw = std::make_shared<object_map>();
  for (const auto& a : args) {
    if (a->kind == node_kind::spread) {
      value v = eval(*a->a, env);
      if (!v.is_array()) fail(std::string("Cannot unpack non-iterable type: ") + type_name(v.k));
      for (const auto& item : v.items()) positional.push_back(item);
    } else if (a->kind != node_kind::kwarg && a->kind != node_kind::kwspread) {
      positional.push_back(eval(*a, env));
    }
  }
  auto add = [&](const std::string& k, value v) {
    if (kw->find(k)) fail("Got multiple values for keyword argument '" + k + "'");
    kw->set(k, std::move(v));
  };
  for (const auto& a : args) {
    if (a->kind == node_kind::kwarg) {
      add(a->name, eval(*a->a, env));
    } else if (a->kind == node_kind::kwspread) {
      value v = eval(*a->a, env);
      if (!v.is_object()) fail(std::string("Argument after ** must be a mapping, not ") + type_name(v.k));
      for (const auto& [k, item] : v.obj->entries) add(k, item);
    }
  }
  return {std::move(positional), std::move(kw)};
}

value interpreter::eval(const node& n, const env_ptr& env) {
  try {
    return eval_inner(n, env);
  } catch (const eval_failure& e) {
    throw_template_error(n.line, e.what());
  }
}

value interpreter::eval_inner(const node& n, const env_ptr& env) {
  switch (n.kind) {
    case node_kind::string_lit:
      return value::string(n.name);
    case node_kind::int_lit:
      return value::integer(n.number);
    case node_kind::float_lit:
      return value::floating(n.number);
    case node_kind::identifier: {
      const value* v = env->lookup(n.name);
      return v ? *v : value::undefined();
    }
    case node_kind::array_lit:
    case node_kind::tuple_lit: {
      value_list items;
      for (const auto& e : n.list) items.push_back(eval(*e, env));
      return value::array(std::move(items), n.kind == node_kind::tuple_lit ? kind::tuple : kind::array);
    }
    case node_kind::object_lit: {
      auto m = std::make_shared<object_map>();
      for (size_t i = 0; i + 1 < n.list.size(); i += 2) {
        value key = eval(*n.list[i], env);
        if (!key.is_string()) fail(std::string("Object keys must be strings: got ") + type_name(key.k));
        m->set(key.str, eval(*n.list[i + 1], env));
      }
      return value::object(m);
    }
    case node_kind::member:
      return eval_member(n, env);
    case node_kind::call:
      return eval_call(n, env);
    case node_kind::unary:
      return eval_unary(n, env);
    case node_kind::binary:
      return eval_binary(n, env);
    case node_kind::filter:
      return apply_filter(eval(*n.a, env), *n.b, env);
    case node_kind::test:
      return eval_test(n, env);
    case node_kind::select:
      return truthy(eval(*n.b, env)) ? eval(*n.a, env) : value::undefined();
    case node_kind::ternary:
      return truthy(eval(*n.a, env)) ? eval(*n.b, env) : eval(*n.c, env);
    default:
      fail("unexpected syntax in an expression");
  }
}

value interpreter::eval_call(const node& n, const env_ptr& env) {
  auto [args, kw] = eval_args(n.list, env);
  if (kw->size() > 0) args.push_back(value::object(kw, kind::kwargs));
  value fn = eval(*n.a, env);
  if (fn.k != kind::function)
    fail(std::string("Cannot call something that is not a function: got ") + type_name(fn.k));
  return call(fn, args, env);
}

value interpreter::eval_test(const node& n, const env_ptr& env) {
  value operand = eval(*n.a, env);
  if (!has_test(n.name)) fail("Unknown test: " + n.name);
  bool r = run_test(n.name, operand, value::undefined());
  return value::boolean(n.flag ? !r : r);
}

value interpreter::eval_unary(const node& n, const env_ptr& env) {
  value v = eval(*n.a, env);
  if (n.name == "not") return value::boolean(!truthy(v));
  double sign = n.name == "-" ? -1 : 1;
  if (v.is_number())
    return v.k == kind::floating ? value::floating(sign * v.num) : value::integer(sign * v.num);
  if (v.k == kind::boolean) return value::integer(sign * (v.b ? 1 : 0));
  fail("Unknown operator \"" + n.name + "\" for " + type_name(v.k));
}

}  // namespace troupe::jinja
