#!/usr/bin/env bash
# Checks deploy/prometheus with Debian's promtool: the config (promtool check config), the rules
# (promtool check rules), the alerts' behaviour on synthetic series (promtool test rules,
# deploy/prometheus/tests/ihip.rules.test.yml), and that every ihip_* metric the rules and the
# adapter rules use is one the services export. Then broken copies must each be rejected.
# Exit 0 pass, 1 fail, 77 skip (no promtool: install-deps.sh installs the prometheus package).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if ! command -v promtool >/dev/null; then
  echo "SKIP: promtool not installed (Debian package prometheus; deploy/local/install-deps.sh)"
  exit 77
fi
work=$(mktemp -d)
export IHIP_DEPLOY_TESTS=$here
trap 'rm -rf "$work"' EXIT

# check DIR: every check on a copy of deploy/prometheus in DIR; prints the first failure.
check() {
  local d=$1 out
  out=$(cd "$d" && promtool check config prometheus.yml 2>&1) || { echo "check config: ${out##*$'\n'}"; return 1; }
  out=$(cd "$d" && promtool check rules rules/*.yml 2>&1) || { echo "check rules: ${out##*$'\n'}"; return 1; }
  out=$(cd "$d" && promtool test rules tests/*.test.yml 2>&1) || { echo "test rules: $(grep -m1 -iE 'FAILED|expected|error' <<<"$out")"; return 1; }
  out=$(/usr/bin/python3 - "$d" <<'PY'
import pathlib, sys
import os; sys.path.insert(0, os.environ["IHIP_DEPLOY_TESTS"])
import deploy_common as dc
names = dc.source_metric_names()
d = pathlib.Path(sys.argv[1])
bad = []
for f in list((d / "rules").glob("*.yml")) + [d / "prometheus-adapter-rules.yaml"]:
    bad += [f"{f.name}: {m}" for m in dc.unknown_metrics(f.read_text(), names)]
print("; ".join(bad))
sys.exit(1 if bad else 0)
PY
  ) || { echo "metric names not exported by the services: $out"; return 1; }
  return 0
}

fresh() { rm -rf "$work/p"; cp -r "$root/deploy/prometheus" "$work/p"; }
failed=0
fresh
if msg=$(check "$work/p"); then
  echo "ok   deploy/prometheus: config, $(grep -c -- '- record:' "$root"/deploy/prometheus/rules/*.yml) recording and $(grep -c -- '- alert:' "$root"/deploy/prometheus/rules/*.yml) alert rules, rule unit tests, metric names"
else
  echo "FAIL deploy/prometheus: $msg"; failed=$((failed + 1))
fi

# negative controls: NAME, then a sed program applied to FILE in the copy
control() {
  local name=$1 file=$2 prog=$3 msg
  fresh
  cp "$work/p/$file" "$work/orig"
  sed -i -e "$prog" "$work/p/$file"
  if cmp -s "$work/orig" "$work/p/$file"; then echo "FAIL negative control \"$name\": the edit did not apply"; failed=$((failed + 1)); return; fi
  if msg=$(check "$work/p"); then
    echo "FAIL negative control \"$name\": accepted"; failed=$((failed + 1))
  else
    echo "ok   negative control \"$name\": rejected (${msg:0:110})"
  fi
}
control "PromQL syntax error" rules/ihip.rules.yml 's/rate(ihip_server_tokens_appended_total\[1m\])/rate(ihip_server_tokens_appended_total[1m]/'
control "misspelt metric" rules/ihip.rules.yml 's/ihip_server_kv_utilization) > 0.95/ihip_server_kv_utilisation) > 0.95/'
control "error-rate alert never fires" rules/ihip.rules.yml 's/ratio_rate5m > 0.05/ratio_rate5m > 0.5/'
control "kvstore-down alert on the wrong job" rules/ihip.rules.yml 's/up{job="ihip-kvstore"} == 0/up{job="kvstore"} == 0/'
control "crash alert without its for: clause" rules/ihip.rules.yml '/alert: IhipServerDown/,/for:/{/for:/d}'
control "config names a missing rule file" prometheus.yml 's#rules/ihip.rules.yml#rules/missing.yml#'
control "adapter serves a metric nobody exports" prometheus-adapter-rules.yaml 's/ihip_server_queue_length{/ihip_server_queue_depth{/'

if [ "$failed" -ne 0 ]; then echo "$failed check(s) failed"; exit 1; fi
echo "Prometheus config and rules: all checks passed"
