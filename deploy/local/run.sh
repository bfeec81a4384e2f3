#!/usr/bin/env bash
# The README's main job. Installs what is missing, builds what is needed, and runs the needle
# demo in-process: `ihip demo needle --context 131072` (the ihip-kvstore and ihip-server
# services are not built yet; see the README's status). Extra arguments go to the demo, e.g.
#   deploy/local/run.sh --context=1048576 --refresh=flash
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
"$root/deploy/local/install-deps.sh"
"$root/deploy/local/build.sh" ihip
build=${IHIP_BUILD_DIR:-$root/build}
exec "$build/services/cli/ihip" demo needle --context=131072 "$@"
