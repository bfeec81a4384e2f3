#!/usr/bin/python3
"""Checks deploy/grafana/ihip-dashboard.json: its structure (unique ids, a 24-column grid without
overlaps, every query on the ${datasource} variable, unique refIds), that it covers what issue 6
asks (requests and latency by method, tokens/s, KV by tier, the GPU-cache panel, refreshes by
stage, spills and fetch-backs), that every ihip_* metric it queries is one the services export,
and that every query is valid PromQL (promtool check rules on the queries as recording rules).
Then broken copies must each be rejected. Exit 0 pass, 1 fail, 77 skip (no promtool)."""
import copy
import json
import shutil
import subprocess
import sys
import tempfile

import deploy_common as dc

PANEL_TYPES = {"timeseries", "row", "stat", "gauge", "bargauge", "table", "heatmap", "text"}
# (what the issue asks, predicate over (title, exprs) of a panel)
REQUIRED = [
    ("requests by method", lambda t, e: any("ihip_server_requests_total" in x and "by (method" in x for x in e)),
    ("latency by method", lambda t, e: any("ihip_server_request_seconds_bucket" in x and "method" in x and "histogram_quantile" in x for x in e)),
    ("tokens/s", lambda t, e: any("rate(ihip_server_tokens_attended_total" in x for x in e) and any("rate(ihip_server_tokens_appended_total" in x for x in e)),
    ("KV by tier", lambda t, e: any("ihip_kvstore_bytes" in x and "by (tier)" in x for x in e)),
    ("GPU cache hit ratio (what exists)", lambda t, e: "GPU cache" in t and len(e) > 0),
    ("refreshes by stage", lambda t, e: any("ihip_server_mask_refreshes_total" in x and "by (stage)" in x for x in e)),
    ("spills and fetch-backs", lambda t, e: any("ihip_kvstore_spilled_bytes_total" in x for x in e) and any("ihip_kvstore_fetched_back_bytes_total" in x for x in e)),
]


def structure_errors(dash, names, promtool):
    errors = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time", "refresh"):
        if key not in dash:
            errors.append(f"missing top-level {key}")
    if errors:
        return errors
    variables = {v.get("name") for v in dash["templating"].get("list", [])}
    if not {"datasource", "pod"} <= variables:
        errors.append(f"needs the datasource and pod variables, has {sorted(variables)}")
    ids, cells = set(), {}
    for p in dash["panels"]:
        pid, title = p.get("id"), p.get("title", "?")
        if p.get("type") not in PANEL_TYPES:
            errors.append(f"panel {title}: unknown type {p.get('type')}")
        if pid in ids or not isinstance(pid, int):
            errors.append(f"panel {title}: id {pid} missing or not unique")
        ids.add(pid)
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            errors.append(f"panel {title}: gridPos {g} outside the 24-column grid")
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    errors.append(f"panel {title} overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = title
            else:
                continue
            break
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(f"panel {title}: datasource must be the ${{datasource}} variable")
        targets = p.get("targets", [])
        refs = [t.get("refId") for t in targets]
        if not targets or len(set(refs)) != len(refs) or not all(t.get("expr") for t in targets):
            errors.append(f"panel {title}: needs targets with unique refIds and an expr each")
    panels = [(p.get("title", ""), [t.get("expr", "") for t in p.get("targets", [])]) for p in dash["panels"]]
    for what, pred in REQUIRED:
        if not any(pred(t, e) for t, e in panels):
            errors.append(f"no panel shows {what}")
    for title, _, expr in dc.dashboard_targets(dash):
        bad = dc.unknown_metrics(expr, names)
        if bad:
            errors.append(f"panel {title}: {', '.join(bad)} not exported by the services")
    errors += promql_errors(dash, promtool)
    return errors


def promql_errors(dash, promtool):
    """promtool parses each query (as a recording rule of a throw-away rules file)."""
    targets = dc.dashboard_targets(dash)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": dc.fill_variables(e)} for i, (_, _, e) in enumerate(targets)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        json.dump(rules, f)  # JSON is YAML
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        return [f"promtool rejects a query: {(r.stdout + r.stderr).strip().splitlines()[-1]}"]
    return []


def main():
    promtool = shutil.which("promtool")
    if promtool is None:
        print("SKIP: promtool not installed (Debian package prometheus; deploy/local/install-deps.sh)")
        return 77
    names = dc.source_metric_names()
    dash = dc.load_dashboard()
    failed = 0
    errors = structure_errors(dash, names, promtool)
    if errors:
        failed += 1
        print("FAIL ihip-dashboard.json:\n  " + "\n  ".join(errors))
    else:
        print(f"ok   ihip-dashboard.json: {len(dash['panels'])} panels, "
              f"{len(dc.dashboard_targets(dash))} queries valid PromQL on exported metrics; covers {len(REQUIRED)} required views")

    def mutate(fn):
        d = copy.deepcopy(dash)
        fn(d)
        return d

    def query(d, title):
        return next(p for p in d["panels"] if p["title"] == title)["targets"][0]
    controls = {
        "misspelt metric": lambda d: query(d, "Requests by method").update(expr=query(d, "Requests by method")["expr"].replace("requests_total", "request_total")),
        "broken PromQL": lambda d: query(d, "Tokens/s").update(expr="sum(rate(ihip_server_tokens_attended_total[1m])"),
        "duplicate panel id": lambda d: d["panels"][3].update(id=d["panels"][2]["id"]),
        "overlapping panels": lambda d: d["panels"][3]["gridPos"].update(x=d["panels"][2]["gridPos"]["x"], y=d["panels"][2]["gridPos"]["y"]),
        "wider than the grid": lambda d: d["panels"][2]["gridPos"].update(w=30),
        "hard-wired datasource": lambda d: d["panels"][2].update(datasource={"type": "prometheus", "uid": "prom-1"}),
        "no refreshes-by-stage panel": lambda d: d["panels"].remove(next(p for p in d["panels"] if p["title"] == "Mask refreshes by stage")),
        "KV not split by tier": lambda d: query(d, "KV by tier").update(expr="sum(ihip_kvstore_bytes)"),
        "no pod variable": lambda d: d["templating"]["list"].pop(),
    }
    for what, fn in controls.items():
        errs = structure_errors(mutate(fn), names, promtool)
        if errs:
            print(f'ok   negative control "{what}": rejected ({errs[0][:100]})')
        else:
            failed += 1
            print(f'FAIL negative control "{what}": accepted')
    if failed:
        print(f"{failed} check(s) failed")
        return 1
    print("Grafana dashboard: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
