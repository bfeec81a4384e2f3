"""Shared by the deploy/ tests (run with Debian's /usr/bin/python3): the metric names the services
register, read from their source, and the PromQL of the Grafana dashboard with its variables
filled in."""
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/ihip-dashboard.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def source_metric_names():
    """Names in quotes that start with ihip_ in services/**/*.cc (where metrics are registered)."""
    names = set()
    for cc in (ROOT / "services").rglob("*.cc"):
        names.update(re.findall(r'"(ihip_[a-z0-9_]+)"', cc.read_text()))
    return names


def unknown_metrics(text, names):
    """ihip_* series names used in `text` that the services do not export."""
    bad = set()
    for used in re.findall(r"\b(ihip_[a-z0-9_]+)", text):
        base = used
        for suffix in HISTOGRAM_SUFFIXES:
            if used.endswith(suffix) and used[: -len(suffix)] in names:
                base = used[: -len(suffix)]
        if base not in names:
            bad.add(used)
    return sorted(bad)


def fill_variables(expr, rate_interval="1m"):
    """Grafana variables -> values Prometheus accepts ($pod is a regex; All = .*)."""
    return (expr.replace("$__rate_interval", rate_interval).replace("${datasource}", "prometheus")
            .replace("$pod", ".*"))


def dashboard_targets(dash):
    """(panel title, refId, expr) of every query in the dashboard."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t.get("refId"), t.get("expr", "")))
    return out


def load_dashboard():
    return json.loads(DASHBOARD.read_text())
