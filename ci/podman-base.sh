#!/usr/bin/env bash
# Prepares podman on a Debian bookworm host and imports a local stand-in for python:3.11-slim-bookworm.
#
# No registry is reachable on the CI machines, so the base image the Dockerfiles name
# (ARG BASE_IMAGE=python:3.11-slim-bookworm) is built here with debootstrap and tagged with that
# name: the same Dockerfiles then build unchanged here and against the real image elsewhere.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail

BASE_TAG="${BASE_TAG:-docker.io/library/python:3.11-slim-bookworm}"
WORK_DIR="${WORK_DIR:-/var/tmp/ragline-base}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { printf '%s podman-base: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

install_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
  # Debian's podman 4.3 in a container-less CI VM: default ulimits cannot be raised and crun is not installed.
  local conf=/etc/containers/containers.conf
  if ! grep -q '^runtime = "runc"' "$conf" 2>/dev/null; then
    log "writing $conf"
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$conf"
  fi
}

build_base() {
  if podman image exists "$BASE_TAG"; then
    log "$BASE_TAG already present"
    return
  fi
  log "debootstrap bookworm into $WORK_DIR/rootfs"
  rm -rf "$WORK_DIR/rootfs"
  mkdir -p "$WORK_DIR"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
    bookworm "$WORK_DIR/rootfs" "$DEBIAN_MIRROR" >"$WORK_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK_DIR/debootstrap.log" >&2; exit 1; }
  local root="$WORK_DIR/rootfs"
  # What python:3.11-slim provides and the Dockerfiles rely on: python at /usr/local/bin, apt sources
  # for all three suites (lists removed, as in the official image), no docs or caches.
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    "$DEBIAN_MIRROR" "$DEBIAN_MIRROR" >"$root/etc/apt/sources.list"
  rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
  log "importing as $BASE_TAG"
  tar -C "$root" -c . | podman import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$BASE_TAG" >/dev/null
  rm -rf "$root"
}

install_tools
build_base
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$BASE_TAG"
