"""The one way to TorchServe: a pooled aiohttp client, its token keys, and the mapping of its failures.

Keys: TorchServe's token authorization stays on. The keys live in the `key_file.json` TorchServe writes
(shared read-only with the gateway). When TorchServe answers 400 InvalidKeyException, the gateway re-reads
the file; if the key there is the one that just failed (it expired), it asks TorchServe's management API
for a new one with the file's permanent API key (`POST /token?type=...`), which rewrites the file, and
retries, at most MAX_RECOVERIES times (the policy, shared with the launcher's readiness probe:
contract/torchserve_tokens.py).
Clients never see the rotation.

Overload: at most `max_connections` predictions are in flight to TorchServe per gateway process (below its
job queue, so TorchServe never has to refuse); a request that finds no free slot within `queue_timeout_s`
gets 503 with Retry-After at once instead of waiting in an unbounded queue.

Why aiohttp: measured under load in front of an instant backend, httpx/httpcore took 57 % of the
gateway's CPU per request; aiohttp's client, with its C parser, takes about a sixth of what is left.

Failures: unreachable, no worker, a full queue, or the connection cut mid-request (TorchServe crashed or
is restarting; predictions are safe to repeat) → 503 with Retry-After; no answer within the timeout
→ 504; a per-item handler error → 422 with its code; anything else → 502. Never a hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from contract.torchserve_tokens import MAX_RECOVERIES, bearer, is_invalid_token, read_tokens, recovery
from contract.wire import REQUEST_ID_HEADER, TOP_K_HEADER, ItemAnswer, ModelDescription, ServedModel
from gateway.metrics import Metrics
from gateway.problems import Problem
from gateway.settings import Settings

logger = logging.getLogger("gateway.upstream")

# the handler's per-item error codes that are not about the image → the problem type they become
ITEM_CODE_PROBLEMS = {
    "bad_top_k": "invalid-request",
    "bad_output": "invalid-request",
    "unsupported_output": "output-unavailable",
    # the handler's own size bounds (contract/bounds.py): the same problem as the gateway's header check
    "too_large": "image-too-large",
    "extreme_aspect_ratio": "image-too-large",
}

# The model block's fields that tell one served model from another (the engine may differ between workers).
SAME_MODEL = ("name", "version", "weights")


class TokenSource:
    """TorchServe's current 'inference' and 'management' tokens, replaced when refused as
    contract/torchserve_tokens.py decides (the policy the launcher's readiness probe shares)."""

    def __init__(self, key_file: Path, management_url: str, session: aiohttp.ClientSession) -> None:
        self.key_file = key_file
        self.management_url = management_url
        self.session = session
        self._tokens: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def get(self, kind: str) -> str | None:
        if kind not in self._tokens:
            self._tokens = read_tokens(self.key_file)
        return self._tokens.get(kind)

    async def refresh(self, kind: str, stale: str | None) -> str | None:
        """A key to use instead of `stale`: a newer one from the file, or one renewed via management."""
        async with self._lock:
            self._tokens = read_tokens(self.key_file)
            step = recovery(kind, stale, self._tokens, self.management_url)
            if (renewal := step.renewal) is None:
                return step.key
            try:
                async with self.session.post(renewal.url, params=renewal.params, headers=renewal.headers) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("renewing the TorchServe %s key failed: %s", kind, exc)
                return None
            self._tokens = read_tokens(self.key_file)
            logger.info("renewed the TorchServe %s key", kind)
            return self._tokens.get(kind)


SEND_SLICE = 256 * 1024


async def slices(body: bytes) -> AsyncIterator[memoryview]:
    """A body sent upstream a slice at a time, each written once the previous one has drained: written whole,
    the connection's transport would keep a copy of what the socket did not take at once (up to the whole
    image, for each of the max_connections in flight)."""
    view = memoryview(body)
    for start in range(0, len(view), SEND_SLICE):
        yield view[start : start + SEND_SLICE]


@dataclass(frozen=True)
class RawResponse:
    """An HTTP response of TorchServe, read whole."""

    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Readiness:
    ready: bool
    reason: str
    workers_ready: int = 0
    checked: float = 0.0


class TorchServeClient:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(settings.max_connections)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=settings.request_timeout_s, sock_connect=settings.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        self.slots = asyncio.Semaphore(settings.max_connections)
        self.tokens = TokenSource(settings.key_file, settings.management_url, self.session)
        self._readiness = Readiness(False, "not checked yet")
        self._readiness_lock = asyncio.Lock()
        self._model_info: ModelDescription | None = None
        self._model_info_lock = asyncio.Lock()

    async def close(self) -> None:
        await self.session.close()

    async def _authorized(self, kind: str, method: str, url: str, **kwargs: Any) -> RawResponse:
        key = self.tokens.get(kind)
        answer = await self._send(key, method, url, **kwargs)
        # At most two recoveries: a newer key from the file (TorchServe restarted or someone rotated it),
        # then a renewal through the management API (that key expired too).
        for _ in range(MAX_RECOVERIES):
            if not is_invalid_token(answer.status, answer.body):
                break
            key = await self.tokens.refresh(kind, key)
            if key is None:
                break
            answer = await self._send(key, method, url, **kwargs)
        return answer

    async def _send(self, key: str | None, method: str, url: str, **kwargs: Any) -> RawResponse:
        headers = {**kwargs.pop("headers", {}), **bearer(key)}
        if isinstance(body := kwargs.get("data"), bytes):
            kwargs["data"], headers["Content-Length"] = slices(body), str(len(body))
        async with self.session.request(method, url, headers=headers, **kwargs) as response:
            return RawResponse(response.status, await response.read())

    async def predict(
        self, image: bytes, top_k: int, request_id: str, extra_headers: dict[str, str] | None = None
    ) -> ItemAnswer:
        """The handler's 200 body for one image, or a Problem. `extra_headers` ask for more (X-Output)."""
        url = f"{self.settings.inference_url}/predictions/{self.settings.model_name}"
        headers = {
            TOP_K_HEADER: str(top_k),
            REQUEST_ID_HEADER: request_id,
            "Content-Type": "application/octet-stream",
            **(extra_headers or {}),
        }
        waited = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.queue_timeout_s):
                await self.slots.acquire()
        except TimeoutError:  # every upstream slot busy: shed load instead of queueing
            raise self.unavailable("the model server is at capacity; retry shortly") from None
        finally:
            self.metrics.queue_wait.observe(time.perf_counter() - waited)
        self.metrics.upstream_in_flight.inc()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                answer = await self._authorized("inference", "POST", url, data=image, headers=headers)
        except aiohttp.ConnectionTimeoutError:
            raise self.unavailable("the model server does not accept connections") from None
        except TimeoutError:
            detail = f"no answer from the model within {self.settings.request_timeout_s:g} s"
            raise Problem("upstream-timeout", detail) from None
        except aiohttp.ClientConnectorError:
            raise self.unavailable("the model server is unreachable") from None
        except aiohttp.ClientConnectionError:  # closed or reset without an answer: the server went away
            raise self.unavailable("the model server dropped the connection; retry shortly") from None
        except aiohttp.ClientError as exc:
            detail = f"the connection to the model server failed ({type(exc).__name__})"
            raise Problem("upstream-error", detail) from None
        finally:
            self.slots.release()
            self.metrics.upstream_in_flight.dec()
        return self._interpret(answer)

    def unavailable(self, detail: str) -> Problem:
        return Problem("model-unavailable", detail, headers={"Retry-After": str(self.settings.retry_after_s)})

    def _interpret(self, answer: RawResponse) -> ItemAnswer:
        status = answer.status
        try:
            body = answer.json()
        except ValueError:
            body = None
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if status == 200 and isinstance(predictions, list):
            item: ItemAnswer = body  # the handler's answer (contract/wire.py)
            self._forget_if_replaced(item.get("model"))
            return item
        if status == 422 and isinstance(body, dict) and isinstance(body.get("error"), dict):
            self._forget_if_replaced(body.get("model"))  # a refusal by another model's N (bad_top_k) included
            code = str(body["error"].get("code", "undecodable"))
            detail = str(body["error"].get("detail", "the image cannot be decoded"))
            raise Problem(ITEM_CODE_PROBLEMS.get(code, "invalid-image"), detail, code=code)
        if status in (404, 503):  # model not loaded, no worker, or the job queue is full
            raise self.unavailable("the model has no free worker; retry shortly")
        if status == 413:
            raise Problem("payload-too-large", "the model server refused the upload size")
        if is_invalid_token(answer.status, answer.body):
            raise self.unavailable("the gateway cannot authenticate to the model server")
        logger.error("unexpected upstream answer %s: %.200r", status, answer.body)
        raise Problem("upstream-error", f"the model server answered {status} unexpectedly")

    async def readiness(self) -> Readiness:
        """READY workers per the management API's model description, cached for a second or two.
        Single-flight: callers that find the cache stale while a check is under way share its result (the
        probes need no key: N of them at once must not become N management calls)."""
        asked = time.monotonic()
        if asked - self._readiness.checked < self.settings.readiness_cache_s:
            return self._readiness
        async with self._readiness_lock:
            if self._readiness.checked >= asked:  # a check ended after this call began: it is this call's
                return self._readiness
            return await self._check_readiness()

    async def _check_readiness(self) -> Readiness:
        url = f"{self.settings.management_url}/models/{self.settings.model_name}"
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.connect_timeout_s)
            described = await self._authorized("management", "GET", url, timeout=timeout)
            workers = described.json()[0].get("workers", []) if described.status == 200 else None
            answer: RawResponse | None = described
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, AttributeError):
            workers, answer = None, None
        if workers is None:
            reason = "TorchServe is unreachable" if answer is None else f"TorchServe answered {answer.status}"
            self._readiness = Readiness(False, reason, 0, time.monotonic())
            self._model_info = None  # TorchServe may come back with another archive
        else:
            ready = sum(1 for w in workers if w.get("status") == "READY")
            reason = f"{ready} of {len(workers)} workers READY"
            self._readiness = Readiness(ready > 0, reason, ready, time.monotonic())
        return self._readiness

    async def model_info(self) -> ModelDescription:
        """The handler's own description (TorchServe custom describe): the served model, its N classes and labels.
        Asked once and kept: every /v1 and v2 request reads its class count, so in the steady state it costs no
        upstream call. Single-flight (requests that find it missing share one management call); forgotten when
        TorchServe goes away (`_check_readiness`) or an answer names another model (`_interpret`)."""
        if (known := self._model_info) is not None:
            return known
        async with self._model_info_lock:
            if self._model_info is None:
                self._model_info = await self._describe()
            return self._model_info

    async def _describe(self) -> ModelDescription:
        url = f"{self.settings.management_url}/models/{self.settings.model_name}"
        description: ModelDescription | None
        try:
            # one short management call, like the readiness probe's: at least its time, whatever request_timeout_s
            timeout = aiohttp.ClientTimeout(total=max(self.settings.request_timeout_s, self.settings.connect_timeout_s))
            answer = await self._authorized("management", "GET", url, params={"customized": "true"}, timeout=timeout)
            described = answer.json()[0]["customizedMetadata"]
            description = json.loads(described) if isinstance(described, str) else described
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, TypeError):
            description = None
        if not isinstance(description, dict) or not (
            isinstance(description.get("labels"), int) and isinstance(description.get("label_names"), list)
        ):
            raise self.unavailable("the model description is not available yet")
        return description

    def _forget_if_replaced(self, model: ServedModel | None) -> None:
        """Forget the description when an answer comes from another model than the one described (TorchServe
        serves another archive under the same name): the next request asks again."""
        known = self._model_info
        if known is not None and model is not None and any(model.get(k) != known.get(k) for k in SAME_MODEL):
            self._model_info = None
