#!/usr/bin/env bash
# A stand-in for python:3.11-slim-bookworm where Docker Hub is unreachable: Debian bookworm (minbase)
# with python3.11 and venv, built with debootstrap from the host's own Debian mirror (docker/apt-mirror.sh;
# DEBIAN_MIRROR overrides it) and imported as an image.
# It trusts what this host trusts (its CA bundle, for TLS-intercepting egress) and has `python` on
# PATH like the official image. Usage: docker/base-image.sh [TAG]   (as root; skips an existing TAG)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=apt-mirror.sh
. "$(dirname "$0")/apt-mirror.sh"
tag="${1:-image-classification-api-base:bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag exists"
  exit 0
fi
mirror="$(debian_mirror)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >/dev/null
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*
# pip keeps its own CA list unless told otherwise.
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "built base image $tag"
