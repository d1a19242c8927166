"""docker/apt-mirror.sh: the Debian mirror docker/engine.sh and docker/base-image.sh use is the host's own,
read from its apt sources (deb822 and one-line, with and without [options]); run against sample hosts
(a ROOT holding etc/os-release and etc/apt) in temporary folders."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from modelserver.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "docker" / "apt-mirror.sh"
MIRROR = "http://mirror.corp.example/debian"
SECURITY = "http://mirror.corp.example/debian-security"
VENDOR = "https://packages.vendor.example/apt"
DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
KEYRING = "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"


def paragraph(uris: str, suites: str, *extra: str, types: str = "deb") -> str:
    return "\n".join([f"Types: {types}", f"URIs: {uris}", f"Suites: {suites}", "Components: main", *extra]) + "\n"


def host(root: Path, files: dict[str, str], os_release: str = DEBIAN_12) -> Path:
    """A sample host: `files` are paths under etc/apt (e.g. 'sources.list.d/debian.sources') and their text."""
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(os_release)
    for name, text in files.items():
        (root / "etc" / "apt" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "etc" / "apt" / name).write_text(text)
    return root


def apt_mirror(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "DEBIAN_MIRROR"}
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], env={**clean, **env}, capture_output=True, text=True, timeout=30
    )


HOSTS = {
    # what this project's CI host has: security and a vendor's source beside Debian's, a disabled file
    "deb822": {
        "sources.list.d/debian.sources": paragraph(SECURITY, "bookworm-security", KEYRING)
        + "\n"
        + paragraph(MIRROR, "bookworm bookworm-updates", KEYRING),
        "sources.list.d/nodesource.sources": paragraph(VENDOR, "nodistro"),
        "sources.list.d/vendor.sources.disabled-by-farm": paragraph(VENDOR, "bookworm"),
    },
    "deb822, fields in any case, comments, deb-src and disabled ones skipped": {
        "sources.list.d/debian.sources": "# the corporate mirror\n"
        + paragraph(VENDOR, "bookworm", types="deb-src")
        + "\n"
        + paragraph(VENDOR, "bookworm", "Enabled: no")
        + "\n"
        + f"types: deb deb-src\n# first one wins\nuris: {MIRROR}\n  {VENDOR}\nsuites:\n  bookworm\ncomponents: main\n",
    },
    "one-line with [options]": {
        "sources.list": "\n".join(
            [
                f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {SECURITY} bookworm-security main",
                f"deb [arch=amd64] {VENDOR} cloud-sdk-bookworm main",
                f"deb [ arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg ] {MIRROR} bookworm main",
            ]
        )
        + "\n",
    },
    "one-line without options": {
        "sources.list": f"# deb {VENDOR} bookworm main\ndeb-src {VENDOR} bookworm main\n"
        f"deb {SECURITY} bookworm-security main\ndeb {MIRROR}/ bookworm main contrib\n",
    },
    "sources.list first": {
        "sources.list": f"deb {SECURITY} bookworm-security main\ndeb {MIRROR} bookworm main\n",
        "sources.list.d/0.list": f"deb {VENDOR} bookworm main\n",
    },
    "then sources.list.d in C order (apt's), both formats": {
        "sources.list": f"deb {SECURITY} bookworm-security main\n",
        "sources.list.d/Z.sources": paragraph(MIRROR, "bookworm"),
        "sources.list.d/a.list": f"deb {VENDOR} bookworm main\n",
    },
    "a release alias": {"sources.list": f"deb {MIRROR} stable main\n"},
    "a mirror+file: list": {
        "sources.list.d/debian.sources": paragraph("mirror+file:///etc/apt/mirrors/debian.list", "bookworm"),
        "mirrors/debian.list": f"# the nearest first\n{MIRROR}\tpriority:1\n{VENDOR}\n",
    },
}


@pytest.mark.parametrize("name", HOSTS)
def test_the_mirror_is_the_hosts_own(tmp_path: Path, name: str) -> None:
    done = apt_mirror(host(tmp_path, HOSTS[name]))
    assert (done.returncode, done.stdout, done.stderr) == (0, MIRROR + "\n", "")


def test_the_source_engine_sh_writes_names_the_hosts_mirror(tmp_path: Path) -> None:
    done = apt_mirror("debian_source", "trixie", host(tmp_path, HOSTS["deb822"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout == paragraph(MIRROR, "trixie", KEYRING)


@pytest.mark.parametrize("command", [[], ["debian_source", "trixie"]])
@pytest.mark.parametrize(
    ("files", "os_release", "says"),
    [
        (
            {"sources.list": f"deb {SECURITY} bookworm-security main\ndeb {VENDOR} nodistro main\n"},
            DEBIAN_12,
            "no enabled 'deb' source for bookworm",
        ),
        (
            {"sources.list.d/debian.sources": paragraph(MIRROR, "bookworm", "Enabled: no")},
            DEBIAN_12,
            "no enabled 'deb' source for bookworm",
        ),
        ({}, DEBIAN_12, "no enabled 'deb' source for bookworm"),
        (
            {"sources.list": "deb http://archive.ubuntu.example/ubuntu jammy main\n"},
            "VERSION_CODENAME=jammy\nID=ubuntu\n",
            "names no Debian release",
        ),
        (
            {"sources.list.d/debian.sources": paragraph("mirror+file:///etc/apt/mirrors/debian.list", "bookworm")},
            DEBIAN_12,
            "names no mirror",
        ),
    ],
)
def test_no_mirror_found_fails_saying_so(
    tmp_path: Path, command: list[str], files: dict[str, str], os_release: str, says: str
) -> None:
    done = apt_mirror(*command, host(tmp_path, files, os_release))
    assert done.returncode != 0 and done.stdout == ""
    assert says in done.stderr and "set DEBIAN_MIRROR" in done.stderr, done.stderr


def test_debian_mirror_overrides(tmp_path: Path) -> None:
    done = apt_mirror(host(tmp_path, {}), DEBIAN_MIRROR=VENDOR)
    assert (done.returncode, done.stdout) == (0, VENDOR + "\n")


@pytest.mark.parametrize("script", ["engine.sh", "base-image.sh"])
def test_the_scripts_take_the_mirror_from_the_host(script: str) -> None:
    text = (REPO_ROOT / "docker" / script).read_text()
    assert '. "$(dirname "$0")/apt-mirror.sh"' in text
    assert "$(debian_source trixie)" in text if script == "engine.sh" else "$(debian_mirror)" in text
    assert "://" not in text, "no mirror address of its own"


def test_no_apt_source_with_a_fixed_mirror_anywhere() -> None:
    """The shared before-stop hook's check: no file but docs writes an apt source with a fixed address."""
    done = subprocess.run(
        ["git", "grep", "-nE", "(URIs:|^deb) +https?://", "--", ":!*.md"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and done.stdout == "", done.stdout + done.stderr
