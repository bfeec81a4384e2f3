#!/usr/bin/env bash
# Builds what the GPU machine runs and stages it into .device/ (binaries + their non-CUDA shared
# libraries, stripped; see ../shared/tools/stage-for-device), with the list of `gpu`-labelled
# tests. Then call the device tool with carry [".device"] and run tests/device/run.sh there.
#   tests/device/stage.sh [gpu] [bench] [service] [disk]   (default: gpu)
# gpu: the gpu-labelled tests and cuda_decode_bench; bench: cuda_decode_bench alone; service:
# ihip-server, ihip-kvstore, ihip, kvstore_bench and grpc_floor_bench (with gRPC and RocksDB,
# ~35 MiB of libraries); disk: kvstore_bench and disk_tier_bench (RocksDB). gpu + service pass
# the 64 MiB a device call carries; bench + service and gpu + disk fit.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${IHIP_BUILD_DIR:-build}
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude

# The gpu-labelled tests, as ctest knows them.
deploy/local/build.sh >/dev/null
mapfile -t gpu_tests < <(cd "$build" && ctest -L gpu -N -V | sed -n 's/^[0-9]*: Test command: //p' \
  | awk '{print $1}')
sets=" ${*:-gpu} "
bins=()
wanted=()
if [[ $sets == *" gpu "* ]]; then
  bins+=("${gpu_tests[@]}")
fi
if [[ $sets == *" gpu "* || $sets == *" bench "* ]]; then
  wanted+=(tests/bench/cuda_decode_bench)
fi
if [[ $sets == *" service "* ]]; then
  wanted+=(tests/bench/kvstore_bench tests/bench/grpc_floor_bench services/attention/ihip-server
           services/kvstore/ihip-kvstore services/cli/ihip)
fi
if [[ $sets == *" disk "* ]]; then
  wanted+=(tests/bench/kvstore_bench tests/kvstore/disk_tier_bench)
fi
for b in "${wanted[@]}"; do
  [ -x "$build/$b" ] && bins+=("$build/$b")
done
rm -rf .device
../shared/tools/stage-for-device .device "${bins[@]}" >/dev/null
strip .device/bin/* .device/lib/* 2>/dev/null || true
if [[ $sets == *" gpu "* ]]; then
  printf '%s\n' "${gpu_tests[@]}" | xargs -n1 basename > .device/gpu_tests.txt
else
  : > .device/gpu_tests.txt
fi
git rev-parse --short HEAD > .device/commit
# Fatbins compress well (78 MB -> 13 MB): the call carries one xz archive, run.sh unpacks it.
# Extra binaries may be added before packing with IHIP_STAGE_EXTRA="path[:name] ...".
for extra in ${IHIP_STAGE_EXTRA:-}; do
  src=${extra%%:*}; name=${extra#*:}; [ "$name" = "$extra" ] && name=$(basename "$src")
  cp "$src" ".device/bin/$name" && strip ".device/bin/$name"
done
(cd .device && tar cf - bin lib | xz -T2 -3 > pack.tar.xz && rm -rf bin lib)
du -sh .device
