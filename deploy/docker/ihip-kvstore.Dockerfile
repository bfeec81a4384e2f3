# syntax=docker/dockerfile:1
# ihip-kvstore: the KV store (host tier in POSIX shared memory, disk tier in RocksDB). No CUDA.
# Build from the repository root:
#   docker build -f deploy/docker/ihip-kvstore.Dockerfile -t ihip-kvstore .
# README.md beside this file says how to run it (it needs a /dev/shm as large as its host tier).

ARG DEBIAN_IMAGE=debian:12
ARG RUNTIME_IMAGE=debian:12-slim
ARG GO_IMAGE=golang:1.24-bookworm

# --- grpc_health_probe (not packaged by Debian): a static Go binary for HEALTHCHECK ------------
FROM ${GO_IMAGE} AS probe
ARG GRPC_HEALTH_PROBE_VERSION=v0.4.40
RUN CGO_ENABLED=0 go install \
      "github.com/grpc-ecosystem/grpc-health-probe@${GRPC_HEALTH_PROBE_VERSION}" \
 && cp "$(go env GOPATH)/bin/grpc-health-probe" /grpc_health_probe

# --- build: Debian 12 packages only (no nvcc: CMake then builds without the CUDA backend) --------
FROM ${DEBIAN_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake ninja-build g++ pkg-config \
      protobuf-compiler libprotobuf-dev protobuf-compiler-grpc libgrpc++-dev \
      libabsl-dev librocksdb-dev prometheus-cpp-dev libcpp-httplib-dev \
      libgtest-dev libgmock-dev libbenchmark-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY proto proto
COPY kvstore kvstore
COPY engine engine
COPY services services
COPY tests tests
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build /build --target ihip-kvstore \
 && mkdir -p /out/bin \
 && strip -o /out/bin/ihip-kvstore /build/services/kvstore/ihip-kvstore

# --- runtime: the shared libraries ihip-kvstore links, nothing else ------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libcpp-httplib0.11 libgrpc++1.51 libgrpc29 \
      libprometheus-cpp-core1.0 libprotobuf32 libre2-9 libssl3 libbrotli1 zlib1g librocksdb7.8 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 ihip \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ihip \
 && mkdir -p /var/lib/ihip-kvstore && chown 10001:10001 /var/lib/ihip-kvstore
COPY --from=build /out/bin/ihip-kvstore /usr/local/bin/
COPY --from=probe /grpc_health_probe /usr/local/bin/grpc_health_probe
# Every library the binary links must resolve here (fails the build otherwise).
RUN ! ldd /usr/local/bin/ihip-kvstore | grep -F 'not found'
USER 10001:10001
VOLUME ["/var/lib/ihip-kvstore"]
# 50052 gRPC (ihip.v1.KvStore admin, grpc.health.v1), 9102 /metrics
EXPOSE 50052 9102
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["grpc_health_probe", "-addr=127.0.0.1:50052", "-connect-timeout=2s", "-rpc-timeout=2s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ihip-kvstore"]
CMD ["--grpc_address=0.0.0.0:50052", "--metrics_host=0.0.0.0", "--metrics_port=9102", \
     "--rocksdb_path=/var/lib/ihip-kvstore/rocksdb", "--durable", "--host_tier_gib=4"]
