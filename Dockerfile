# syntax=docker/dockerfile:1
#
# meshd's container images (BuildKit, the default builder since Docker 23):
#
#   docker build -t meshd:0.1.0 .                      # the proxy: a static binary on
#                                                      # distroless/static, UID 1337
#   docker build --target init -t meshd-init:0.1.0 .   # the sidecar's iptables init
#                                                      # container: the same binary
#                                                      # on Debian with iptables
#
# deploy/kubernetes/ uses both. The binary is linked statically against musl
# (x86_64 or aarch64, whichever the builder runs on), so the proxy image
# holds the binary, CA certificates and nothing else: about 12 MB.
# musl's resolver reads /etc/resolv.conf (search domains and ndots
# included), which Kubernetes mounts into every container. musl's malloc is
# slower than glibc's under load: the README's performance figures are of
# the glibc build (cargo build --release).

ARG RUST_VERSION=1.95

# --- build: a static, stripped release binary at /meshd ---------------------
FROM rust:${RUST_VERSION}-bookworm AS build
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The bench targets are declared in Cargo.toml (cargo wants their files);
# config/demo is embedded by `meshd demo`.
COPY benches ./benches
COPY config ./config
# The release profile without its debug info, and stripped.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    target="$(uname -m)-unknown-linux-musl"; \
    export "CC_$(echo "$target" | tr - _)=musl-gcc"; \
    cargo build --locked --release --bin meshd --target "$target"; \
    cp "target/$target/release/meshd" /meshd
# Refuse a dynamically linked result, and make sure it runs.
RUN if readelf -lW /meshd | grep -q 'program interpreter'; then \
      echo "meshd is not statically linked" >&2; exit 1; \
    fi \
 && /meshd --version

# --- init: `meshd iptables --apply` for the sidecar's init container --------
# Runs as root with NET_ADMIN and NET_RAW (see deploy/kubernetes/sidecar/).
# Debian's iptables uses the nf_tables backend; on nodes whose kernel lacks
# nf_tables, switch it with
#   update-alternatives --set iptables /usr/sbin/iptables-legacy
#   update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy
FROM debian:bookworm-slim AS init
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /meshd /usr/local/bin/meshd
ENTRYPOINT ["/usr/local/bin/meshd"]
CMD ["iptables", "--help"]

# --- meshd: the proxy (default target; keep it last) ------------------------
FROM gcr.io/distroless/static-debian12:nonroot AS meshd
LABEL org.opencontainers.image.title="meshd" \
      org.opencontainers.image.description="A small, fast L7 proxy data plane that reads Istio networking YAML" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /meshd /usr/local/bin/meshd
# Istio's proxy UID/GID: `meshd iptables` exempts this UID's traffic from
# capture, so meshd's own upstream connections are never redirected.
USER 1337:1337
# 15001 outbound capture, 15006 inbound capture, 15000 admin (loopback by
# default), 15021 /healthz/ready, 15090 /stats/prometheus.
EXPOSE 15001 15006 15000 15021 15090
ENTRYPOINT ["/usr/local/bin/meshd"]
CMD ["run", "--config", "/etc/meshd/config"]
# For `docker run` (Kubernetes uses the manifests' probes instead).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s \
  CMD ["/usr/local/bin/meshd", "wait-ready", "--admin", "127.0.0.1:15000", "--timeout", "3s"]
