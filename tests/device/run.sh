#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, over a copy staged by tests/device/stage.sh
# (carry [".device"]): the `gpu` tests, then the benchmarks, writing JSON and logs into OUT.
#   tests/device/run.sh OUT [tests] [sdpa] [cuda] [service] [kvstore] [disk]
#   (default: all but disk)
# IHIP_CUDA_BENCH_FLAGS: extra flags for cuda_decode_bench (e.g. a shorter --contexts list).
# Prints a short summary last. Every step runs even if an earlier one failed; the exit status
# is non-zero when any test failed.
set -uo pipefail
out=${1:?usage: tests/device/run.sh OUT [steps...]}; shift
steps=${*:-tests sdpa cuda service kvstore}
mkdir -p "$out"
# stage.sh packs the binaries and libraries into one archive.
if [ -f .device/pack.tar.xz ] && [ ! -d .device/bin ]; then
  (cd .device && xz -dc pack.tar.xz | tar xf -)
fi
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
if has disk && [ -x "$bin/disk_tier_bench" ]; then
  # The spill's RocksDB settings, side by side on this disk (2 GiB each, WAL off as the store's
  # spills), with each run's RocksDB LOG for the flush timeline; then dd with 4 writers at once
  # (does the disk scale with queue depth?).
  mkdir -p /var/tmp/ihip-disk "$out/disk"
  i=0
  while read -r name flags; do
    i=$((i + 1))
    echo "=== disk_tier_bench $name: $flags" >> "$log"
    timeout 300 "$bin/disk_tier_bench" --gib=2 --dir=/var/tmp/ihip-disk --wal=false \
      --fetch_back=false --dd_mib=$([ $i = 1 ] && echo 2048 || echo 0) $flags \
      --rocksdb_log="$out/disk/$name.LOG" --json="$out/disk/$name.json" >> "$log" 2>&1 \
      && summary+=("OK disk $name") || summary+=("ERROR disk $name (see log)")
  done <<'CONFIGS'
auto
memtables4 --memtables=4
buffer32 --write_buffer_mib=32
jobs32 --jobs=32
writers2 --writers=2
CONFIGS
  echo "=== dd, 4 writers at once" >> "$log"
  for k in 0 1 2 3; do
    dd if=/dev/zero of=/var/tmp/ihip-disk/dd$k bs=1M count=1024 oflag=direct >> "$log" 2>&1 &
  done
  start=$(date +%s%N); wait; end=$(date +%s%N)
  echo "4 x 1 GiB with O_DIRECT at once: $(( (end - start) / 1000000 )) ms" >> "$log"
  rm -f /var/tmp/ihip-disk/dd*
fi
echo "=== summary"; printf '%s\n' "${summary[@]}"
exit $failed
