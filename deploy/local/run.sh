#!/usr/bin/env bash
# The README's main job. Installs what is missing, builds what is needed, starts ihip-kvstore
# (RocksDB under data/, durable) and ihip-server on loopback, waits until both serve, runs
# `ihip demo needle --context 131072` against the server, says where the metrics are, and stops
# both cleanly.
#   --keep-running   leave both services up afterwards (their pids and logs are printed)
# Other arguments go to the demo, e.g. deploy/local/run.sh --context=262144 --margin=2
# Environment: IHIP_DATA_DIR (default data/), IHIP_HOST_TIER_GIB (default 6: the CPU engine keeps
# a layer's KV pinned while it computes, so one layer must fit), IHIP_SERVER_PORT (50051),
# IHIP_KVSTORE_PORT (50052), IHIP_SERVER_METRICS_PORT (9101), IHIP_KVSTORE_METRICS_PORT (9102).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
keep=0
demo_args=()
for a in "$@"; do
  case "$a" in
    --keep-running) keep=1 ;;
    *) demo_args+=("$a") ;;
  esac
done

"$root/deploy/local/install-deps.sh"
"$root/deploy/local/build.sh" ihip ihip-server ihip-kvstore
build=${IHIP_BUILD_DIR:-$root/build}
data=${IHIP_DATA_DIR:-$root/data}
server_port=${IHIP_SERVER_PORT:-50051}
kv_port=${IHIP_KVSTORE_PORT:-50052}
server_metrics=${IHIP_SERVER_METRICS_PORT:-9101}
kv_metrics=${IHIP_KVSTORE_METRICS_PORT:-9102}
mkdir -p "$data/logs"
fifo_dir=$(mktemp -d)
kv_pid="" server_pid=""

stop() {
  [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ -n "$kv_pid" ] && kill -TERM "$kv_pid" 2>/dev/null && wait "$kv_pid" 2>/dev/null || true
  server_pid="" kv_pid=""
  rm -rf "$fifo_dir"
}
trap 'stop' INT TERM
trap '[ "$keep" = 1 ] || stop' EXIT

# wait_ready FILE PATTERN PID: until the service prints its ready line (it serves then).
wait_ready() {
  for _ in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "error: $2 never came; see $data/logs" >&2; return 1; }
    sleep 0.1
  done
  echo "error: timed out waiting for '$2'" >&2
  return 1
}

echo "starting ihip-kvstore (RocksDB in $data/kvstore, log $data/logs/ihip-kvstore.log)" >&2
"$build/services/kvstore/ihip-kvstore" --rocksdb_path="$data/kvstore" --durable \
  --segment_name="/ihip-kvstore-$(id -u)" --host_tier_gib="${IHIP_HOST_TIER_GIB:-6}" \
  --grpc_address="127.0.0.1:$kv_port" --metrics_host=127.0.0.1 --metrics_port="$kv_metrics" \
  >"$fifo_dir/kv.out" 2>>"$data/logs/ihip-kvstore.log" &
kv_pid=$!
wait_ready "$fifo_dir/kv.out" "ihip-kvstore ready" "$kv_pid"

echo "starting ihip-server (log $data/logs/ihip-server.log)" >&2
"$build/services/attention/ihip-server" --kvstore_address="127.0.0.1:$kv_port" \
  --grpc_address="127.0.0.1:$server_port" --metrics_host=127.0.0.1 \
  --metrics_port="$server_metrics" >"$fifo_dir/server.out" 2>>"$data/logs/ihip-server.log" &
server_pid=$!
wait_ready "$fifo_dir/server.out" "ihip-server ready" "$server_pid"
echo "metrics: http://127.0.0.1:$server_metrics/metrics (ihip-server)," \
     "http://127.0.0.1:$kv_metrics/metrics (ihip-kvstore)" >&2

rc=0
"$build/services/cli/ihip" demo needle --server="127.0.0.1:$server_port" --context=131072 \
  ${demo_args[@]+"${demo_args[@]}"} || rc=$?

if [ "$keep" = 1 ]; then
  echo "services keep running: ihip-server pid $server_pid (127.0.0.1:$server_port)," \
       "ihip-kvstore pid $kv_pid (127.0.0.1:$kv_port); stop them with: kill $server_pid $kv_pid" >&2
else
  stop
  echo "stopped ihip-server and ihip-kvstore" >&2
fi
exit "$rc"
