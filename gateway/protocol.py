"""uvicorn's httptools protocol with guards against slow and oversized request heads, and a graceful close for
its own refusals (see the class). Answers the app gives before a body has arrived: gateway/early.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.framing import Boundary, Framer, TooLarge, Unframed
from gateway.headers import API_CSP, SECURITY_HEADERS
from gateway.problems import PROBLEM_JSON, Problem

if TYPE_CHECKING:
    from gateway.settings import Settings


def problem_answer(slug: str, detail: str) -> bytes:
    """A whole HTTP/1.1 problem+json answer, for what is refused before there is a request to route."""
    problem = Problem(slug, detail)
    request_id = uuid.uuid4().hex
    body = json.dumps(problem.body(request_id)).encode()
    headers = {
        "Content-Type": PROBLEM_JSON,
        "Content-Length": str(len(body)),
        "Connection": "close",
        "X-Request-ID": request_id,
        **SECURITY_HEADERS,
        "Content-Security-Policy": API_CSP,
    }
    head = [f"HTTP/1.1 {problem.status} {problem.title}", *(f"{name}: {value}" for name, value in headers.items())]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


@dataclass(frozen=True)
class ConnectionLimits:
    """What a connection is allowed (the GATEWAY_* settings of the same names, given by `python -m gateway`)."""

    max_header_bytes: int
    header_timeout_s: float
    linger_s: float

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.max_header_bytes, settings.header_timeout_s, settings.linger_s)


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's `http`, its connections held to `limits` (uvicorn makes one per
    connection with its own arguments, so the limits travel on the class)."""

    class Limited(GuardedHttpToolsProtocol):
        pass

    Limited.limits = limits
    return Limited


class ClosingHook:
    """The connection's transport as uvicorn sees it, except that `close()` asks the protocol first."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_connection()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's fast (httptools) HTTP/1.1 protocol with a deadline and a size bound for request heads, and
    refusals that reach the client.

    Deadline (slowloris): uvicorn closes idle keep-alive connections but waits forever for a head that
    trickles in, or for a first byte that never comes. A connection that is waiting for a request head
    (just opened, or every answer given) and has none complete `header_timeout_s` later is closed.
    Size: httptools has no bound on a head (and copies a long header value again with every read), so
    everything that is not body data is counted here, each part against `max_header_bytes`: a request head
    with any empty lines before it, whether it came alone or pipelined behind another request in the same
    read, a chunk-size line, a chunked body's trailer section, and the framing of all its chunks together
    beyond 1/16 of their data (gateway/framing.py finds where each ends; the parser is fed up to there and
    must agree). Above the limit: 431. A refusal of a pipelined request is
    sent after the answers to the requests before it. Both refusals, and httptools' own for bytes that are
    not HTTP, are problem+json like every other error.

    Refusals (the 431 and 400 above) close lingering: closing a socket with unread bytes makes the kernel
    reset the connection, and the reset destroys the answer on its way. So the write side is shut down after
    the answer (the client reads it to the end), what the client still sends is read and thrown away
    unparsed, and the socket closes when the client closes its side or after `linger_s`. Nothing after a
    refusal is ever taken for a request. (The app's own answers to a client still uploading are held in
    ASGI, gateway/early.py.)

    `limits` is set on the class that `guarded_protocol` makes."""

    limits: ClassVar[ConnectionLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # asyncio types it BaseTransport; uvicorn's protocol (and the event loop) hand a Transport
        self._transport = transport
        self.lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None
        super().connection_made(ClosingHook(transport, self))  # type: ignore[arg-type]  # ClosingHook wraps the Transport and forwards every call: one by duck typing
        self._heads = 0  # request heads parsed on this connection
        self._messages = 0  # requests parsed to their end
        self._keep_alive = True  # whether the last request parsed to its end lets the connection go on
        self._answered = 0  # responses completed on it
        self._refusal: bytes | None = None  # an answer to send once the requests before it are answered
        self._deadline: asyncio.TimerHandle | None = None
        self._framer = Framer(self.limits.max_header_bytes)
        self._await_head()

    def _await_head(self) -> None:
        """Start the clock for the next request head."""
        self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._too_slow, self._heads)

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, heads_when_started: int) -> None:
        self._deadline = None
        if self._heads == heads_when_started and not self.transport.is_closing():
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        """Feed the parser one piece at a time, each up to the next boundary the framer finds (gateway/framing.py),
        and check that the parser saw that boundary there."""
        start = 0
        while start < len(data) and not self.lingering and self._refusal is None and not self._framer.closed:
            try:
                end, boundary = self._framer.piece(data, start)
            except TooLarge as exc:
                limit = self._framer.limit
                self._refuse("request-head-too-large", f"the {exc.what} exceeds {limit} bytes")
                return
            except Unframed:
                self.send_400_response("unframed")
                return
            heads, messages = self._heads, self._messages
            piece = memoryview(data)[start:end] if start or end < len(data) else data  # a view: no copy
            super().data_received(piece)  # type: ignore[arg-type]  # typed bytes; httptools takes any buffer
            if self.lingering or self._refusal is not None:
                return  # the parser refused the request
            seen = (self._heads - heads, self._messages - messages)  # what the parser completed in the piece
            try:
                if boundary is Boundary.HEAD and seen in ((1, 0), (1, 1)):
                    self._framer.head_done(self.headers, seen == (1, 1), self._keep_alive)
                elif boundary is Boundary.MESSAGE and seen == (0, 1):
                    self._framer.message_done(self._keep_alive)
                elif boundary is not Boundary.NONE or seen != (0, 0):
                    raise Unframed(f"the parser completed {seen} (heads, messages) in a piece ending in {boundary}")
            except Unframed:
                self.send_400_response("unframed")
                return
            start = end

    def send_400_response(self, msg: str) -> None:
        self._refuse("malformed-request", "the request is not valid HTTP/1.1")

    def _refuse(self, slug: str, detail: str) -> None:
        """Answer with a problem and close (lingering); after the answers to the requests before it, if any are
        pending (pipelined), so that every answer goes to its own request. Nothing more is parsed."""
        self._refusal = problem_answer(slug, detail)
        self._stop_clock()
        broken_body = self._messages < self._heads and not self.cycle.response_started  # the answer to it is this
        if broken_body or self._answered == self._heads:
            self._send_refusal()

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        self._transport.write(self._refusal)
        self._linger()

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._stop_clock()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._messages += 1
        self._keep_alive = self.parser.should_keep_alive()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()
        if self._answered < self._heads or self.transport.is_closing():  # a pipelined request is waiting
            return
        if self._refusal is not None:
            self._send_refusal()
        else:
            self._await_head()

    def close_connection(self) -> None:
        """Every close uvicorn asks for: lingering after a refusal, else at once (an answer of the app to a
        client still sending has already waited for it: gateway/early.py)."""
        if self.lingering or self._transport.is_closing():
            return
        if self._refusal is not None:
            self._linger()
        else:
            self._transport.close()

    def _linger(self) -> None:
        """Shut down the write side once the answer is out, then read and discard until the client closes
        (eof_received closes the transport) or `linger_s` passes."""
        self.lingering = True
        self._stop_clock()
        self._unset_keepalive_if_required()
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(self.limits.linger_s, self._transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)
