#!/usr/bin/env bash
# Installs the Debian 12 packages InfiniteHiP builds and runs with (DESIGN §7) that are missing.
# Idempotent and quiet: when everything is there it only asks dpkg (well under a second).
set -euo pipefail

IHIP_PACKAGES=(
  cmake ninja-build ccache g++ pkg-config
  protobuf-compiler libprotobuf-dev protobuf-compiler-grpc libgrpc++-dev
  libabsl-dev librocksdb-dev prometheus-cpp-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-grpcio python3-grpc-tools python3-numpy
)

missing=()
for p in "${IHIP_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing missing packages: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
