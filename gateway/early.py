"""Answers given before the client has finished sending its body (401, 413, 415, 429, 503, 408 to a client
still uploading), held in ASGI so that they reach the client whatever the server underneath.

Closing a socket with unread bytes makes the kernel reset the connection, and the reset destroys the answer
on its way. So an answer that starts before the request's body has all arrived first reads the rest if it is
small (DRAIN_BYTES, within `linger_s`) or has already arrived, and the connection is kept. Otherwise the answer says
`Connection: close`, its bytes are all sent but its end is held back, and what the client still sends is read
and thrown away until the body ends, the client leaves or `linger_s` passes; then the answer ends and the
server closes the connection. Nothing after an early answer is taken for a request: the connection closes.

Measured (docs/development.md, "The HTTP edge"): this holds on uvicorn and on Hypercorn, unchanged
tests/test_early_answers.py; Granian's server resets such connections whatever the app does.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.digits import ascii_int

# A refused request's body up to this size is read to its end before the answer, keeping the connection (the
# usual case: a small upload whose head arrived first). Beyond it, the answer closes the connection.
DRAIN_BYTES = 64 * 1024


class EarlyAnswerMiddleware:
    """Pure ASGI, outermost: its `receive` is the server's."""

    def __init__(self, app: ASGIApp, linger_s: float) -> None:
        self.app = app
        self.linger_s = linger_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = ascii_int(headers.get("content-length", "").strip())
        body_done = "transfer-encoding" not in headers and not declared
        # The server sends `100 Continue` on the first read: a refused request's body is not asked for.
        asked_first = headers.get("expect", "").lower() == "100-continue"
        read_any = False
        ending: Message | None = None  # the answer's last message, held back while the rest is read

        async def tracked() -> Message:
            nonlocal body_done, read_any
            read_any = True
            message = await receive()
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def discard(wait_s: float) -> None:
            """Read and drop the rest of the body, within `wait_s` (0: what has arrived already)."""
            if asked_first and not read_any:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    while not body_done:
                        await tracked()

        async def send_early(message: Message) -> None:
            nonlocal ending
            if message["type"] == "http.response.start" and not body_done:
                await discard(0)  # a body (chunked too) that came with its head, or before the answer
                if not body_done and declared is not None and declared <= DRAIN_BYTES:
                    await discard(self.linger_s)
                if not body_done:
                    MutableHeaders(scope=message)["Connection"] = "close"
                    ending = {"type": "http.response.body", "body": b"", "more_body": False}
            if ending is not None and message["type"] == "http.response.body" and not message.get("more_body"):
                message = {**message, "more_body": True}
            await send(message)

        await self.app(scope, tracked, send_early)
        if ending is not None:  # after the app: its log line and metrics do not wait for the client
            await discard(self.linger_s)
            await send(ending)
