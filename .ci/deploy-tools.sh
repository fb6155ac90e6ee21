#!/usr/bin/env bash
# The tools that check deploy/ (tests/deploy): docker-compose (Debian's 1.29) validates compose.yaml,
# kustomize renders the Kubernetes base. kustomize comes with kubectl, which this machine's image
# ships (`kubectl kustomize`); Debian's own kubectl (1.20) bundles a kustomize too old for the base.
# Idempotent. Needs root where it must install.
set -euo pipefail

if ! command -v docker-compose >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
docker-compose version --short
if command -v kustomize >/dev/null; then
    kustomize version
elif command -v kubectl >/dev/null; then
    kubectl version --client 2>/dev/null | grep -i kustomize || true
else
    echo "no kustomize here: the Kubernetes base's rendering test will fail"
fi
