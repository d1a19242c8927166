"""Command line: `python -m modelserver build|evaluate|serve|run|ready`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import contract.labels
from contract.torchserve_tokens import KEY_FILE
from handlers.engine_choice import AUTO, POLICIES, POLICY_ENV
from handlers.engines import ENGINES
from modelserver.gateway_process import GatewayProcess, ServerProcessError, gateway_env
from modelserver.holdout import DEFAULT_HOLDOUT
from modelserver.paths import DEFAULT_MAR, REPO_ROOT
from modelserver.ports import Ports, port_in_use
from modelserver.process_groups import stop_on_sigterm
from modelserver.quantize import Thresholds
from modelserver.torchserve import TorchServe, TorchServeError, ready_workers
from modelserver.watchdog import Watchdog


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_build(args: argparse.Namespace) -> int:
    # torch is imported here, not at module level: `ready` runs in health checks and must stay light.
    from modelserver.archive import ArchiveError, Int8Options, ServingConfig, build
    from modelserver.calibration import CalibrationError
    from modelserver.mar import UnreadableArchive, archive_info
    from modelserver.onnx_export import VerificationError
    from modelserver.quantize import GateError
    from modelserver.trained_archive import own_classes, refusal
    from modelserver.weights import DownloadError, WeightsError, from_seed, resolve

    if args.if_missing and args.output.exists():
        try:
            built_engine = archive_info(args.output)[1]["engine"]
        except UnreadableArchive as exc:
            print(f"{exc}: rebuilding")
        else:
            if args.engine in (None, built_engine):
                print(f"{args.output} exists; not rebuilding (engine {built_engine})")
                return 0
            if (own := own_classes(args.output)) and args.labels is None:  # make mar/run ENGINE=...: never as
                # ImageNet behind the user's back
                return _fail(refusal(args.output, own, f"ImageNet's for engine {args.engine}", "mar"))
            print(f"{args.output} holds engine {built_engine}, not {args.engine}: rebuilding")
    args.engine = args.engine or ENGINES[0]
    try:
        labels = contract.labels.read(args.labels) if args.labels else None
        source = f"file:{args.labels.name}" if args.labels else None
        weights = resolve(args.weights, args.sha256, args.cache_dir, labels, source)
    except contract.labels.LabelError as exc:
        return _fail(str(exc))
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
    config = ServingConfig.for_engine(
        args.engine,
        workers=args.workers,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
        jpeg_draft=args.jpeg_draft,
        precision=args.precision,
    )
    thresholds = Thresholds(args.min_top1_agreement, args.min_top5_overlap, args.max_prob_diff)
    try:
        out = build(weights, config, args.output, Int8Options(args.calibration, thresholds))
    except (VerificationError, GateError) as exc:
        return _fail(f"refusing to package: {exc}")
    except (ArchiveError, CalibrationError) as exc:
        return _fail(str(exc))
    size, classes = out.stat().st_size / 2**20, f"{len(weights.labels)} classes from {weights.labels_source}"
    print(f"built {out} ({size:.1f} MiB, weights {weights.name}, {classes}, engine {args.engine})")
    return 0


def cmd_train_head(args: argparse.Namespace) -> int:
    from modelserver.archive import ArchiveError
    from modelserver.calibration import CalibrationError
    from modelserver.holdout import Holdout, HoldoutError
    from modelserver.onnx_export import VerificationError
    from modelserver.quantize import GateError
    from modelserver.train_head import Options, TrainHeadError, report_paths, train
    from modelserver.weights import WeightsError

    try:
        holdout = Holdout.parse(args.holdout)
        options = Options(
            args.folder,
            args.base,
            args.output,
            args.seed,
            holdout,
            args.augment,
            args.gate_images,
            args.force,
            progress=not args.no_progress,
        )
        result = train(options)
    except (TrainHeadError, HoldoutError, WeightsError, ArchiveError, CalibrationError) as exc:
        return _fail(str(exc))
    except VerificationError as exc:
        return _fail(f"refusing to package: {exc}")
    except GateError as exc:  # a head of few classes on generic photos: most of them lie near its boundaries
        return _fail(
            f"refusing to package: {exc}; with train-head: --gate-images own, or a base built with --engine onnx (fp32)"
        )
    print(result.text)
    files = ", ".join(str(path) for path in report_paths(result.output).values())
    timings = result.report["timings"]
    print(f"built {result.output} in {timings['total_s']:.0f} s; report: {files}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from modelserver.evaluate import EvaluationError, evaluate

    api_key = args.api_key or os.environ.get("API_KEY")
    try:
        result = evaluate(
            args.folder,
            args.mar,
            args.engine,
            args.gateway_url,
            api_key,
            progress=not args.no_progress,
            listing=args.list,
        )
    except EvaluationError as exc:
        return _fail(str(exc))
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)
    print(
        f"top-1 {result['top1']:.2%}, top-{result['top_k']} {result['top5']:.2%} on {result['images']} images of "
        f"{result['classes']} classes ({len(result['errors'])} unclassified)",
        file=sys.stderr,
    )
    return 0


def ports_from(args: argparse.Namespace) -> Ports:
    return Ports(**{f.name: getattr(args, f"{f.name}_port") for f in dataclasses.fields(Ports)})


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """What `serve` and `run` share: the model store, TorchServe's scratch directory, timeout and ports."""
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MAR.parent)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".run" / "torchserve")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    for f in dataclasses.fields(Ports):
        parser.add_argument(f"--{f.name.replace('_', '-')}-port", type=int, default=f.default, metavar="PORT")


class Supervised(Protocol):
    """A server `supervise` starts and stops: TorchServe or the gateway."""

    @property
    def pid(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def supervise(servers: Sequence[Supervised], serve: Callable[[], int]) -> int:
    """Start `servers` in order, each watched so that it dies with this process whatever kills it, then return
    what `serve` returns (it waits for readiness and blocks); Ctrl-C or SIGTERM ends it with 0, a server that
    fails to start with an error. Every server is stopped, the last started first."""
    stop_on_sigterm()
    with Watchdog() as watchdog:
        try:
            for server in servers:
                server.start()
                watchdog.watch(server.pid)
            return serve()
        except (TorchServeError, ServerProcessError) as exc:
            return _fail(str(exc))
        except KeyboardInterrupt:
            return 0
        finally:
            for server in reversed(servers):
                server.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    """TorchServe in the foreground; Ctrl-C or SIGTERM stops it, and it dies with this process whatever kills it."""
    server = TorchServe(args.workdir, args.model_store, ports_from(args))

    def serve() -> int:
        waited = server.wait_ready(args.timeout)
        print(
            f"TorchServe ready in {waited:.1f}s: inference {server.inference_url}, keys in {server.key_file}",
            flush=True,
        )
        return wait_for(server.process)

    return supervise([server], serve)


def cmd_run(args: argparse.Namespace) -> int:
    """TorchServe and the gateway together; Ctrl-C (or SIGTERM) stops both, and both die with this process
    whatever kills it."""
    from gateway.keys import key_hash

    api_key = os.environ.get("API_KEY") or "ica_" + secrets.token_urlsafe(24)
    port = int(os.environ.get("GATEWAY_PORT", "8000"))
    if port_in_use(port):
        return _fail(f"port {port} (gateway) already in use by another program; stop it, or set GATEWAY_PORT")
    server = TorchServe(args.workdir, args.model_store, ports_from(args))
    gateway = GatewayProcess(None, gateway_env(server, [key_hash(api_key)]), port, "/readyz", args.timeout)
    url = gateway.url

    def serve() -> int:  # the gateway has started up while TorchServe loaded the model
        server.wait_ready(args.timeout)
        gateway.wait_ready()
        print(f"\nimage-classification-api is ready at {url}  (docs: {url}/docs)")
        print(f"API key: {api_key}" + ("" if os.environ.get("API_KEY") else "  (generated; set API_KEY to choose)"))
        print(f"Try:     curl -H 'X-API-Key: {api_key}' -F file=@cat.jpg '{url}/v1/predict?top_k=3'")
        print("Ctrl-C stops both.", flush=True)
        return wait_for(gateway.process)

    return supervise([server, gateway], serve)


def wait_for(process: subprocess.Popen[bytes] | None) -> int:
    """The exit status of a started server's process."""
    assert process is not None, "started by supervise()"
    return process.wait()


def cmd_ready(args: argparse.Namespace) -> int:
    count = ready_workers(args.management_url, args.key_file)
    print(f"{count} READY worker(s)")
    return 0 if count else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m modelserver", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help=f"build {DEFAULT_MAR.relative_to(REPO_ROOT)}")
    build.add_argument("--weights", default="imagenet", help="imagenet (download, default), random, or a PATH")
    build.add_argument("--sha256", help="expected sha256 of the --weights PATH file")
    build.add_argument(
        "--labels",
        type=lambda value: Path(value) if value else None,  # empty: none (the serve image's build passes it so)
        metavar="FILE",
        help="the weights' class labels, by class id: one per line, or a JSON list (needed unless the weights have "
        "ImageNet's 1000 classes; rules in docs/model.md, 'Your own categories')",
    )
    build.add_argument(
        "--engine",
        choices=[*ENGINES, AUTO],
        help="onnx (fp32, the default), onnx-int8 (quantised, gated against fp32), openvino-fp32, openvino-bf16, "
        "openvino-int8, eager, or auto (the worker picks the fastest this CPU runs within --precision and gates it "
        "at start; docs/model.md); with --if-missing and no --engine, an existing archive of any engine is kept",
    )
    build.add_argument(
        "--precision",
        choices=POLICIES,
        help=f"the precision policy: exact (fp32), near-fp32 (bf16 too), int8 (INT8 too); default: the engine's own, "
        f"near-fp32 for auto. {POLICY_ENV} in the workers' environment overrides it",
    )
    int8 = build.add_argument_group("onnx-int8", "calibration and the accuracy gate (docs/model.md, 'INT8 engine')")
    int8.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="images to calibrate on, every 4th held apart for the gate (default: bundled photos)",
    )
    gate = Thresholds()
    int8.add_argument("--min-top1-agreement", type=float, default=gate.min_top1_agreement, metavar="F")
    int8.add_argument("--min-top5-overlap", type=float, default=gate.min_top5_overlap, metavar="F")
    int8.add_argument("--max-prob-diff", type=float, default=gate.max_prob_diff, metavar="F")
    build.add_argument("--workers", type=int, help="default per engine: onnx 1, onnx-int8 2 (docs/model.md)")
    build.add_argument("--batch-size", type=int, help="default per engine: onnx 8, onnx-int8 4")
    build.add_argument("--max-batch-delay", type=int, default=5, help="milliseconds")
    build.add_argument(
        "--jpeg-draft",
        type=int,
        default=1,
        choices=[1, 2, 4, 8],
        help="1 (default): decode every image in full, exactly as torchvision's reference; 2, 4 or 8: let the "
        "handler decode JPEGs at reduced scale, down to 1/N (faster for large photos, not exact; see docs/model.md)",
    )
    build.add_argument("--output", type=Path, default=DEFAULT_MAR)
    build.add_argument("--cache-dir", type=Path, default=None, help="download cache (default: torch hub's)")
    build.add_argument("--if-missing", action="store_true", help="do nothing when the output exists")
    build.add_argument(
        "--offline-fallback", action="store_true", help="use random weights when the download fails (make run)"
    )
    build.set_defaults(func=cmd_build)

    head = sub.add_parser(
        "train-head",
        help="fit a new final layer on DIR/<label>/<image> and build the archive that serves those labels",
        description="Keep the base archive's backbone, fit a new final layer (logistic regression, regularisation "
        "by cross-validation) on the pooled features of DIR's photos, report on a held-apart part of each class, and "
        "build an archive with the base's serving settings and DIR's class folders as labels (docs/model.md, "
        "'Your own categories').",
    )
    head.add_argument("folder", type=Path, help="DIR/<label>/<image>: one folder per class, named by its label")
    head.add_argument("--base", type=Path, default=DEFAULT_MAR, help="the archive whose backbone and settings are used")
    head.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_MAR,
        help="the archive to write (default: the one `make run` serves); the report's files go next to it",
    )
    head.add_argument("--force", action="store_true", help="replace --output when it exists (refused otherwise)")
    head.add_argument("--seed", type=int, default=0, help="the held-apart draw and the cross-validation folds")
    head.add_argument(
        "--holdout",
        default=DEFAULT_HOLDOUT,
        metavar="F|N",
        help="held apart for the report, per class: a fraction (default 0.2, at least one photo) or a count",
    )
    head.add_argument(
        "--augment",
        action="store_true",
        help="also fit on each training photo mirrored and cropped (4x the feature time; see docs/model.md for when "
        "it helped)",
    )
    head.add_argument(
        "--gate-images",
        choices=["bundled", "own"],
        default="bundled",
        help="the images an INT8/bf16/auto archive checks its engine on (INT8's calibration and build gate, and the "
        "gate at every worker start): the bundled generic set (default), or your photos (the held-apart ones for "
        "the worker-start gate), which then travel inside the archive and every image built from it",
    )
    head.add_argument("--no-progress", action="store_true", help="no progress bar")
    head.set_defaults(func=cmd_train_head)

    evaluate = sub.add_parser(
        "evaluate", help="top-1/top-5 accuracy on a labelled folder (ImageFolder layout) or list of images"
    )
    evaluate.add_argument("folder", type=Path, nargs="?", help="DIR/<label (or ImageNet's WordNet id)>/<image>")
    evaluate.add_argument(
        "--list",
        type=Path,
        metavar="FILE",
        help="instead of a folder: one `path<TAB>label` per line, paths relative to FILE's folder (or absolute)",
    )
    evaluate.add_argument("--mar", type=Path, default=DEFAULT_MAR, help="the archive to evaluate in process")
    source = evaluate.add_mutually_exclusive_group()  # the gateway's engine is the one it serves
    source.add_argument("--engine", choices=[*ENGINES, AUTO], help="override the archive's engine (in process)")
    source.add_argument("--gateway-url", help="evaluate the running service instead, e.g. http://127.0.0.1:8000")
    evaluate.add_argument("--api-key", help="the gateway's API key (default: API_KEY from the environment)")
    evaluate.add_argument("--output", type=Path, help="write the JSON report here instead of stdout")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_evaluate)

    serve = sub.add_parser("serve", help="run TorchServe in the foreground with the default ports")
    add_server_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser("run", help="TorchServe + gateway (API_KEY, GATEWAY_PORT from the environment)")
    add_server_arguments(run)
    run.set_defaults(func=cmd_run)

    ready = sub.add_parser("ready", help="exit 0 when the model has a READY worker (health check)")
    ready.add_argument("--management-url", default=f"http://127.0.0.1:{Ports().management}")
    ready.add_argument("--key-file", type=Path, default=Path(KEY_FILE))
    ready.set_defaults(func=cmd_ready)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
