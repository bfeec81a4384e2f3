# syntax=docker/dockerfile:1
# ihip-server: the attention service, CUDA backend (sm_90, CUDA 13) with the CPU backend as the
# fallback (--backend=auto). Build from the repository root:
#   docker build -f deploy/docker/ihip-server.Dockerfile -t ihip-server .
# README.md beside this file says how to run it next to ihip-kvstore.

ARG DEBIAN_IMAGE=debian:12
ARG RUNTIME_IMAGE=debian:12-slim
ARG GO_IMAGE=golang:1.24-bookworm

# --- grpc_health_probe (not packaged by Debian): a static Go binary for HEALTHCHECK ------------
FROM ${GO_IMAGE} AS probe
ARG GRPC_HEALTH_PROBE_VERSION=v0.4.40
RUN CGO_ENABLED=0 go install \
      "github.com/grpc-ecosystem/grpc-health-probe@${GRPC_HEALTH_PROBE_VERSION}" \
 && cp "$(go env GOPATH)/bin/grpc-health-probe" /grpc_health_probe

# --- build: Debian 12 packages (DESIGN §7) + nvcc 13.0 from NVIDIA's debian12 repository ---------
FROM ${DEBIAN_IMAGE} AS build
ARG CUDA_KEYRING_URL=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSL -o /tmp/cuda-keyring.deb "${CUDA_KEYRING_URL}" \
 && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake ninja-build g++ pkg-config \
      protobuf-compiler libprotobuf-dev protobuf-compiler-grpc libgrpc++-dev \
      libabsl-dev librocksdb-dev prometheus-cpp-dev libcpp-httplib-dev \
      libgtest-dev libgmock-dev libbenchmark-dev \
      cuda-nvcc-13-0 cuda-cudart-dev-13-0 \
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
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda-13.0/bin/nvcc \
      -DCUDAToolkit_ROOT=/usr/local/cuda-13.0 \
 && grep -q '^IHIP_HAVE_CUDA:.*=ON' /build/CMakeCache.txt \
 && cmake --build /build --target ihip-server ihip \
 && mkdir -p /out/bin /out/lib \
 && strip -o /out/bin/ihip-server /build/services/attention/ihip-server \
 && strip -o /out/bin/ihip /build/services/cli/ihip \
 && cp -P /usr/local/cuda-13.0/lib64/libcudart.so.13* /out/lib/

# --- runtime: the shared libraries ihip-server links, libcudart 13, nothing else ------------------
# The NVIDIA container runtime mounts the driver (libcuda.so.1) when the container asks for a GPU.
FROM ${RUNTIME_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libcpp-httplib0.11 libgrpc++1.51 libgrpc29 \
      libprometheus-cpp-core1.0 libprotobuf32 libre2-9 libssl3 libbrotli1 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 ihip \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ihip
COPY --from=build /out/lib/ /usr/local/lib/ihip/
COPY --from=build /out/bin/ihip-server /out/bin/ihip /usr/local/bin/
COPY --from=probe /grpc_health_probe /usr/local/bin/grpc_health_probe
# Every library the binaries link must resolve here (fails the build otherwise).
RUN echo /usr/local/lib/ihip > /etc/ld.so.conf.d/ihip.conf && ldconfig \
 && ! ldd /usr/local/bin/ihip-server /usr/local/bin/ihip | grep -F 'not found'
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# 50051 gRPC (ihip.v1.Attention, grpc.health.v1), 9101 /metrics
EXPOSE 50051 9101
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["grpc_health_probe", "-addr=127.0.0.1:50051", "-connect-timeout=2s", "-rpc-timeout=2s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ihip-server"]
CMD ["--grpc_address=0.0.0.0:50051", "--metrics_host=0.0.0.0", "--metrics_port=9101", \
     "--kvstore_address=127.0.0.1:50052", "--backend=auto"]
