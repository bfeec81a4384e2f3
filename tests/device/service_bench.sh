#!/usr/bin/env bash
# service_bench.sh BIN_DIR JSON: starts ihip-kvstore and ihip-server (CPU backend unless
# IHIP_BACKEND says otherwise) on 127.0.0.1 with free ports, runs `ihip bench` at 128K, writes
# its JSON, and stops both. Used by tests/device/run.sh on the GPU machine (16 cores).
set -euo pipefail
bin=$1; json=$2
work=$(mktemp -d); seg=/ihip-bench-$$
cleanup() {
  [ -n "${srv:-}" ] && kill -TERM "$srv" 2>/dev/null; [ -n "${kv:-}" ] && kill -TERM "$kv" 2>/dev/null
  wait 2>/dev/null; rm -rf "$work"; rm -f "/dev/shm$seg"
}
trap cleanup EXIT
"$bin/ihip-kvstore" --segment_name="$seg" --host_tier_gib=4 --grpc_address=127.0.0.1:0 --metrics_port=0 \
  --rocksdb_path="$work/kv" > "$work/kv.out" 2> "$work/kv.err" & kv=$!
for _ in $(seq 100); do grep -q ready "$work/kv.out" 2>/dev/null && break; sleep 0.1; done
kvport=$(sed -n 's/.*grpc_port=\([0-9]*\).*/\1/p' "$work/kv.out")
"$bin/ihip-server" --grpc_address=127.0.0.1:0 --metrics_port=0 --kvstore_address="127.0.0.1:$kvport" \
  --backend="${IHIP_BACKEND:-cpu}" > "$work/srv.out" 2> "$work/srv.err" & srv=$!
for _ in $(seq 300); do grep -q ready "$work/srv.out" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*grpc_port=\([0-9]*\).*/\1/p' "$work/srv.out")
[ -n "$port" ] || { cat "$work/srv.err"; exit 1; }
"$bin/ihip" bench --server="127.0.0.1:$port" --context=131072 --steps=${IHIP_BENCH_STEPS:-500} --warmup=20 && \
"$bin/ihip" bench --server="127.0.0.1:$port" --context=131072 --steps=${IHIP_BENCH_STEPS:-500} --warmup=20 --json > "$json"
