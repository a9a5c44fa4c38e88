"""Reads dashboards/troupe.json the way Grafana does: every panel (rows included) and every target's
PromQL, with the dashboard's template variables and Grafana's built-in interval variables substituted."""
import json
import os
import re

# Grafana's built-ins that may appear in a Prometheus query (the rest of a dashboard's variables come
# from its templating list).
BUILTINS = {"__rate_interval", "__interval", "__range"}
VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
METRIC = re.compile(r"\btroupe_[a-z0-9_]*[a-z0-9]\b")


def load(root):
    with open(os.path.join(root, "dashboards", "troupe.json")) as f:
        return json.load(f)


def panels(dash):
    """Every panel, those inside (collapsed) rows too, in dashboard order."""
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:
            yield q


def variables(dash):
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def queries(dash):
    """(panel title, refId, expr) for every Prometheus target."""
    for p in panels(dash):
        for t in p.get("targets", []) or []:
            if "expr" in t:
                yield p.get("title", "?"), t.get("refId", "?"), t["expr"]


def variable_names(expr):
    return {a or b or c for a, b, c in VAR.findall(expr)}


def substitute(expr, values, default=None):
    """Replaces $name, ${name} and [[name]]; a name with no value is `default`, or raises KeyError."""
    def one(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return values[name] if default is None or name in values else default
    return VAR.sub(one, expr)


def metric_names(expr):
    """The troupe series an expression reads (recording-rule style names with ':' never appear)."""
    return set(METRIC.findall(expr))
