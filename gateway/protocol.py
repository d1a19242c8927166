"""uvicorn's HTTP/1.1 protocol with two guards against slow and oversized request heads (see the class)."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.settings import get_settings

HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 22\r\n\r\nRequest head too large"
)


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head (slowloris): uvicorn closes idle
    keep-alive connections but waits forever for a head that trickles in, or for a first byte that never
    comes. A connection without a complete head `header_timeout_s` after it opened (or after its previous
    response) is closed. Naming the protocol class also keeps h11, whose head size bound
    (`h11_max_incomplete_event_size`) httptools would ignore. h11 checks that bound only against what is
    still buffered between reads, so a head that arrives in one read (up to ~100 KiB on loopback) passed it:
    the head's bytes are counted here and a head above `max_header_bytes` gets 431 and a closed connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._cycle_when_armed = self.cycle
        self._head = b""  # the start of the coming request head, up to the limit (None once it is complete)
        timeout = get_settings().header_timeout_s
        self._head_deadline = self.loop.call_later(timeout, self._head_deadline_passed)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_deadline_passed(self) -> None:
        self._head_deadline = None
        if self.cycle is self._cycle_when_armed and not self.transport.is_closing():
            self.transport.close()  # no complete request head in time

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            limit = get_settings().max_header_bytes
            self._head += data[: limit + 4 - len(self._head)]
            if b"\r\n\r\n" in self._head:
                self._head = None
            elif len(self._head) > limit:
                self._head = None
                self.transport.write(HEAD_TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._cycle_when_armed:  # a new request head was parsed
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._disarm_head_deadline()
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)
