"""The run: a lazy producer of file batches, a fixed pool of workers, one writer, a progress bar.

Memory stays bounded whatever the folder size: the queue holds at most `concurrency` batches of paths,
and a file's bytes are read by the worker that sends it. Each result is written (and flushed) as soon as
its answer arrives. Ctrl-C (or SIGTERM) cancels the in-flight requests, keeps everything written so far,
prints the summary and ends with 130 (143); the files in flight are sent again by `--resume`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from client import __version__
from client.inputs import iter_inputs
from client.output import RecordWriter, VectorWriter, done_paths, vectors_so_far
from client.records import Record, client_error
from client.sender import Fatal, RetryPolicy, Sender
from client.tasks import Classify, Embed, Task


@dataclass
class Options:
    paths: list[str]
    url: str
    api_key: str
    task: Task = field(default_factory=Classify)  # Embed: embeddings to .npy instead of classes
    apigw_key: str | None = None
    recursive: bool = False
    glob: str | None = None
    concurrency: int = 4
    batch_size: int = 8
    retries: int = 5
    timeout: float = 60.0
    output: str | None = None
    resume: bool = False
    progress: bool = True
    verbose: bool = False
    max_file_bytes: int = 8 * 1024 * 1024
    backoff_s: float = 0.5
    explain_dir: str | None = None  # classify: also write each image's /v1/explain PNG here

    def __post_init__(self) -> None:
        if self.explain_dir is not None and not isinstance(self.task, Classify):
            raise ValueError("explain_dir goes with Classify: an explanation is of the classes")


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    signal: int | None = None  # the signal that interrupted the run
    fatal: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        return (self.ok + self.failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        counts = f"{self.ok} ok, {self.failed} failed, {self.skipped} skipped, {self.retries} retries"
        return f"imgcls: {counts} in {self.elapsed_s:.1f} s ({self.rate:.1f} img/s)"

    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        if self.fatal is not None:
            return 2
        return 1 if self.failed else 0


def count_pending(opts: Options, done: set[str], stop: threading.Event) -> int | None:
    """How many files the run will send (a second lazy walk, for the progress bar's ETA)."""
    n = 0
    for path in iter_inputs(opts.paths, opts.recursive, opts.glob):
        if stop.is_set():
            return None
        n += path not in done
    return n


class Run:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.summary = Summary()
        resume = opts.output if opts.resume else None  # the CLI requires --output with --resume
        embed = isinstance(opts.task, Embed)
        self.so_far = vectors_so_far(resume) if embed and resume else None  # checked before anything is sent
        if embed:
            self.done = set(self.so_far.paths) if self.so_far else set()
        else:
            self.done = done_paths(resume) if resume else set()
        self.bar = tqdm(
            total=None,
            unit="img",
            file=sys.stderr,
            disable=not opts.progress,
            dynamic_ncols=True,
            smoothing=0.1,
            mininterval=0.5,
        )

    def log(self, message: str) -> None:
        if self.opts.verbose:
            self.bar.write(message, file=sys.stderr)

    async def main(self) -> Summary:
        loop = asyncio.get_running_loop()
        work = asyncio.create_task(self.work())
        stop_counting = threading.Event()
        counter = None
        if self.opts.progress:
            counter = asyncio.create_task(asyncio.to_thread(count_pending, self.opts, self.done, stop_counting))
            counter.add_done_callback(self._set_total)

        def interrupt(signum: int) -> None:
            self.summary.signal = signum
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C stops at once
                loop.remove_signal_handler(sig)
            work.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt, sig)
        try:
            await work
        except asyncio.CancelledError:
            if self.summary.signal is None:
                raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            stop_counting.set()
            if counter is not None:
                counter.cancel()
            self.summary.elapsed_s = time.monotonic() - self.summary.started
            self.bar.close()
        return self.summary

    def _set_total(self, task: asyncio.Task[int | None]) -> None:
        if not task.cancelled() and task.exception() is None and task.result() is not None:
            self.bar.total = task.result()
            self.bar.refresh()

    async def work(self) -> None:
        opts = self.opts
        writer: RecordWriter | VectorWriter
        if isinstance(opts.task, Embed):
            assert opts.output is not None  # the CLI requires it
            writer = VectorWriter(opts.output, self.so_far)
        else:
            writer = RecordWriter(opts.output, resume=opts.resume)
        queue: asyncio.Queue[list[str] | None] = asyncio.Queue(maxsize=opts.concurrency)
        limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
        timeout = httpx.Timeout(opts.timeout, connect=min(10.0, opts.timeout))
        # The gateway key goes as Bearer: behind Amazon API Gateway, x-api-key is API Gateway's own key.
        headers = {"User-Agent": f"imgcls/{__version__}", "Authorization": f"Bearer {opts.api_key}"}
        if opts.apigw_key:
            headers["x-api-key"] = opts.apigw_key
        try:
            async with httpx.AsyncClient(base_url=opts.url, limits=limits, timeout=timeout, headers=headers) as http:
                sender = Sender(
                    http,
                    opts.task,
                    batch=opts.batch_size > 1,
                    policy=RetryPolicy(opts.retries, opts.backoff_s),
                    max_file_bytes=opts.max_file_bytes,
                    log=self.log,
                    concurrency=opts.concurrency,
                )
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self.produce(queue))
                        for _ in range(opts.concurrency):
                            group.create_task(self.consume(queue, sender, writer))
                except* Fatal as fatal:
                    self.summary.fatal = str(fatal.exceptions[0])
                finally:
                    self.summary.retries = sender.retries
        finally:
            writer.close()

    async def produce(self, queue: asyncio.Queue[list[str] | None]) -> None:
        batch: list[str] = []
        for n, path in enumerate(iter_inputs(self.opts.paths, self.opts.recursive, self.opts.glob)):
            if path in self.done:
                self.summary.skipped += 1
                if n % 1000 == 0:
                    await asyncio.sleep(0)  # let the loop breathe while skipping a long resumed prefix
                continue
            batch.append(path)
            if len(batch) >= self.opts.batch_size:
                await queue.put(batch)
                batch = []
        if batch:
            await queue.put(batch)
        for _ in range(self.opts.concurrency):
            await queue.put(None)

    async def consume(
        self, queue: asyncio.Queue[list[str] | None], sender: Sender, writer: RecordWriter | VectorWriter
    ) -> None:
        while (batch := await queue.get()) is not None:
            for record in await sender.send(batch):
                if self.opts.explain_dir and record["status"] == "ok":
                    await self.explain(sender, record)
                writer.write(record)
                if record["status"] == "ok":
                    self.summary.ok += 1
                else:
                    self.summary.failed += 1
                    self.log(f"failed: {record['path']}: {record['error']['detail']}")
            self.bar.update(len(batch))

    async def explain(self, sender: Sender, record: Record) -> None:
        """Write the file's explanation PNG into --explain DIR; the record says where, or why not."""
        assert self.opts.explain_dir is not None
        png = await sender.explanation(record["path"])
        if not isinstance(png, bytes):
            record["explanation_error"] = png
            self.log(f"no explanation for {record['path']}: {png['detail']}")
            return
        # The file's own path mirrored under DIR: distinct files never share an overlay.
        target = Path(self.opts.explain_dir) / (record["path"].lstrip("/") + ".png")
        try:
            await asyncio.to_thread(write_file, target, png)
        except OSError as exc:
            record["explanation_error"] = client_error("output-error", f"cannot write {target}: {exc}")
            return
        record["explanation"] = str(target)


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def run(opts: Options) -> Summary:
    return asyncio.run(Run(opts).main())
