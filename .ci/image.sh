#!/usr/bin/env bash
# Sluice's container image for the image tests (tests/image): deploy/build-image.sh on its default base,
# Debian bookworm made by debootstrap (Debian's packages are reachable here, no registry's images are).
# Needs the engine of .ci/docker.sh and the .venv of .ci/run, whose pip builds the wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
PYTHON=.venv/bin/python bash deploy/build-image.sh
