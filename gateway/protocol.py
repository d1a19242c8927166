"""The HTTP/1.1 connection under uvicorn, with guards against slow and oversized request heads and a graceful
close for its refusals (see `GuardedConnection`). Answers the app gives before a body has arrived:
gateway/early.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.framing import Answers, Boundary, Framer, TooLarge, Unframed
from gateway.headers import API_CSP, SECURITY_HEADERS
from gateway.problems import PROBLEM_JSON, Problem

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

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


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedConnection]:
    """The protocol class for uvicorn's `http`, its connections held to `limits` (uvicorn makes one per
    connection with its own arguments, so the limits travel on the class)."""

    class Limited(GuardedConnection):
        pass

    Limited.limits = limits
    return Limited


class Tap(asyncio.Transport):
    """The connection's socket as uvicorn's protocol sees it: what it writes, its close and its pauses go
    through the connection that owns it."""

    def __init__(self, transport: asyncio.Transport, connection: GuardedConnection) -> None:
        super().__init__()
        self._transport = transport
        self._connection = connection

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._connection.answer_written(data if isinstance(data, bytes) else bytes(data))

    def close(self) -> None:
        self._connection.close_asked()

    def is_closing(self) -> bool:
        return self._connection.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if not self._connection.closing:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._connection.closing:
            self._transport.resume_reading()


class GuardedConnection(asyncio.Protocol):
    """One HTTP/1.1 connection: uvicorn's fast (httptools) protocol, which runs the app, behind a deadline and a
    size bound for request heads, and refusals that reach the client. Composition, not a subclass: uvicorn's
    protocol is made with its public constructor and sees the socket through a `Tap`; everything here uses
    asyncio's Protocol and Transport methods and httptools' public parser.

    Deadline (slowloris): uvicorn closes idle keep-alive connections but waits forever for a head that
    trickles in, or for a first byte that never comes. A connection that is waiting for a request head
    (just opened, or every answer given) and has none complete `header_timeout_s` later is closed.
    Size: httptools has no bound on a head (and copies a long header value again with every read), so
    everything that is not body data is counted here, each part against `max_header_bytes`: a request head
    with any empty lines before it, whether it came alone or pipelined behind another request in the same
    read, a chunk-size line, a chunked body's trailer section, and the framing of all its chunks together
    beyond 1/16 of their data (gateway/framing.py finds where each ends). Each piece, up to each boundary, goes
    first to a parser of our own (httptools, as uvicorn's), which must see that boundary exactly there and
    accept the bytes, and only then to uvicorn's protocol: what reaches the app is what was checked. Above the
    limit: 431; bytes that are not HTTP: 400. A refusal of a pipelined request is sent after the answers to the
    requests before it (gateway/framing.py `Answers` finds where each answer written ends). Both are
    problem+json like every other error.

    Refusals close lingering: closing a socket with unread bytes makes the kernel reset the connection, and the
    reset destroys the answer on its way. So the write side is shut down after the answer (the client reads it
    to the end), what the client still sends is read and thrown away unparsed, and the socket closes when the
    client closes its side or after `linger_s`. Nothing after a refusal is ever taken for a request, and
    nothing uvicorn's protocol writes after it is sent. (The app's own answers to a client still uploading are
    held in ASGI, gateway/early.py.)

    `limits` is set on the class that `guarded_protocol` makes."""

    limits: ClassVar[ConnectionLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,  # uvicorn's name for it
    ) -> None:
        self._http = HttpToolsProtocol(config, server_state, app_state, _loop)
        self._loop = _loop or asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)  # its callbacks: on_header, on_headers_complete, ...
        self._framer = Framer(self.limits.max_header_bytes)
        self._answers = Answers()
        self._headers: list[tuple[bytes, bytes]] = []  # the current request head's
        self._heads = 0  # request heads parsed on this connection (and passed on)
        self._messages = 0  # requests parsed to their end
        self._keep_alive = True  # whether the last request parsed to its end lets the connection go on
        self._refusal: bytes | None = None  # an answer to send once the requests before it are answered
        self._lingering = False
        self._deadline: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    # The socket's side (asyncio.Protocol).

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # asyncio types it BaseTransport; the event loop hands a Transport
        self._transport = transport
        self._http.connection_made(Tap(transport, self))
        self._await_head()

    def data_received(self, data: bytes) -> None:
        """Parse one piece at a time, each up to the next boundary the framer finds (gateway/framing.py), check
        that the parser saw that boundary there, and pass the piece on to uvicorn's protocol."""
        start = 0
        while start < len(data) and not self._lingering and self._refusal is None and not self._framer.closed:
            try:
                end, boundary = self._framer.piece(data, start)
            except TooLarge as exc:
                self._refuse("request-head-too-large", f"the {exc.what} exceeds {self._framer.limit} bytes")
                return
            except Unframed:
                self._refuse_malformed()
                return
            heads, messages = self._heads, self._messages
            piece = memoryview(data)[start:end] if start or end < len(data) else data  # a view: no copy
            try:
                try:  # noqa: SIM105  # contextlib.suppress costs a context manager per piece: measurable here
                    self._parser.feed_data(piece)
                except httptools.HttpParserUpgrade:  # uvicorn's parser stops there too
                    pass
                seen = (self._heads - heads, self._messages - messages)  # what the parser completed in the piece
                if boundary is Boundary.HEAD and seen in ((1, 0), (1, 1)):
                    self._framer.head_done(self._headers, seen == (1, 1), self._keep_alive)
                    self._headers = []
                    self._stop_clock()
                elif boundary is Boundary.MESSAGE and seen == (0, 1):
                    self._framer.message_done(self._keep_alive)
                elif boundary is not Boundary.NONE or seen != (0, 0):
                    raise Unframed(f"the parser completed {seen} (heads, messages) in a piece ending in {boundary}")
            except (httptools.HttpParserError, Unframed):
                self._heads, self._messages = heads, messages  # uvicorn's protocol never sees this piece
                self._refuse_malformed()
                return
            self._http.data_received(piece)  # type: ignore[arg-type]  # typed bytes; httptools takes any buffer
            start = end

    def eof_received(self) -> None:
        self._http.eof_received()  # returning None closes the socket (when lingering too)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._http.connection_lost(exc)

    def pause_writing(self) -> None:
        self._http.pause_writing()

    def resume_writing(self) -> None:
        self._http.resume_writing()

    # The parser's callbacks (httptools).

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._answers.head_requests.append(self._parser.get_method() == b"HEAD")

    def on_message_complete(self) -> None:
        self._messages += 1
        self._keep_alive = self._parser.should_keep_alive()

    # uvicorn's side (through the Tap).

    @property
    def closing(self) -> bool:
        return self._lingering or self._transport.is_closing()

    def answer_written(self, data: bytes) -> None:
        """Bytes of an answer, in order; after a refusal, nothing more is sent."""
        if self._lingering:
            return
        self._transport.write(data)
        answers, done = self._answers, self._answers.done
        answers.written(data)
        # Every request answered, on a connection that goes on: a refusal's turn, or the next head's clock.
        if answers.done > done and answers.done == self._heads and not answers.closing:
            if self._refusal is not None:
                self._send_refusal()
            else:
                self._await_head()

    def close_asked(self) -> None:
        """Every close uvicorn asks for: lingering with a refusal waiting, else at once (an answer of the app to a
        client still sending has already waited for it: gateway/early.py)."""
        if self.closing:
            return
        if self._refusal is not None:
            self._linger()
        else:
            self._transport.close()

    # Deadline and refusals.

    def _await_head(self) -> None:
        """Start the clock for the next request head."""
        self._stop_clock()
        self._deadline = self._loop.call_later(self.limits.header_timeout_s, self._too_slow, self._heads)

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, heads_when_started: int) -> None:
        self._deadline = None
        if self._heads == heads_when_started and not self.closing:
            self._transport.close()

    def _refuse_malformed(self) -> None:
        self._refuse("malformed-request", "the request is not valid HTTP/1.1")

    def _refuse(self, slug: str, detail: str) -> None:
        """Answer with a problem and close (lingering); after the answers to the requests before it, if any are
        pending (pipelined), so that every answer goes to its own request. Nothing more is parsed."""
        self._refusal = problem_answer(slug, detail)
        self._stop_clock()
        answers = self._answers
        # A request whose body broke it, and whose answer has not begun: this is its answer.
        broken_body = self._messages < self._heads and answers.begun == answers.done == self._heads - 1
        if broken_body or answers.done == self._heads:
            self._send_refusal()

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        self._transport.write(self._refusal)
        self._linger()

    def _linger(self) -> None:
        """Shut down the write side once the answer is out, then read and discard until the client closes
        (eof_received) or `linger_s` passes."""
        self._lingering = True
        self._stop_clock()
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._transport.resume_reading()
        self._linger_timer = self._loop.call_later(self.limits.linger_s, self._transport.close)
