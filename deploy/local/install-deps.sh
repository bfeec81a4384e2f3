#!/usr/bin/env bash
# Installs the Debian 12 packages InfiniteHiP builds and runs with (DESIGN §7) that are missing,
# Prometheus (promtool and the server: the deploy/ tests), and the npm packages of the deploy/
# checks (tests/deploy, pinned by its package-lock.json). Idempotent and quiet: when everything
# is there it only asks dpkg and compares one checksum (well under a second).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

IHIP_PACKAGES=(
  cmake ninja-build ccache g++ pkg-config
  protobuf-compiler libprotobuf-dev protobuf-compiler-grpc libgrpc++-dev
  libabsl-dev librocksdb-dev prometheus-cpp-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-grpcio python3-grpc-tools python3-numpy
  prometheus
)
# Node.js runs the deploy/ checks; Debian's is enough where none is installed.
command -v npm >/dev/null || IHIP_PACKAGES+=(nodejs npm)

missing=()
for p in "${IHIP_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -ne 0 ]; then
  echo "installing missing packages: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages of tests/deploy, reinstalled only when package-lock.json changes. A failure here
# does not stop the build: the deploy tests then fail and say that their modules are missing.
deploy_js="$root/tests/deploy"
stamp="$deploy_js/node_modules/.ihip-package-lock.sha256"
want=$(sha256sum "$deploy_js/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing the npm packages of tests/deploy (npm ci)" >&2
  if (cd "$deploy_js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    echo "$want" >"$stamp"
  else
    echo "warning: npm ci in tests/deploy failed; the deploy_* tests will fail" >&2
  fi
fi
