"""Drawing explanation PNGs, at most `max_concurrent_renders` at once per gateway process.

A render decodes the whole image in the thread pool (up to `max_pixels`, 40 MP: about 160 MB for an RGBA
PNG, more while it is converted); unbounded, a few large PNGs explained at once could exhaust a small
gateway container's memory. A render that finds no free slot within `queue_timeout_s` is answered 503
`server-busy` with Retry-After, as an upstream without a free connection is, instead of queueing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from gateway.problems import Problem


class RenderSlots:
    def __init__(self, limit: int, wait_s: float, retry_after_s: int) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(limit)

    async def run(self, draw: Callable[..., bytes], *args: Any) -> bytes:
        """`draw(*args)` in the thread pool once a slot is free; the slot is held until the thread has ended,
        even when the request is cancelled meanwhile."""
        try:
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            detail = f"{self.limit} explanation image(s) already being drawn; retry shortly"
            raise Problem("server-busy", detail, headers={"Retry-After": str(self.retry_after_s)}) from None
        drawing = asyncio.ensure_future(run_in_threadpool(draw, *args))
        drawing.add_done_callback(self._release)
        return await asyncio.shield(drawing)  # a cancelled request leaves the drawing (and its slot) to finish

    def _release(self, drawing: asyncio.Future[bytes]) -> None:
        if not drawing.cancelled():
            drawing.exception()  # retrieved here too: nobody may be awaiting it any more
        self._slots.release()
