"""`imgcls classify PATH...` / `imgcls embed PATH... -o V.npy`: classify files and folders, or embed them,
through the gateway. See docs/client.md.

Exit status: 0 all ok, 1 some file failed, 2 usage error or a fatal answer (bad API key), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from client import __version__
from client.inputs import missing
from client.output import OutputError, format_of
from client.pipeline import Options, run
from client.tasks import Classify, Embed

DEFAULT_URL = "http://127.0.0.1:8000"
N = TypeVar("N", int, float)


def in_range(kind: type[N], low: float = 1, high: float | None = None) -> Callable[[str], N]:
    """An argparse type: a number of `kind` between `low` and `high` (no upper bound without one)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is outside {low}..{high if high is not None else '∞'}")
        return value

    return parse


def add_common(c: argparse.ArgumentParser) -> None:
    """The options `classify` and `embed` share: inputs, the gateway, concurrency, retries, progress."""
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    c.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    c.add_argument("--glob", help="only files in folders whose name matches, e.g. '*.jpg' (default: all files)")
    c.add_argument(
        "--url",
        default=os.environ.get("IMGCLS_URL", DEFAULT_URL),
        help=f"gateway base URL (env IMGCLS_URL, default {DEFAULT_URL})",
    )
    c.add_argument(
        "--api-key",
        default=os.environ.get("IMGCLS_API_KEY"),
        help="API key (env IMGCLS_API_KEY; prefer the variable: arguments show in ps)",
    )
    c.add_argument(
        "--apigw-key",
        default=os.environ.get("IMGCLS_APIGW_KEY"),
        help="Amazon API Gateway key, sent as x-api-key (env IMGCLS_APIGW_KEY)",
    )
    c.add_argument("-c", "--concurrency", type=in_range(int, 1, 256), default=4, help="requests in flight (4)")
    c.add_argument(
        "-b",
        "--batch-size",
        type=in_range(int, 1, 256),
        default=8,
        help="files per batch request; 1 sends one file per request (8; gateway max 32)",
    )
    c.add_argument("--retries", type=in_range(int, 0), default=5, help="retries on 429/503/504 and network errors (5)")
    c.add_argument("--timeout", type=in_range(float, 0.1), default=60.0, help="seconds per request (60)")
    c.add_argument("--resume", action="store_true", help="skip files already in --output and append to it")
    c.add_argument(
        "--max-file-bytes",
        type=in_range(int, 1),
        default=8 * 1024 * 1024,
        help="fail larger files without reading them (8 MiB, the gateway's limit)",
    )
    progress = c.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show the progress bar (default: when stderr is a terminal)",
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    c.add_argument("-v", "--verbose", action="store_true", help="log retries and failures to stderr")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgcls", description="Batch image classification through the gateway.")
    p.add_argument("--version", action="version", version=f"imgcls {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "classify",
        help="classify files and folders; one result per file",
        description="Classify files and folders; one JSONL/CSV record per file.",
    )
    add_common(c)
    c.add_argument(
        "-k",
        "--top-k",
        type=in_range(int, 1, 20),
        help="classes per image, 1-20 and at most the model's classes (default: 5, or the model's classes if fewer)",
    )
    c.add_argument("--min-score", type=in_range(float, 0.0, 1.0), help="drop predictions scoring below this")
    c.add_argument("-o", "--output", help="results file, .jsonl or .csv (default: JSONL on stdout)")
    c.add_argument(
        "--explain",
        metavar="DIR",
        help="also write each image's explanation (/v1/explain PNG: where the model saw its top class) "
        "into DIR at the file's own path under it (DIR/<path>.png); the record's `explanation` "
        "says where",
    )
    e = sub.add_parser(
        "embed",
        help="embeddings of files and folders, to .npy plus a paths file",
        description="L2-normalised 2048-d embeddings (/v1/embed) to OUTPUT.npy (float32, one row "
        "per file) and OUTPUT.paths.txt (row i's path on line i, as a JSON string). "
        "--resume continues after the rows already written; failed files are not "
        "written, so a resumed run sends them again.",
    )
    add_common(e)
    e.add_argument("-o", "--output", required=True, help="the vectors file, .npy")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    embed = args.command == "embed"
    if not args.api_key:
        p.error("no API key: set IMGCLS_API_KEY or pass --api-key")
    if absent := missing(args.paths):
        p.error(f"no such file or folder: {', '.join(absent)}")
    if args.resume and not args.output:
        p.error("--resume needs --output")
    if embed and not args.output.endswith(".npy"):
        p.error("embed writes .npy: give --output a .npy name")
    if not embed:
        try:
            format_of(args.output)
        except OutputError as exc:
            p.error(str(exc))
    explain_dir = None if embed else args.explain
    if explain_dir:
        os.makedirs(explain_dir, exist_ok=True)
    opts = Options(
        paths=args.paths,
        url=args.url,
        api_key=args.api_key,
        task=Embed() if embed else Classify(args.top_k, args.min_score),
        apigw_key=args.apigw_key,
        recursive=args.recursive,
        glob=args.glob,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        retries=args.retries,
        timeout=args.timeout,
        output=args.output,
        resume=args.resume,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
        verbose=args.verbose,
        max_file_bytes=args.max_file_bytes,
        explain_dir=explain_dir,
    )
    try:
        summary = run(opts)
    except OutputError as exc:  # found before anything is sent (e.g. a pair of files --resume cannot continue)
        print(f"imgcls: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the run started
        print("imgcls: interrupted", file=sys.stderr)
        return 130
    print(summary.line(), file=sys.stderr)
    if summary.signal is not None:
        where = f" --resume -o {opts.output}" if opts.output else ""
        print(f"imgcls: interrupted; rerun with{where or ' --output FILE --resume'} to continue", file=sys.stderr)
    if summary.fatal:
        print(f"imgcls: stopped: {summary.fatal}", file=sys.stderr)
    return summary.exit_code()


if __name__ == "__main__":
    sys.exit(main())
