#!/usr/bin/env bash
# A Docker engine for the tests, and the local image they run (no registry is reachable here).
# Idempotent: an engine that already answers is used as it is. Needs root where it must install.
set -euo pipefail

IMAGE=sluice-test/busybox:1

# The image needs the static busybox: a dynamically linked one would not run in an empty root.
if ! command -v dockerd >/dev/null || ! dpkg -s busybox-static >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io busybox-static >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    log=$(mktemp)
    # No bridge and no iptables: containers run with --network none, which is all the tests need.
    setsid dockerd --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none >"$log" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; cat "$log"; exit 1; }
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    root=$(mktemp -d)
    mkdir -p "$root/bin"
    cp "$(command -v busybox)" "$root/bin/"
    ln -s busybox "$root/bin/sh"
    tar -C "$root" -c . | docker import - "$IMAGE" >/dev/null
    rm -rf "$root"
fi
docker run --rm --network none "$IMAGE" sh -c 'echo docker ok'
