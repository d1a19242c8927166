"""API keys: minting and hashing, standard library only.

`python3 -m gateway.keys` (or `make api-key`) prints a new key and the SHA-256 the gateway stores. It needs
no virtualenv and none of the gateway's packages, so a Docker user can mint a key with the system Python
(or `docker run --rm --entrypoint python IMAGE -m gateway.keys`)."""

from __future__ import annotations

import hashlib
import secrets


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    key = "ica_" + secrets.token_urlsafe(32)
    return key, key_hash(key)


def main() -> None:
    key, digest = new_key()
    print(f"API key (give to the client, store nowhere else): {key}")
    print(f"SHA-256 (put in GATEWAY_API_KEY_HASHES):          {digest}")


if __name__ == "__main__":
    main()
