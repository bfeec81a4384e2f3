#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, over a copy staged by tests/device/stage.sh
# (carry [".device"]): the `gpu` tests, then the benchmarks, writing JSON and logs into OUT.
#   tests/device/run.sh OUT [tests] [sdpa] [cuda] [service] [kvstore]   (default: all)
# IHIP_CUDA_BENCH_FLAGS: extra flags for cuda_decode_bench (e.g. a shorter --contexts list).
# Prints a short summary last. Every step runs even if an earlier one failed; the exit status
# is non-zero when any test failed.
set -uo pipefail
out=${1:?usage: tests/device/run.sh OUT [steps...]}; shift
steps=${*:-tests sdpa cuda service kvstore}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.device/lib:/usr/local/cuda/lib64
bin=$PWD/.device/bin
# The commit staged (git on this machine may see another HEAD than the one built).
commit=$(cat .device/commit 2>/dev/null || echo unknown)
log=$out/log.txt
summary=()
failed=0
{
  date -u +%FT%TZ; uname -r; nproc
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
} > "$out/machine.txt" 2>&1

has() { [[ " $steps " == *" $1 "* ]]; }

if has tests; then
  for t in $(cat .device/gpu_tests.txt); do
    echo "=== $t" >> "$log"
    if timeout 900 "$bin/$t" --gtest_brief=1 >> "$log" 2>&1; then
      summary+=("PASS $t")
    else
      summary+=("FAIL $t"); failed=1
      echo "--- $t failed; its last lines:"; grep -E "Failure|FAILED|error|Expected|Which is|seed" "$log" | tail -15
    fi
  done
fi
if has sdpa; then
  echo "=== sdpa" >> "$log"
  PYTHONUNBUFFERED=1 timeout 1200 python3 tests/bench/sdpa_baseline.py --json "$out/sdpa.json" >> "$log" 2>&1 \
    && summary+=("OK sdpa") || summary+=("ERROR sdpa (see log)")
fi
if has cuda && [ -x "$bin/cuda_decode_bench" ]; then
  echo "=== cuda_decode_bench" >> "$log"
  timeout 1500 "$bin/cuda_decode_bench" ${IHIP_CUDA_BENCH_FLAGS:-} --git_commit="$commit" --json="$out/cuda_bench.json" \
    --markdown="$out/cuda_bench.md" >> "$log" 2>&1 && summary+=("OK cuda_decode_bench") \
    || summary+=("ERROR cuda_decode_bench (see log)")
fi
if has service; then
  for backend in cpu cuda; do
    echo "=== service ($backend backend)" >> "$log"
    if IHIP_BACKEND=$backend tests/device/service_bench.sh "$bin" "$out/service_$backend.json" \
        >> "$log" 2>&1; then
      summary+=("OK service bench, $backend backend")
    else
      summary+=("ERROR service bench, $backend backend (see log)")
    fi
  done
  if [ -x "$bin/grpc_floor_bench" ]; then
    echo "=== grpc_floor_bench" >> "$log"
    "$bin/grpc_floor_bench" --git_commit="$commit" --json="$out/grpc_floor.json" >> "$log" 2>&1 \
      && summary+=("OK grpc_floor_bench") || summary+=("ERROR grpc_floor_bench (see log)")
  fi
fi
if has kvstore && [ -x "$bin/kvstore_bench" ]; then
  echo "=== kvstore_bench" >> "$log"
  mkdir -p /var/tmp/ihip-kvbench
  timeout 900 "$bin/kvstore_bench" --dir=/var/tmp/ihip-kvbench --json="$out/kvstore.json" \
    --git_commit="$commit" >> "$log" 2>&1 \
    && summary+=("OK kvstore_bench") || summary+=("ERROR kvstore_bench (see log)")
fi
echo "=== summary"; printf '%s\n' "${summary[@]}"
exit $failed
