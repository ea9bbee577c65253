#!/usr/bin/env bash
# Build a base image for docker/*.Dockerfile from Debian packages, for hosts that cannot pull
# python:3.11-slim-bookworm from a registry: Debian bookworm (minbase) with python3.11, its venv
# module and the CA certificates, imported with `docker import`.
#
#   sudo docker/bootstrap_base.sh [IMAGE]     # default multidomain-pruning/base:bookworm-python3.11
#   docker build --build-arg BASE_IMAGE=multidomain-pruning/base:bookworm-python3.11 ...
#
# Needs root, debootstrap (Debian package) and a running Docker engine. An existing IMAGE is kept
# (remove it to rebuild). DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail

image="${1:-multidomain-pruning/base:bookworm-python3.11}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image exists"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 2; }

rootfs="$(mktemp -d /tmp/mdp-base-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm into $rootfs ($mirror)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 20 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    echo "error: debootstrap failed" >&2
    exit 1
}
rm -f "$rootfs.log"
# package caches and lists are not needed at run time
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$image" >/dev/null
echo "imported $image ($(docker image inspect --format '{{.Size}}' "$image") bytes)"
