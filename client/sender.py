"""HTTP to the gateway: one file per `/v1/predict`, or several per `/v1/predict/batch`, with retries
(`/v1/embed` and `/v1/embed/batch` for embeddings, the same way).

Retried (exponential backoff with jitter, never sooner than `Retry-After`): HTTP 429, 503 and 504,
connection errors and timeouts, and, inside a batch answer, the files whose own error is 503 or 504.
A 401/403 stops the whole run (`Fatal`): every other file would fail the same way, and recording them as
failed would make `--resume` skip them later. Any other error is the file's outcome, with the server's
problem `type`, `detail` and `status`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from client.records import Error, Record, client_error, error_of, failed, slug
from client.tasks import Task
from client.wire import is_batch, is_problem, request_id_of

RETRYABLE = frozenset({429, 503, 504})
PUSH_BACK = frozenset({429, 503})  # also lower the number of requests in flight
FATAL = frozenset({401, 403})


class Fatal(Exception):
    """An answer that means no other request can succeed either (bad or missing API key)."""


@dataclass
class RetryPolicy:
    retries: int = 5
    base_s: float = 0.5
    cap_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        """'Equal jitter': between half and all of base * 2^attempt, capped."""
        ceiling = min(self.cap_s, self.base_s * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not crypto)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is None:
            return self.backoff(attempt)
        # honour Retry-After, plus a little jitter so waiting workers do not all come back at once
        return retry_after + random.uniform(0, min(1.0, self.base_s * 2**attempt / 2))  # noqa: S311


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def problem_of(response: httpx.Response) -> Error:
    """The error part of a record from an error answer: the problem's type/detail/status (and code)."""
    body = json_of(response)
    if is_problem(body):
        return error_of(body, response.status_code)
    text = response.text[:200].strip() or response.reason_phrase
    return client_error("http-error", f"HTTP {response.status_code}: {text}", response.status_code)


def json_of(response: httpx.Response) -> object:
    """The answer's JSON, or None when it is not JSON."""
    try:
        body: object = response.json()
    except ValueError:
        return None
    return body


def read_files(paths: list[str], max_bytes: int) -> list[bytes | Error]:
    """Each file's bytes, or the error that kept it from being read (files above `max_bytes` are not read)."""
    out: list[bytes | Error] = []
    for path in paths:
        try:
            size = os.path.getsize(path)
            if size > max_bytes:
                out.append(client_error("file-too-large", f"{size} bytes is above the limit of {max_bytes}"))
                continue
            with open(path, "rb") as f:
                out.append(f.read(max_bytes + 1))
        except OSError as exc:
            out.append(client_error("read-error", f"cannot read the file: {exc.strerror or exc}"))
    return out


class Window:
    """How many requests may be in flight: halved when the server pushes back (429/503), grown by one per
    window of successes, between 1 and `ceiling` (AIMD). Keeps a rate-limited run from burning retries."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.size = float(ceiling)
        self.inflight = 0
        self._changed = asyncio.Condition()
        self._hold_until = 0.0  # one cut per push-back episode, not one per refused request

    async def __aenter__(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.inflight < int(self.size))
            self.inflight += 1

    async def __aexit__(self, *_: object) -> None:
        async with self._changed:
            self.inflight -= 1
            self._changed.notify_all()

    def success(self) -> None:
        self.size = min(float(self.ceiling), self.size + 1 / self.size)

    def pushed_back(self, retry_after: float | None) -> bool:
        """Halve the window unless it was just halved; True when it was."""
        now = time.monotonic()
        if now < self._hold_until or self.size <= 1:
            return False
        self.size = max(1.0, self.size / 2)
        self._hold_until = now + max(1.0, retry_after or 0.0)
        return True


@dataclass
class Outcome:
    """What one request gave: final records by index, indices to retry, and why."""

    records: dict[int, Record]
    retry: list[int]
    error: Error | None = None
    request_id: str | None = None
    retry_after: float | None = None
    pushed_back: bool = False  # a 429 or 503: the server wants fewer requests


class Sender:
    """Sends files for one task (`Classify` or `Embed`): `send` gives one record per file, after retries."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        task: Task,
        batch: bool = True,
        policy: RetryPolicy | None = None,
        max_file_bytes: int = 8 * 1024 * 1024,
        log: Callable[[str], None] = lambda _: None,
        concurrency: int = 4,
    ) -> None:
        self.client = client
        self.task = task
        self.batch = batch
        self.policy = policy or RetryPolicy()
        self.max_file_bytes = max_file_bytes
        self.log = log
        self.window = Window(concurrency)
        self.retries = 0  # retry requests made, over the whole run
        self._not_before = 0.0  # monotonic time before which no worker sends (set by Retry-After)

    async def send(self, paths: list[str]) -> list[Record]:
        """One record per path, in order, after retries. Reads the files now, not before."""
        contents = await asyncio.to_thread(read_files, paths, self.max_file_bytes)
        records: dict[int, Record] = {}
        readable: dict[int, bytes] = {}
        for i, content in enumerate(contents):
            if isinstance(content, bytes):
                readable[i] = content
            else:
                records[i] = failed(paths[i], content)
        pending = list(readable)
        attempt = 0
        while pending:
            await self._wait_turn()
            async with self.window:
                outcome = await self._attempt([paths[i] for i in pending], [readable[i] for i in pending])
                if outcome.pushed_back:
                    if self.window.pushed_back(outcome.retry_after):
                        self.log(f"server pushed back: at most {int(self.window.size)} request(s) in flight now")
                elif not outcome.retry:
                    self.window.success()
            records.update({pending[j]: record for j, record in outcome.records.items()})
            pending = [pending[j] for j in outcome.retry]
            if not pending:
                break
            if attempt >= self.policy.retries:
                error = outcome.error or client_error("retries-exhausted", "no answer")
                for i in pending:
                    records[i] = failed(paths[i], error, outcome.request_id)
                break
            delay = self.policy.delay(attempt, outcome.retry_after)
            if outcome.retry_after is not None:
                self._not_before = max(self._not_before, time.monotonic() + outcome.retry_after)
            attempt += 1
            self.retries += 1
            why = outcome.error
            reason = f"{why['status'] or ''} {slug(why)}".strip() if why else ""
            hint = f" (Retry-After {outcome.retry_after:g})" if outcome.retry_after is not None else ""
            self.log(
                f"retry {attempt}/{self.policy.retries} for {len(pending)} file(s) after {reason}: "
                f"waiting {delay:.2f} s{hint}"
            )
            await asyncio.sleep(delay)
        return [records[i] for i in range(len(paths))]

    async def _wait_turn(self) -> None:
        wait = self._not_before - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait + random.uniform(0, 0.1))  # noqa: S311

    async def _attempt(self, paths: list[str], contents: list[bytes]) -> Outcome:
        """One request for these files (one batch request, or one single request when not batching)."""
        everyone = list(range(len(paths)))
        route, params = self.task.route, self.task.params()
        try:
            if self.batch:
                files = [
                    ("files", (os.path.basename(p), data, "application/octet-stream"))
                    for p, data in zip(paths, contents, strict=True)
                ]
                response = await self.client.post(f"{route}/batch", params=params, files=files)
            else:
                headers = {"Content-Type": "application/octet-stream"}
                response = await self.client.post(route, params=params, headers=headers, content=contents[0])
        except httpx.TimeoutException as exc:
            return Outcome({}, everyone, client_error("timeout", f"no answer in time ({type(exc).__name__})"))
        except httpx.TransportError as exc:
            return Outcome({}, everyone, client_error("connection-error", f"{type(exc).__name__}: {exc}"))

        request_id = response.headers.get("x-request-id")
        if response.status_code in FATAL:
            error = problem_of(response)
            raise Fatal(f"HTTP {response.status_code} {error['type']}: {error['detail']}")
        if response.status_code in RETRYABLE:
            pushed_back = response.status_code in PUSH_BACK
            return Outcome({}, everyone, problem_of(response), request_id, retry_after_s(response), pushed_back)
        if response.status_code != 200:
            error = problem_of(response)
            return Outcome({i: failed(p, error, request_id) for i, p in enumerate(paths)}, [])
        body = json_of(response)
        request_id = request_id_of(body, request_id)
        if not self.batch:
            if record := self.task.record(paths[0], body, request_id):
                return Outcome({0: record}, [])
            error = client_error("bad-response", f"no {self.task.field} in the answer", 200)
            return Outcome({0: failed(paths[0], error, request_id)}, [])
        if not is_batch(body) or len(body["results"]) != len(paths):
            error = client_error("bad-response", f"expected {len(paths)} results in input order", 200)
            return Outcome({i: failed(p, error, request_id) for i, p in enumerate(paths)}, [])
        outcome = Outcome({}, [], request_id=request_id)
        for i, (path, result) in enumerate(zip(paths, body["results"], strict=True)):
            if record := self.task.record(path, result, request_id):
                outcome.records[i] = record
                continue
            problem = result.get("error") if isinstance(result, dict) else None
            if not isinstance(problem, dict):
                error = client_error("bad-response", f"neither {self.task.field} nor an error in result {i}", 200)
                outcome.records[i] = failed(path, error, request_id)
                continue
            error = error_of(problem)
            if error["status"] in RETRYABLE:
                outcome.retry.append(i)
                outcome.error = error
                outcome.pushed_back |= error["status"] in PUSH_BACK  # e.g. TorchServe's queue is full
            else:
                outcome.records[i] = failed(path, error, request_id)
        return outcome

    async def explanation(self, path: str) -> bytes | Error:
        """The PNG of `/v1/explain` (the top class's map over the image) for one file, or its error; not retried."""
        [content] = await asyncio.to_thread(read_files, [path], self.max_file_bytes)
        if not isinstance(content, bytes):
            return content
        headers = {"Content-Type": "application/octet-stream"}
        try:
            async with self.window:
                response = await self.client.post(
                    "/v1/explain", params={"format": "png"}, content=content, headers=headers
                )
        except httpx.HTTPError as exc:
            return client_error("connection-error", f"{type(exc).__name__}: {exc}")
        return response.content if response.status_code == 200 else problem_of(response)
