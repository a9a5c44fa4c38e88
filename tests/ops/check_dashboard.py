#!/usr/bin/env python3
"""Static checks of the Grafana kit in dashboards/: the dashboard's structure (datasource variable on every
panel and query, ids, a non-overlapping grid), its PromQL (every range is $__rate_interval, quantiles over
_bucket series by le, every metric troupe exports that the issue asks for is charted), the provisioning
files, and promtool: `check rules` on every panel query turned into a recording rule and `check config` on
the sample prometheus.yml. Usage: check_dashboard.py SOURCE_DIR. Exit 77 (skip) only without promtool."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard  # noqa: E402

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
DS = {"type": "prometheus", "uid": "${datasource}"}
# What the issue asks the dashboard to chart.
REQUIRED = {
    "troupe_time_to_first_token_seconds_bucket", "troupe_inter_token_latency_seconds_bucket",
    "troupe_e2e_request_latency_seconds_bucket", "troupe_request_queue_time_seconds_bucket",
    "troupe_step_duration_seconds_bucket", "troupe_prompt_tokens_total", "troupe_generation_tokens_total",
    "troupe_requests_total", "troupe_requests_running", "troupe_requests_waiting",
    "troupe_kv_cache_usage_ratio", "troupe_prefix_cache_hits_total", "troupe_prefix_cache_queries_total",
    "troupe_preemptions_total", "troupe_api_errors_total",
}
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    return ok


def exported_names():
    """Series names troupe can export, read from the registrations in core/ and gateway/."""
    names = set()
    for rel in ("core/metrics.cpp", "gateway/gateway_metrics.cpp"):
        with open(os.path.join(ROOT, rel)) as f:
            src = f.read()
        for kind, name in re.findall(r"(make_histogram|make_counter|make_gauge|counter_family|gauge_family|"
                                     r"histogram_family)\(\s*\"(troupe_\w+)\"", src):
            names.update({name + s for s in ("_bucket", "_sum", "_count")} if "histogram" in kind else {name})
    return names


def check_structure(dash):
    check(dash.get("schemaVersion", 0) >= 36, "schemaVersion >= 36 (Grafana 9.4+/10)")
    check(dash.get("uid") and dash.get("title"), "uid and title set")
    check(dash.get("id") is None, "id null (Grafana assigns it; a fixed id breaks provisioning elsewhere)")
    variables = dashboard.variables(dash)
    ds = variables.get("datasource", {})
    check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
          "a template variable 'datasource' of type datasource over Prometheus")
    for name, v in variables.items():
        if v.get("type") == "query":
            check(v.get("datasource") == DS, f"variable {name} queries ${{datasource}}")
    ids, boxes = set(), []
    for p in dashboard.panels(dash):
        title = p.get("title", "?")
        check(p.get("id") not in ids, f"panel id {p.get('id')} unique ({title})")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        check(all(k in g for k in "hwxy") and g["x"] + g["w"] <= 24, f"gridPos inside 24 columns ({title})")
        for (bt, b) in boxes:
            if g and g["x"] < b["x"] + b["w"] and b["x"] < g["x"] + g["w"] and g["y"] < b["y"] + b["h"] and \
                    b["y"] < g["y"] + g["h"]:
                failures.append(f"panels overlap: {title} / {bt}")
        boxes.append((title, g))
        if p.get("type") == "row":
            continue
        check(p.get("datasource") == DS, f"panel uses ${{datasource}} ({title})")
        targets = p.get("targets") or []
        check(targets, f"panel has queries ({title})")
        refs = [t.get("refId") for t in targets]
        check(len(set(refs)) == len(refs), f"refIds unique ({title})")
        for t in targets:
            check(t.get("datasource") == DS, f"query {t.get('refId')} uses ${{datasource}} ({title})")


def check_queries(dash):
    known = set(dashboard.variables(dash)) | dashboard.BUILTINS
    exported = exported_names()
    used = set()
    for title, ref, expr in dashboard.queries(dash):
        where = f"{title} {ref}: {expr}"
        check(expr.strip(), f"empty query ({title} {ref})")
        check(dashboard.variable_names(expr) <= known, f"unknown variable in {where}")
        for r in re.findall(r"\[([^\]]*)\]", expr):
            check(r == "$__rate_interval", f"range [{r}] is not [$__rate_interval] in {where}")
        if "histogram_quantile(" in expr:
            check("_bucket" in expr and re.search(r"by \(le\b|by \([^)]*\ble\b", expr),
                  f"histogram_quantile over _bucket series summed by le in {where}")
        names = dashboard.metric_names(expr)
        check(names, f"no troupe metric in {where}")
        for n in names:
            check(n in exported, f"{n} is not a series troupe exports ({where})")
        used |= names
    for n in sorted(REQUIRED - used):
        failures.append(f"no panel charts {n}")


def check_provisioning():
    prov = os.path.join(ROOT, "dashboards", "provisioning")
    with open(os.path.join(prov, "datasources", "troupe.yaml")) as f:
        ds = f.read()
    check(re.search(r"^apiVersion: 1$", ds, re.M) and re.search(r"^\s*type: prometheus$", ds, re.M) and
          re.search(r"^\s*url: http", ds, re.M), "datasources/troupe.yaml provisions a Prometheus datasource")
    with open(os.path.join(prov, "dashboards", "troupe.yaml")) as f:
        db = f.read()
    check(re.search(r"^apiVersion: 1$", db, re.M) and re.search(r"^\s*type: file$", db, re.M) and
          re.search(r"^\s*path: \S+", db, re.M), "dashboards/troupe.yaml is a file provider with a path")


def promtool_checks(promtool, dash, tmp):
    values = {name: ".*" for name in dashboard.variables(dash)}
    values.update({"__rate_interval": "1m", "__interval": "15s", "__range": "1h"})
    rules = []
    for p in dashboard.panels(dash):
        for t in p.get("targets") or []:
            rules.append({"record": f"troupe_dashboard:panel_{p['id']}_{t['refId']}",
                          "expr": dashboard.substitute(t["expr"], values, ".*")})
    path = os.path.join(tmp, "dashboard_rules.yml")
    with open(path, "w") as f:
        json.dump({"groups": [{"name": "troupe_dashboard", "rules": rules}]}, f, indent=1)  # JSON is YAML
    r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True, timeout=60)
    check(r.returncode == 0 and f"{len(rules)} rules found" in r.stdout,
          f"promtool check rules on the {len(rules)} panel queries: {r.stdout}{r.stderr}")
    sample = os.path.join(ROOT, "dashboards", "prometheus.yml")
    r = subprocess.run([promtool, "check", "config", sample], capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, f"promtool check config dashboards/prometheus.yml: {r.stdout}{r.stderr}")
    return len(rules)


def main():
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool") or "/usr/bin/promtool"
    if not os.access(promtool, os.X_OK):
        print(f"SKIP: promtool not found ({promtool}); install the Debian package prometheus")
        return 77
    dash = dashboard.load(ROOT)
    check_structure(dash)
    check_queries(dash)
    check_provisioning()
    with tempfile.TemporaryDirectory(prefix="troupe-ops-") as tmp:
        n = promtool_checks(promtool, dash, tmp)
    for f in failures:
        print("FAIL:", f)
    if failures:
        return 1
    print(f"ok: {sum(1 for _ in dashboard.panels(dash))} panels, {n} queries; promtool check rules and "
          "check config pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
