#!/usr/bin/env bash
# Configures (once) and builds InfiniteHiP with Ninja and ccache. Usage: build.sh [targets...]
# The build folder is $IHIP_BUILD_DIR (default: build/ at the repository root). -j2 by default
# (CI has two cores); override with IHIP_JOBS.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${IHIP_BUILD_DIR:-$root/build}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache >/dev/null
fi
targets=()
for t in "$@"; do targets+=(--target "$t"); done
cmake --build "$build" -j "${IHIP_JOBS:-2}" "${targets[@]}"
