#!/usr/bin/python3
"""A real scrape: starts ihip-kvstore and ihip-server (CPU backend, loopback, free ports, a unique
shm segment, RocksDB in a temp dir) and Debian's Prometheus server (loopback, free port, temp
TSDB, scraping both every second and evaluating deploy/prometheus/rules/ihip.rules.yml), runs a
short load with `ihip bench` plus one call that fails with NOT_FOUND, then asks Prometheus' HTTP
API for the expected series with non-zero values, for the recording rules' results, and for a
non-empty answer to every query of the Grafana dashboard. Stops everything (SIGTERM; the services
must exit 0) and checks that nothing is left in /dev/shm.
Exit 0 pass, 1 fail, 77 skip (only when the prometheus binary is missing)."""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import deploy_common as dc

RULES = dc.ROOT / "deploy/prometheus/rules/ihip.rules.yml"

# (PromQL, what it shows) - each must return at least one series, all values > 0.
EXPECTED = [
    ('up{job="ihip-server"}', "ihip-server scraped"),
    ('up{job="ihip-kvstore"}', "ihip-kvstore scraped"),
    ('ihip_server_requests_total{method="Attend",code="OK"}', "unary Attend calls counted"),
    ('ihip_server_requests_total{method="AttendStream",code="OK"}', "AttendStream messages counted"),
    ('ihip_server_requests_total{method="AppendKV",code="OK"}', "AppendKV calls counted"),
    ('sum(ihip_server_requests_total{code="NOT_FOUND"})', "the failed call counted by its code"),
    ('ihip_server_request_seconds_count{method="Attend",phase="total"}', "latency histogram filled"),
    ('ihip_server_tokens_attended_total', "query tokens attended"),
    ('ihip_server_tokens_appended_total', "KV tokens appended"),
    ('sum(ihip_server_mask_refreshes_total)', "decode steps by refresh stage"),
    ('ihip_server_attended_keys_per_query_count', "attended-keys histogram filled"),
    ('ihip_server_kvstore_up', "the server sees its kvstore"),
    ('ihip_server_kv_blocks_total', "the server mirrors the host tier's size"),
    ('ihip_kvstore_slots', "host tier slots"),
    ('ihip_kvstore_clients', "ihip-server attached to the kvstore"),
    ('ihip_kvstore_ring_requests_total{op="allocate",code="OK"}', "ring: pages allocated"),
    ('ihip_kvstore_ring_requests_total{op="commit",code="OK"}', "ring: pages committed"),
    ('ihip_kvstore_ring_requests_total{op="create_sequence",code="OK"}', "ring: sequence created"),
    ('ihip_kvstore_pool_populate_seconds', "pool populated at start"),
    ('ihip:server_requests:rate1m{method="Attend",code="OK"}', "recording rule: request rate"),
    ('ihip:server_tokens_attended:rate1m', "recording rule: tokens/s"),
    ('ihip:server_request_seconds:p99_5m{method="AttendStream"}', "recording rule: p99 latency"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A child process whose stdout is read until its ready line."""

    def __init__(self, name, argv, log_dir):
        self.name = name
        self.log = open(os.path.join(log_dir, f"{name}.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def ready(self, prefix, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(prefix):
                return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        raise RuntimeError(f"{self.name} did not print '{prefix}' (see {self.log.name})")

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def query(prom, expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def wait_http(url, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def run(args, tmp):
    services = []
    failures = []
    segment = f"/ihip-scrape-test-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    try:
        kv = Service("ihip-kvstore", [args.kvstore_bin, f"--segment_name={segment}", "--host_tier_gib=0.5",
                                      f"--rocksdb_path={tmp}/rocksdb", "--grpc_address=127.0.0.1:0",
                                      "--metrics_host=127.0.0.1", "--metrics_port=0"], tmp)
        services.append(kv)
        kv_ready = kv.ready("ihip-kvstore ready")
        server = Service("ihip-server", [args.server_bin, f"--kvstore_address=127.0.0.1:{kv_ready['grpc_port']}",
                                         "--grpc_address=127.0.0.1:0", "--metrics_host=127.0.0.1", "--metrics_port=0",
                                         "--backend=cpu", "--threads=2", "--workers=2"], tmp)
        services.append(server)
        srv_ready = server.ready("ihip-server ready")

        prom = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "ihip-server", "static_configs": [
                    {"targets": [f"127.0.0.1:{srv_ready['metrics_port']}"], "labels": {"pod": "local", "namespace": "test"}}]},
                {"job_name": "ihip-kvstore", "static_configs": [
                    {"targets": [f"127.0.0.1:{kv_ready['metrics_port']}"], "labels": {"pod": "local", "namespace": "test"}}]},
            ],
        }
        with open(f"{tmp}/prometheus.yml", "w") as f:
            json.dump(config, f)
        prometheus = Service("prometheus", [args.prometheus, f"--config.file={tmp}/prometheus.yml",
                                            f"--storage.tsdb.path={tmp}/tsdb", f"--web.listen-address=127.0.0.1:{prom}",
                                            "--storage.tsdb.retention.time=1h"], tmp)
        services.append(prometheus)
        if not wait_http(f"http://127.0.0.1:{prom}/-/ready", 60):
            raise RuntimeError(f"prometheus did not become ready (see {tmp}/prometheus.log)")
        print(f"started ihip-kvstore (segment {segment}), ihip-server and prometheus on 127.0.0.1:{prom}")

        # A counter's series appears with its first request, and rate() sees no increase across
        # its first sample: one small warm-up run creates every method's series, Prometheus
        # scrapes them, then the load runs.
        address = f"--server=127.0.0.1:{srv_ready['grpc_port']}"

        def bench(context, steps, warmup):
            r = subprocess.run([args.cli_bin, "bench", address, f"--context={context}", f"--steps={steps}",
                                f"--warmup={warmup}"], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"ihip bench failed ({r.returncode}): {r.stderr.strip()}")
        bench(512, 1, 0)
        deadline = time.time() + 30
        while time.time() < deadline and not query(prom, 'ihip_server_requests_total{method="AttendStream"}'):
            time.sleep(0.5)
        time.sleep(2.5)
        bench(4096, 20, 2)
        missing = subprocess.run([args.cli_bin, "stats", address, "--id=no-such-sequence"], capture_output=True, text=True, timeout=60)
        if missing.returncode != 2 or "NOT_FOUND" not in missing.stderr:
            raise RuntimeError(f"ihip stats of an unknown sequence: expected NOT_FOUND, got {missing.returncode}: {missing.stderr.strip()}")
        print("load done: ihip bench --context=4096 --steps=20, ihip stats --id=no-such-sequence (NOT_FOUND)")

        # Wait (up to 45 s) for scrapes and rule evaluations that see the load.
        pending = list(EXPECTED)
        deadline = time.time() + 45
        while pending and time.time() < deadline:
            still = []
            for expr, what in pending:
                result = query(prom, expr)
                if not result or not all(float(r["value"][1]) > 0 for r in result):
                    still.append((expr, what))
            pending = still
            if pending:
                time.sleep(1)
        for expr, what in EXPECTED:
            if (expr, what) in pending:
                failures.append(f"{expr} ({what}): {query(prom, expr) or 'no series'}")
            else:
                value = query(prom, expr)[0]["value"][1]
                print(f"ok   {what}: {expr} = {float(value):g}")

        # Every dashboard query answers with data from this deployment (a series created by the
        # last call needs two scrapes before rate() over it has a value: poll).
        dash = dc.load_dashboard()
        targets = dc.dashboard_targets(dash)
        empty = targets
        deadline = time.time() + 20
        while empty and time.time() < deadline:
            empty = [(t, r, e) for t, r, e in empty if not query(prom, dc.fill_variables(e, "30s"))]
            if empty:
                time.sleep(1)
        if empty:
            failures.append("dashboard queries without data: " + ", ".join(f"{t} {r}" for t, r, _ in empty))
        else:
            print(f"ok   all {len(targets)} dashboard queries return series")
    finally:
        for s in reversed(services):
            rc = s.stop()
            if s.name != "prometheus" and rc != 0:
                failures.append(f"{s.name} exited {rc} on SIGTERM (see {s.log.name})")
        left = [f for f in os.listdir("/dev/shm") if f == segment.lstrip("/")]
        if left:
            failures.append(f"left in /dev/shm: {left}")
            for f in left:
                os.unlink(os.path.join("/dev/shm", f))
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--server_bin", required=True)
    ap.add_argument("--kvstore_bin", required=True)
    ap.add_argument("--cli_bin", required=True)
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    args = ap.parse_args()
    if not os.access(args.prometheus, os.X_OK):
        print("SKIP: the prometheus binary is not installed (Debian package prometheus; deploy/local/install-deps.sh)")
        return 77
    tmp = tempfile.mkdtemp(prefix="ihip-scrape-")
    try:
        failures = run(args, tmp)
    except Exception as e:  # a service that did not start, a failed load: report, with the logs
        failures = [str(e)]
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        for log in ("ihip-kvstore.log", "ihip-server.log", "prometheus.log"):
            p = os.path.join(tmp, log)
            if os.path.exists(p):
                print(f"--- last lines of {log}\n" + "".join(open(p).readlines()[-15:]))
        shutil.rmtree(tmp, ignore_errors=True)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("Prometheus scrape: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
