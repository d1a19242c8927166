"""Command line: `python -m modelserver build|serve|ready`."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from modelserver.torchserve import REPO_ROOT, Ports, TorchServe, TorchServeError, ready_workers

DEFAULT_MAR = REPO_ROOT / "model_store" / "resnet50.mar"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_build(args: argparse.Namespace) -> int:
    # torch is imported here, not at module level: `ready` runs in health checks and must stay light.
    from modelserver.archive import ArchiveError, ServingConfig, build
    from modelserver.onnx_export import VerificationError
    from modelserver.weights import DownloadError, WeightsError, from_seed, resolve

    if args.if_missing and args.output.exists():
        print(f"{args.output} exists; not rebuilding")
        return 0
    try:
        weights = resolve(args.weights, args.sha256, args.cache_dir)
    except DownloadError as exc:
        if not args.offline_fallback:
            return _fail(str(exc))
        print(f"error: {exc}", file=sys.stderr)
        print("*** FALLING BACK TO RANDOM WEIGHTS: the model is UNTRAINED and its answers are meaningless ***")
        weights = from_seed()
    except WeightsError as exc:
        return _fail(str(exc))
    if weights.untrained:
        print(f"WARNING: building with UNTRAINED {weights.name} weights: predictions will be meaningless")
    config = ServingConfig(
        engine=args.engine,
        workers=args.workers,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
    )
    try:
        out = build(weights, config, args.output)
    except VerificationError as exc:
        return _fail(f"refusing to package: {exc}")
    except ArchiveError as exc:
        return _fail(str(exc))
    print(f"built {out} ({out.stat().st_size / 2**20:.1f} MiB, weights {weights.name}, engine {args.engine})")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_serve(args: argparse.Namespace) -> int:
    server = TorchServe(args.workdir, args.model_store, Ports())
    signal.signal(signal.SIGTERM, _interrupt)
    server.start()
    try:
        waited = server.wait_ready(args.timeout)
        print(f"TorchServe ready in {waited:.1f}s: inference {server.inference_url}, keys in {server.key_file}")
        assert server.process is not None
        return server.process.wait()
    except TorchServeError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


def cmd_ready(args: argparse.Namespace) -> int:
    count = ready_workers(args.management_url, args.key_file)
    print(f"{count} READY worker(s)")
    return 0 if count else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m modelserver", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build model_store/resnet50.mar")
    build.add_argument("--weights", default="imagenet", help="imagenet (download, default), random, or a PATH")
    build.add_argument("--sha256", help="expected sha256 of the --weights PATH file")
    build.add_argument("--engine", default="onnx", choices=["onnx", "eager"])
    build.add_argument("--workers", type=int, default=1)
    build.add_argument("--batch-size", type=int, default=8)
    build.add_argument("--max-batch-delay", type=int, default=5, help="milliseconds")
    build.add_argument("--output", type=Path, default=DEFAULT_MAR)
    build.add_argument("--cache-dir", type=Path, default=None, help="download cache (default: torch hub's)")
    build.add_argument("--if-missing", action="store_true", help="do nothing when the output exists")
    build.add_argument(
        "--offline-fallback", action="store_true", help="use random weights when the download fails (make run)"
    )
    build.set_defaults(func=cmd_build)

    serve = sub.add_parser("serve", help="run TorchServe in the foreground with the default ports")
    serve.add_argument("--model-store", type=Path, default=DEFAULT_MAR.parent)
    serve.add_argument("--workdir", type=Path, default=REPO_ROOT / ".run" / "torchserve")
    serve.add_argument("--timeout", type=float, default=180.0)
    serve.set_defaults(func=cmd_serve)

    ready = sub.add_parser("ready", help="exit 0 when the model has a READY worker (health check)")
    ready.add_argument("--management-url", default=f"http://127.0.0.1:{Ports().management}")
    ready.add_argument("--key-file", type=Path, default=Path("key_file.json"))
    ready.set_defaults(func=cmd_ready)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
