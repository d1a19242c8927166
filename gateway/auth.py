"""API keys and per-key rate limiting.

The gateway stores only SHA-256 hashes of keys. A key arrives in `Authorization: Bearer` or `X-API-Key`.
Keys are minted by `gateway/keys.py` (`make api-key`), which needs only the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request, Response

from gateway.metrics import Metrics
from gateway.problems import Problem

AUTH_CHALLENGE = 'Bearer realm="image-classification-api", ApiKey header="X-API-Key"'


class KeyStore:
    """Known key hashes. Lookup compares against every hash in constant time, so timing reveals nothing."""

    def __init__(self, hashes: list[str]) -> None:
        self._hashes = [bytes.fromhex(h) for h in hashes]

    def identify(self, key: str) -> str | None:
        """The key's id (a hash prefix, safe to log) if the key is known, else None."""
        digest = hashlib.sha256(key.encode()).digest()
        match = None
        for known in self._hashes:
            if hmac.compare_digest(digest, known):
                match = known
        return match.hex()[:12] if match else None


@dataclass
class Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: `rate` tokens per second, at most `burst` at once. An image costs a token.
    `clock` gives the seconds the buckets refill by (monotonic; a test passes its own)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}

    def take(self, key_id: str, tokens: int = 1) -> tuple[bool, int, float]:
        """All `tokens` or none: (allowed, tokens remaining, seconds until `tokens` are available)."""
        now = self.clock()
        bucket = self._buckets.setdefault(key_id, Bucket(float(self.burst), now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= tokens:
            bucket.tokens -= tokens
            return True, int(bucket.tokens), 0.0
        return False, int(bucket.tokens), (tokens - bucket.tokens) / self.rate


def presented_keys(request: Request) -> list[str]:
    """Every credential the request carries. Behind Amazon API Gateway, `x-api-key` holds API Gateway's own
    key and the gateway key comes as `Authorization: Bearer`, so any one of them may be ours."""
    keys = []
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        keys.append(credentials.strip())
    if key := request.headers.get("x-api-key"):
        keys.append(key)
    return keys


def identify(keys: KeyStore, request: Request) -> str:
    """The id of the first known key the request presents, from the head alone; else 401."""
    key_id = next((found for key in presented_keys(request) if (found := keys.identify(key))), None)
    if key_id is None:
        # Missing, unknown and wrong keys get the same answer.
        detail = "send a valid API key in X-API-Key or Authorization: Bearer"
        raise Problem("unauthorized", detail, headers={"WWW-Authenticate": AUTH_CHALLENGE})
    return key_id


@dataclass
class Caller:
    """An authenticated caller: its key id and its bucket, charged as its request's images become known.
    The RateLimit headers of each charge go on `response` (FastAPI's, merged into the route's answer)."""

    key_id: str
    limiter: RateLimiter
    response: Response
    metrics: Metrics

    def charge_images(self, count: int) -> None:
        """Once a request's image count is known: the tokens for its images beyond the first, or 429 (none of
        them taken). Its Retry-After is the wait for the whole request's tokens, which a retry pays again."""
        limiter = self.limiter
        if count > limiter.burst:
            detail = f"{count} images cost {count} rate-limit tokens, more than the burst of {limiter.burst}"
            raise Problem("payload-too-large", f"{detail}: send at most {limiter.burst} images per request")
        if count > 1:
            self.charge(count - 1, f"{count} images", 1)

    def charge(self, tokens: int, what: str, paid: int = 0) -> None:
        """Take `tokens` from the caller's bucket, or 429 with the wait for them and the `paid` ones before."""
        limiter = self.limiter
        allowed, remaining, wait = limiter.take(self.key_id, tokens)
        if not allowed:
            wait += paid / limiter.rate
        headers = {
            "RateLimit-Limit": str(limiter.burst),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(math.ceil(wait)),
        }
        if not allowed:
            self.metrics.rate_limited.inc()
            retry = str(max(1, math.ceil(wait)))
            detail = f"rate limit of {limiter.rate:g} images/s (burst {limiter.burst}) exceeded by {what}"
            raise Problem("rate-limited", f"{detail}; retry in {retry} s", headers={**headers, "Retry-After": retry})
        self.response.headers.update(headers)


def admit(request: Request, response: Response, keys: KeyStore, limiter: RateLimiter, metrics: Metrics) -> Caller:
    """The caller, after auth and the request's first token (from the head alone); else a 401 or 429 problem.
    The key id goes in the request's state for its log line."""
    caller = Caller(identify(keys, request), limiter, response, metrics)
    request.state.key_id = caller.key_id
    caller.charge(1, "a request")
    return caller
