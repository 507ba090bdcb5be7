#!/bin/bash
# Installs the real object-store servers used by Island's object-store tests:
# Ceph radosgw (S3) and an OpenStack Swift all-in-one (tempauth), from Debian packages.
# Idempotent: does nothing when every binary is already present.
# Usage: scripts/objstore/install.sh        (must run as root, or with sudo available)
set -euo pipefail

need=(radosgw ceph-mon ceph-osd monmaptool radosgw-admin
      swift-proxy-server swift-object-server swift-container-server swift-account-server
      swift-ring-builder swift memcached curl uuidgen)
missing=()
for b in "${need[@]}"; do
  command -v "$b" >/dev/null 2>&1 || missing+=("$b")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "objstore install: all servers already installed"
  exit 0
fi
echo "objstore install: missing ${missing[*]}; installing"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  radosgw ceph-mon ceph-osd ceph-common \
  swift swift-proxy swift-object swift-container swift-account python3-swiftclient \
  memcached curl uuid-runtime
# Debian's packages start system-wide services where systemd runs; the test scripts start
# their own instances on private ports, so a package-started memcached is left alone
# (the scripts use port 11212 to avoid colliding with it).
for b in "${need[@]}"; do
  command -v "$b" >/dev/null 2>&1 || { echo "objstore install: $b still missing" >&2; exit 1; }
done
echo "objstore install: done"
