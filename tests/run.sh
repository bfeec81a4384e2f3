#!/usr/bin/env bash
# The README's test command: installs missing Debian packages, builds everything (-j2), runs
# every ctest test. Exits non-zero when anything fails. Tests labelled `gpu` skip themselves on
# a machine without a GPU. Extra arguments go to ctest (e.g. -R rope, -L gpu).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/deploy/local/install-deps.sh"
"$root/deploy/local/build.sh"
build=${IHIP_BUILD_DIR:-$root/build}
cd "$build"
ctest --output-on-failure -j "${IHIP_JOBS:-2}" "$@"
