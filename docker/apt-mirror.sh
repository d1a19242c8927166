#!/usr/bin/env bash
# The Debian mirror this host's apt already uses, for the apt source docker/engine.sh adds and the
# debootstrap of docker/base-image.sh (both source this file): a host behind its own mirror has no other.
# Run directly, it prints it: docker/apt-mirror.sh [ROOT]; or a function: docker/apt-mirror.sh debian_source trixie

# debian_mirror [ROOT]: print $DEBIAN_MIRROR if set; else the first URI of an enabled `deb` source under
# ROOT/etc/apt (sources.list, then sources.list.d/*.list and *.sources in apt's order; one-line format with
# or without [options], and deb822) whose suites name this host's release (VERSION_CODENAME of a Debian
# ROOT/etc/os-release, or stable, testing, unstable, sid...), so -security, -updates and other vendors'
# sources never count. A mirror+file: URI gives the first mirror of its list. Fails, saying so, if none.
debian_mirror() {
  local root="${1:-}" codename file uri list
  local LC_ALL=C # apt reads sources.list.d in C order
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    printf '%s\n' "$DEBIAN_MIRROR"
    return 0
  fi
  codename="$(awk -F= '$1 == "ID" { gsub(/"/, "", $2); id = $2 }
    $1 == "VERSION_CODENAME" { gsub(/"/, "", $2); name = $2 }
    END { if (id == "debian") print name }' "$root/etc/os-release" 2>/dev/null)"
  if [ -z "$codename" ]; then
    echo "debian_mirror: $root/etc/os-release names no Debian release; set DEBIAN_MIRROR to a Debian mirror" >&2
    return 1
  fi
  for file in "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*; do
    [ -f "$file" ] || continue
    case "$file" in
      */sources.list | *.list) uri="$(_one_line_mirror "$codename" <"$file")" ;;
      *.sources) uri="$(_deb822_mirror "$codename" <"$file")" ;;
      *) continue ;;
    esac
    [ -n "$uri" ] && break
  done
  if [ -z "${uri:-}" ]; then
    echo "debian_mirror: no enabled 'deb' source for $codename in $root/etc/apt/sources.list or" \
      "$root/etc/apt/sources.list.d/*.{list,sources}; set DEBIAN_MIRROR to a Debian mirror" >&2
    return 1
  fi
  if [ "${uri#mirror+file:}" != "$uri" ]; then
    list="${uri#mirror+file://}"
    uri="$(awk '!/^[[:space:]]*(#|$)/ { print $1; exit }' "$root$list" 2>/dev/null || true)"
    if [ -z "$uri" ]; then
      echo "debian_mirror: the mirror list $root$list names no mirror; set DEBIAN_MIRROR" >&2
      return 1
    fi
  fi
  printf '%s\n' "${uri%/}"
}

# debian_source SUITE [ROOT]: a deb822 apt source for Debian's SUITE (main) from the host's own mirror.
debian_source() {
  local mirror
  mirror="$(debian_mirror "${2:-}")" || return 1
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
    "$mirror" "$1" /usr/share/keyrings/debian-archive-keyring.gpg
}

# A Debian release suite, as awk code shared by both formats.
_RELEASE='function release(s) { return s == codename || s ~ /^(stable|oldstable|oldoldstable|testing|unstable|sid)$/ }'

# One-line format: `deb [options] URI SUITE COMPONENT...`.
_one_line_mirror() {
  awk -v codename="$1" "$_RELEASE"'
    $1 != "deb" { next }
    {
      i = 2
      if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
      if (release($(i + 1))) { print $i; exit }
    }'
}

# deb822 format: paragraphs of `Field: value` (names in any case, continuation lines indented, # comments).
_deb822_mirror() {
  awk -v codename="$1" "$_RELEASE"'
    function check(  n, i, word) {
      if (found) return
      if (field["enabled"] ~ /^[[:space:]]*no[[:space:]]*$/) return
      if ((" " field["types"] " ") !~ /[[:space:]]deb[[:space:]]/) return
      n = split(field["suites"], word)
      for (i = 1; i <= n; i++) if (release(word[i])) { split(field["uris"], word); print word[1]; found = 1; exit }
    }
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*$/ { check(); delete field; key = ""; next }
    /^[[:space:]]/ { if (key != "") field[key] = field[key] " " $0; next }
    {
      key = tolower(substr($0, 1, index($0, ":") - 1))
      field[key] = substr($0, index($0, ":") + 1)
    }
    END { check() }'
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    debian_mirror | debian_source) "$@" ;;
    *) debian_mirror "$@" ;;
  esac
fi
