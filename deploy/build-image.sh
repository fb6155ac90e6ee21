#!/usr/bin/env bash
# Builds Sluice's container image (deploy/Dockerfile) from wheels made here, with no network in the build.
#
#   deploy/build-image.sh                                  # on a Debian bookworm base made by debootstrap
#   BASE=python:3.11-slim-bookworm deploy/build-image.sh   # on a registry's base image
#
# BASE      the base image (default sluice-base:bookworm: made here with debootstrap, as root, unless it
#           exists; Docker pulls any other name)
# IMAGE     the tag to build (default sluice:latest)
# PYTHON    the interpreter whose pip builds and fetches the wheels (default python3)
# MIRROR    the Debian mirror debootstrap installs from (default http://deb.debian.org/debian)
#
# The wheels match the base's Python and C library, not this machine's: the base is asked for them.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
BASE=${BASE:-sluice-base:bookworm}
IMAGE=${IMAGE:-sluice:latest}
PYTHON=${PYTHON:-python3}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

elapsed() { echo "build-image: $1 took $((SECONDS - $2)) s"; }

# Runs a long-winded command with its output in $work/NAME.log, shown (its end) only when it fails.
logged() {
    local log=$work/$1.log
    shift
    "$@" >"$log" 2>&1 || {
        tail -40 "$log" >&2
        return 1
    }
}

# A minimal Debian bookworm with Python 3, for places where no registry is reachable. Cached: an image
# of that name is used as it is (docker rmi it to make it again).
make_base() {
    local started=$SECONDS root=$work/root
    command -v debootstrap >/dev/null || {
        echo "build-image: making $BASE needs debootstrap (apt-get install debootstrap)" >&2
        exit 1
    }
    # tzdata for cron triggers' time zones, netbase for /etc/services and /etc/protocols.
    logged debootstrap debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates,tzdata,netbase bookworm "$root" "$MIRROR"
    # What an image never uses: the package caches and lists (no apt in a container), manuals and
    # translations. The packages' copyright files stay.
    rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/{man,info,locale}/*
    find "$root/usr/share/doc" -type f ! -name copyright -delete
    tar -C "$root" -c . | docker import - "$BASE" >/dev/null
    rm -rf "$root"
    elapsed "the base $BASE (debootstrap)" "$started"
}

# The checkout's files (committed or not, less what git ignores) in a folder of their own: setuptools
# keeps build/ in the source folder, and what is still there from an earlier build (a module since
# removed) would go into the wheel. Outside a git checkout, the folder itself.
clean_source() {
    if ! git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        echo "$repo"
        return
    fi
    mkdir -p "$work/source"
    git -C "$repo" ls-files -z --cached --others --exclude-standard |
        tar -C "$repo" --null --files-from=- --ignore-failed-read -c | tar -C "$work/source" -x
    echo "$work/source"
}

# Wheels of Sluice and its dependencies for the base's interpreter, in $work/context/wheels.
make_wheels() {
    local started=$SECONDS wheels=$work/context/wheels scratch=$work/scratch source facts version abi glibc arch
    facts=$(docker run --rm --network none --entrypoint python3 "$BASE" -c \
        'import platform, sys; v = sys.version_info; print(f"{v[0]}.{v[1]}", f"cp{v[0]}{v[1]}", platform.libc_ver()[1], platform.machine())')
    read -r version abi glibc arch <<<"$facts"
    # Sluice and the dependencies published only as source are pure Python: built here, they suit any
    # interpreter. The compiled ones are fetched for the base's Python, glibc and machine.
    source=$(clean_source)
    "$PYTHON" -m pip wheel -q -w "$scratch" "$source"
    mkdir -p "$wheels"
    cp "$scratch"/*-none-any.whl "$wheels/"
    local platforms=(--platform "manylinux2014_$arch")
    for minor in $(seq 17 "${glibc#2.}"); do
        platforms+=(--platform "manylinux_2_${minor}_$arch")
    done
    "$PYTHON" -m pip download -q --only-binary=:all: --implementation cp --python-version "$version" \
        --abi "$abi" "${platforms[@]}" --find-links "$wheels" -d "$wheels" "$wheels"/sluice-*.whl
    elapsed "the wheels for Python $version, glibc $glibc, $arch" "$started"
}

if [[ $BASE == sluice-base:* ]] && ! docker image inspect "$BASE" >/dev/null 2>&1; then
    make_base
fi
make_wheels
started=$SECONDS
previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
# --network none: everything the image needs is in the context, which holds the wheels alone.
cp "$repo/deploy/Dockerfile" "$work/context/"
logged docker-build docker build --force-rm --network none --build-arg "BASE=$BASE" -t "$IMAGE" "$work/context"
# Unnamed leftovers: the build stage, and the image that had the tag before. With the vfs storage
# driver every step of each is a full copy of its files. One still in use stays.
docker image prune -f --filter label=sluice.stage=build >/dev/null
if [[ -n $previous && $previous != $(docker image inspect -f '{{.Id}}' "$IMAGE") ]]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
fi
elapsed "the image $IMAGE" "$started"
