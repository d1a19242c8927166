"""TorchServe's token keys ("tokens" in this project's code, to tell them from the clients' API keys), the
policy in one place: reading `key_file.json`, knowing a token has expired, and deciding what to use instead.
The I/O stays with each caller: the launcher's readiness probe (`python -m modelserver ready`,
modelserver/torchserve.py, sync httpx) and the gateway (gateway/upstream.py, async aiohttp) both run
`recovery()` after each refusal.

TorchServe writes `{"inference": {"key": ...}, "management": {"key": ...}, "API": {"key": ...}}` into its
working directory. The inference and management keys expire (`token_expiration_min`); TorchServe then answers
400 with an InvalidKeyException. What follows a refusal: a newer key in the file if there is one (TorchServe
restarted, or someone rotated it), else a renewal with the file's permanent API key (`POST /token?type=<kind>`
on the management API, which rewrites the file) and the file read again; at most `MAX_RECOVERIES` times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "key_file.json"  # TorchServe writes it into its working directory
RENEWING_KIND = "API"  # the permanent token, which only renews the others
MAX_RECOVERIES = 2  # a newer key from the file, then a renewal


def read_tokens(key_file: Path) -> dict[str, str]:
    """{'inference': ..., 'management': ..., 'API': ...} from the key file; {} while it is missing or unreadable
    (TorchServe has not written it yet, or is rewriting it)."""
    try:
        data = json.loads(key_file.read_text())
        return {name: entry["key"] for name, entry in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def is_invalid_token(status: int, body: bytes) -> bool:
    """Whether TorchServe refused the key (expired, rotated, or wrong), not the request."""
    return status == 400 and b"InvalidKeyException" in body


def bearer(key: str | None) -> dict[str, str]:
    """The header that presents `key` to TorchServe (an empty one while no key is known)."""
    return {"Authorization": f"Bearer {key or ''}"}


@dataclass(frozen=True)
class Renewal:
    """The management call that renews a key of `kind`: POST `url` with `params` and `headers`."""

    url: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Recovery:
    """What to do after a key was refused: send again with `key` (newer, from the file), or make `renewal` and
    read the file again; neither (both None): give up and pass TorchServe's refusal on."""

    key: str | None = None
    renewal: Renewal | None = None


def recovery(kind: str, refused: str | None, keys: dict[str, str], management_url: str) -> Recovery:
    """The decision after TorchServe refused the `kind` key `refused`, `keys` being the file read again."""
    if keys.get(kind) and keys[kind] != refused:
        return Recovery(key=keys[kind])
    if RENEWING_KIND in keys:
        return Recovery(renewal=Renewal(f"{management_url}/token", {"type": kind}, bearer(keys[RENEWING_KIND])))
    return Recovery()
