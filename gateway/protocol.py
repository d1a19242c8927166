"""uvicorn's httptools protocol with two guards against slow and oversized request heads (see the class)."""

from __future__ import annotations

import asyncio
import json
import uuid

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.observe import API_CSP, SECURITY_HEADERS
from gateway.problems import PROBLEM_JSON, Problem
from gateway.settings import get_settings


def problem_answer(slug: str, detail: str) -> bytes:
    """A whole HTTP/1.1 problem+json answer, for what is refused before there is a request to route."""
    problem = Problem(slug, detail)
    request_id = uuid.uuid4().hex
    body = json.dumps(problem.body(request_id)).encode()
    headers = {"Content-Type": PROBLEM_JSON, "Content-Length": str(len(body)), "Connection": "close",
               "X-Request-ID": request_id, **SECURITY_HEADERS, "Content-Security-Policy": API_CSP}  # fmt: skip
    head = [f"HTTP/1.1 {problem.status} {problem.title}", *(f"{name}: {value}" for name, value in headers.items())]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's fast (httptools) HTTP/1.1 protocol with a deadline and a size bound for request heads.

    Deadline (slowloris): uvicorn closes idle keep-alive connections but waits forever for a head that
    trickles in, or for a first byte that never comes. A connection that is waiting for a request head
    (just opened, or every answer given) and has none complete `header_timeout_s` later is closed.
    Size: httptools has no bound on a head, so the bytes up to the blank line are counted here; a head
    above `max_header_bytes` gets 431 and a closed connection. Both refusals, and httptools' own for bytes
    that are not HTTP, are problem+json like every other error."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._heads = 0  # request heads parsed on this connection
        self._answered = 0  # responses completed on it
        self._deadline: asyncio.TimerHandle | None = None
        self._await_head()

    def _await_head(self) -> None:
        """Start the clock and the byte count for the next request head."""
        self._head: bytes | None = b""  # the start of the coming head, up to the limit (None once complete)
        self._deadline = self.loop.call_later(get_settings().header_timeout_s, self._too_slow, self._heads)

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, heads_when_started: int) -> None:
        self._deadline = None
        if self._heads == heads_when_started and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            limit = get_settings().max_header_bytes
            self._head += data[: limit + 4 - len(self._head)]
            if b"\r\n\r\n" in self._head:
                self._head = None
            elif len(self._head) > limit:
                self._head = None
                self._refuse("request-head-too-large", f"the request head exceeds {limit} bytes")
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        self._refuse("malformed-request", "the request is not valid HTTP/1.1")

    def _refuse(self, slug: str, detail: str) -> None:
        self.transport.write(problem_answer(slug, detail))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._stop_clock()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()
        if self._answered == self._heads and not self.transport.is_closing():  # no pipelined request waiting
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)
