"""Where the request heads, bodies, chunk-size lines and trailer sections of one connection begin and end,
found in the bytes as they arrive, so that everything that is not body data is counted against the head
limit, whatever precedes it: empty lines before a request line (RFC 9112 2.2; the parser skips any number),
a request pipelined behind another in the same read, a chunk-size line, a chunked body's trailers. And where
the answers written on the connection end (`Answers`), so that a refusal waits for the answers before it.

Each byte is looked at once (O(new bytes); bodies are skipped by length, never scanned). The HTTP parser
(llhttp, through httptools) still parses everything: gateway/protocol.py feeds it one piece at a time, up to
each boundary found here, and checks that the parser saw the same boundary (a request head complete, a message
complete) exactly there, so a disagreement fails closed instead of leaving bytes uncounted.
"""

from __future__ import annotations

import enum
import re
import sys
from collections import deque

from gateway.digits import ascii_int

END_OF_HEAD = b"\r\n\r\n"
NOT_CRLF = re.compile(rb"[^\r\n]")
HEX = re.compile(rb"[0-9A-Fa-f]+")
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?\r\n")  # size, extensions (the parser checks them)
STATUS = re.compile(rb"HTTP/\d\.\d (\d{3})\b")  # an answer's status line, and the fields that frame its body:
ANSWER_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding|connection)[ \t]*:([^\r\n]*)", re.IGNORECASE)
# A chunked body's framing (size lines, extensions, CRLFs) may exceed the head limit by 1/16 of its data:
# chunks of a hundred bytes or more pass whatever their number; a flood of tiny chunks, which costs the
# parser (and this) about a microsecond each, is refused after some thousands.
FRAMING_SHARE = 16


class Boundary(enum.Enum):
    NONE = "none"  # the piece ends inside a part of the message
    HEAD = "head"  # the piece ends with a request head
    MESSAGE = "message"  # the piece ends with a message (its body, or its trailer section)


class TooLarge(Exception):
    """A request head, chunk-size line or trailer section is larger than the limit."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class Unframed(Exception):
    """The request's framing cannot be followed (the parser would have refused it)."""


class State(enum.Enum):
    HEAD = enum.auto()
    BODY = enum.auto()  # Content-Length: `left` bytes to come
    CHUNKS = enum.auto()  # chunk-size lines (with extensions), and `left` bytes of chunk data and its CRLF
    TRAILERS = enum.auto()
    CLOSED = enum.auto()  # after a message that closes the connection: the parser ignores the rest


class Framer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.state = State.HEAD
        self._start_head(b"")

    def _start_head(self, tail: bytes) -> None:
        self._used = 0  # bytes of the current head-like part so far
        self._tail = tail  # its last bytes (at most 3), for an end that straddles two reads
        self._begun = bool(tail)  # a request head begins at its first byte that is not CR or LF
        self._left = 0
        self._line = b""
        self._framing = self._data = 0  # a chunked body's framing bytes and data bytes so far

    @property
    def closed(self) -> bool:
        """Nothing more is to be parsed on this connection: the rest is dropped."""
        return self.state is State.CLOSED

    def piece(self, data: bytes, start: int) -> tuple[int, Boundary]:
        """The end of the next piece of `data[start:]` to feed the parser, and the boundary it ends with."""
        if self.state is State.HEAD:
            return self._head(data, start, "request head")
        if self.state is State.BODY:
            end = min(len(data), start + self._left)
            self._left -= end - start
            return end, Boundary.MESSAGE if self._left == 0 else Boundary.NONE
        if self.state is State.CLOSED:
            return len(data), Boundary.NONE
        return self._chunked(data, start)

    def _head(self, data: bytes, start: int, what: str) -> tuple[int, Boundary]:
        """A request head (after any empty lines) or a trailer section, up to its blank line."""
        pos = start
        if not self._begun:
            first = NOT_CRLF.search(data, pos, min(len(data), pos + self.limit - self._used + 1))
            skipped = (first.start() if first else len(data)) - pos
            self._used += skipped
            if self._used > self.limit:
                raise TooLarge(what)
            if first is None:
                return len(data), Boundary.NONE
            self._begun, pos = True, first.start()
        # An end straddling the previous read and this one.
        joined = self._tail + data[pos : pos + 3]
        found = joined.find(END_OF_HEAD)
        if found >= 0:
            end = pos + found + len(END_OF_HEAD) - len(self._tail)
        else:
            stop = min(len(data), pos + self.limit - self._used + len(END_OF_HEAD))
            found = data.find(END_OF_HEAD, pos, stop)
            end = found + len(END_OF_HEAD) if found >= 0 else -1
        if end < 0:
            self._used += len(data) - pos
            if self._used > self.limit:
                raise TooLarge(what)
            self._tail = (self._tail + data[max(pos, len(data) - 3) :])[-3:]
            return len(data), Boundary.NONE
        if self._used + end - pos > self.limit:
            raise TooLarge(what)
        if self.state is State.TRAILERS:
            self.state = State.HEAD
            self._start_head(b"")
            return end, Boundary.MESSAGE
        return end, Boundary.HEAD

    def _chunked(self, data: bytes, start: int) -> tuple[int, Boundary]:
        """Whole chunks are passed over in one piece; it ends with the trailer section or the data. One regex
        match per chunk-size line that arrived whole (the parser spends about as long on each chunk)."""
        pos, end, line_at = start, len(data), CHUNK_LINE.match
        while pos < end:
            if self._left:  # chunk data and its CRLF
                step = min(end - pos, self._left)
                self._left -= step
                pos += step
                continue
            if self.state is State.TRAILERS:
                return self._head(data, pos, "trailer section")
            whole = None if self._line else line_at(data, pos, min(end, pos + self.limit))
            if whole is not None:
                size, framing, pos = int(whole[1], 16), whole.end() - pos, whole.end()
            else:  # a line cut by the end of the read, or an unusual one
                newline = data.find(b"\n", pos, min(end, pos + self.limit - len(self._line)))
                if newline < 0:
                    self._line += data[pos:]
                    if len(self._line) >= self.limit:
                        raise TooLarge("chunk-size line")
                    return end, Boundary.NONE
                line, self._line, pos = self._line + data[pos : newline + 1], b"", newline + 1
                digits = HEX.match(line)
                if digits is None or len(digits[0].lstrip(b"0")) > 16:  # the parser's bound: 64 bits
                    raise Unframed("invalid chunk size")
                size, framing = int(digits[0], 16), len(line)
            self._framing += framing + 2
            self._data += size
            if self._framing > self.limit + self._data // FRAMING_SHARE:
                raise TooLarge("chunked framing")
            if size:
                self._left = size + 2
            else:  # the last chunk: its line's CRLF may begin the blank line that ends the trailers
                self.state = State.TRAILERS
                self._start_head(b"\r\n")
        return pos, Boundary.NONE

    def head_done(self, headers: list[tuple[bytes, bytes]], message_done: bool, keep_alive: bool) -> None:
        """After a request head: where its body ends, from the headers the parser accepted (names in any case)."""
        if message_done:
            self.message_done(keep_alive)
            return
        fields = {name.lower(): value for name, value in headers}
        if b"transfer-encoding" in fields:  # the parser accepts it on a request only with chunked last
            self.state = State.CHUNKS
            self._start_head(b"")
            return
        length = ascii_int(fields.get(b"content-length", b"").strip())
        if not length:
            raise Unframed("a body without a length")
        self.state = State.BODY
        self._start_head(b"")
        self._left = length

    def message_done(self, keep_alive: bool) -> None:
        self.state = State.HEAD if keep_alive else State.CLOSED
        self._start_head(b"")


class Answers:
    """Where the answers written on one connection begin and end: the server's own bytes, so nothing is limited.
    For each request in order, `head_requests` says whether it was a HEAD (its answer has a length but no body);
    interim answers (100 Continue) are not counted. Lean: this runs for every answer."""

    def __init__(self) -> None:
        self._head = b""  # the answer head so far, when it came in several writes
        self._left = 0  # bytes of a body with a Content-Length still to come
        self._chunks: Framer | None = None  # a chunked body's framing (a request's, unlimited)
        self._keep_alive = True
        self.head_requests: deque[bool] = deque()
        self.begun = 0  # answers whose head is written
        self.done = 0  # answers written to their end
        self.closing = False  # the last answer begun closes the connection (`Connection: close`)

    def written(self, data: bytes) -> None:
        pos = 0
        while pos < len(data) and (self._keep_alive or self.begun > self.done):
            if self._left:
                step = min(self._left, len(data) - pos)
                self._left -= step
                pos += step
                if not self._left:
                    self.done += 1
            elif self._chunks is not None:
                pos, boundary = self._chunks.piece(data, pos)
                if boundary is Boundary.MESSAGE:
                    self._chunks = None
                    self.done += 1
            else:
                head = self._head + data[pos:] if self._head else data[pos:]
                end = head.find(END_OF_HEAD)
                if end < 0:
                    self._head = head
                    return
                pos += end + len(END_OF_HEAD) - len(self._head)
                self._head = b""
                self._head_done(head[: end + 2])

    def _head_done(self, head: bytes) -> None:
        status = int(STATUS.match(head)[1])  # type: ignore[index]  # the server's own head has a status line
        if status < 200:  # interim: the answer follows
            return
        self.begun += 1
        fields = {name.lower(): value.strip() for name, value in ANSWER_FRAMING.findall(head)}
        connection = fields.get(b"connection", b"").lower().split(b",")
        self._keep_alive = b"close" not in [token.strip() for token in connection]
        self.closing = not self._keep_alive
        if (self.head_requests.popleft() if self.head_requests else False) or status in (204, 304):
            self.done += 1
        elif b"transfer-encoding" in fields:
            self._chunks = Framer(sys.maxsize)
            self._chunks.head_done([(b"transfer-encoding", b"chunked")], False, True)
        elif length := ascii_int(fields.get(b"content-length", b"")):
            self._left = length
        else:
            self.done += 1
