#!/usr/bin/env bash
# Makes a Docker daemon answer on this host (Debian bookworm, as root): Debian's docker.io (dockerd 20.10),
# compose v2 from Debian trixie's docker-compose package (bookworm's own is v1, which rejects `name:` and
# `depends_on.restart`), docker-registry for the local-registry deploy test and debootstrap for the
# stand-in base image. Idempotent: installs only what is missing, starts dockerd only when none answers.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=apt-mirror.sh
. "$(dirname "$0")/apt-mirror.sh"

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if ! docker compose version 2>/dev/null | grep -Eq 'version v?2[.]'; then
  # trixie only for docker-compose, from the host's own mirror: a pin of 100 keeps every other package on bookworm.
  if [ ! -f /etc/apt/sources.list.d/trixie.sources ]; then
    trixie="$(debian_source trixie)" # first: no mirror found, no (empty) file left to skip next time
    printf '%s\n' "$trixie" >/etc/apt/sources.list.d/trixie.sources
    cat >/etc/apt/preferences.d/trixie-docker-compose <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
  fi
  need+=(docker-compose/trixie)
fi
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info --format 'dockerd {{.ServerVersion}} ({{.Driver}})'
docker compose version
