"""At worker start: choose the engine to serve on this CPU, check it against fp32, fall back when it fails.

handlers/engine_choice.py gives the candidates in order; each but the fp32 reference (the last) is loaded and
gated on the archive's held-apart images (handlers/gate.py) on this worker's CPU. The first that loads and
passes is served; one that fails is never served, and the worker says so in its log, in its description
(/v1/models) and in the counter REFUSED_METRIC. Each worker decides alone. With untrained (random) weights
the gate is waived and marked so: fp32's answers are noise, there is nothing to agree with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handlers.cpu_features import present
from handlers.engine_choice import FALLBACK, PRECISION, plan, policy
from handlers.engines import FC_WEIGHT_FILE, INT8_ONNX_FILE, Engine, Floats, load_engine, softmax
from handlers.gate import GATE_FILE, MIN_MAP_CORRELATION, GateSet, Verdict, judge
from handlers.imaging import decode, preprocess
from handlers.maps import class_maps

logger = logging.getLogger(__name__)

REFUSED_METRIC = "handler_engine_refused_total"  # engines this worker refused at start (it serves another)
BATCH = 8
NOT_GATED = "not gated: fp32, the reference the build verified against PyTorch"
UNTRAINED_WAIVER = "waived: untrained (random) weights, fp32's answers are noise and nothing can agree with them"


@dataclass
class Started:
    """The engine a worker serves, and the record of how it was chosen (its description shows it)."""

    engine: Engine
    precision: str
    policy: str
    cpu_features: list[str]
    maps_withheld: str | None = None  # why this engine's class activation maps are not served, if so
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        return len(self.record.get("refused", {}))


def gate_outputs(engine: Engine, images: Floats, fc_weight: Floats | None, reference_top1: list[int]) -> list[Floats]:
    """The engine's probabilities, pooled vectors and (with fc_weight) fp32's top-1 class maps for the images."""
    names = ["logits", "pooled"] + (["features"] if fc_weight is not None else [])
    runs = [engine.run_outputs(images[i : i + BATCH], names) for i in range(0, len(images), BATCH)]
    logits, pooled, *features = (np.concatenate(parts) for parts in zip(*runs, strict=True))
    if fc_weight is None:
        return [softmax(logits), pooled]
    maps = [class_maps(f, fc_weight, [c])[0] for f, c in zip(features[0], reference_top1, strict=True)]
    return [softmax(logits), pooled, np.stack(maps)]


def check(name: str, engine: Engine, gate_set: GateSet, max_pixels: int, fc_weight: Floats | None) -> Verdict:
    """`engine`'s verdict on the gate set, decoded and preprocessed as requests are."""
    images = np.stack([preprocess(decode(data, max_pixels)) for data in gate_set.images])
    precision = PRECISION[name]
    weight = fc_weight if precision == "bf16" else None  # only bf16 may serve maps; INT8 never does
    outputs = gate_outputs(engine, images, weight, [int(c) for c in gate_set.logits.argmax(axis=1)])
    return judge(name, precision, gate_set, outputs[0], outputs[1], outputs[2] if weight is not None else None)


def start(
    model_dir: Path,
    settings: Mapping[str, Any],
    untrained: bool,
    threads: int,
    environ: Mapping[str, str],
    flags: frozenset[str],
) -> Started:
    """Load the first candidate that passes its gate on this CPU; fp32 when none does."""
    chosen_policy = policy(str(settings["precision"]), environ)
    wanted = str(settings["engine"])
    the_plan = plan(wanted, chosen_policy, flags, (model_dir / INT8_ONNX_FILE).exists())
    gate_path = model_dir / GATE_FILE
    gate_set = GateSet.load(gate_path) if gate_path.exists() and not untrained else None
    fc_weight = np.load(model_dir / FC_WEIGHT_FILE) if (model_dir / FC_WEIGHT_FILE).exists() else None
    record: dict[str, Any] = {"asked": wanted, "skipped": the_plan.skipped, "refused": {}, "verdict": None}
    features = present(flags)
    spinning, pinning = bool(settings["spinning"]), bool(settings["pinning"])
    for name in the_plan.candidates:
        if name == FALLBACK:
            break
        try:
            engine = load_engine(name, model_dir, threads, spinning, pinning)
        except Exception as exc:  # noqa: BLE001  # a library that cannot load it here: the next candidate
            record["refused"][name] = f"could not be loaded: {exc}"
            continue
        if untrained:
            record["verdict"] = UNTRAINED_WAIVER
            return Started(engine, PRECISION[name], chosen_policy, features, record=record)
        if gate_set is None:
            record["refused"][name] = (
                f"the archive has no {GATE_FILE} to check it with (built before the gate): rebuild"
            )
            continue
        verdict = check(name, engine, gate_set, int(settings["max_pixels"]), fc_weight)
        logger.info("engine gate on this CPU: %s", verdict.summary())
        if not verdict.passed:
            record["refused"][name] = verdict.as_dict()
            continue
        record["verdict"] = verdict.as_dict()
        withheld = None
        if verdict.map_correlation is not None and verdict.map_correlation < MIN_MAP_CORRELATION:
            withheld = (
                f"on this CPU {name}'s class activation maps correlate with fp32's at {verdict.map_correlation} "
                f"(< {MIN_MAP_CORRELATION}); serve the fp32 engine (onnx) for explanations"
            )
        return Started(engine, PRECISION[name], chosen_policy, features, withheld, record)
    engine = load_engine(FALLBACK, model_dir, threads, spinning, pinning)
    record["verdict"] = NOT_GATED
    return Started(engine, PRECISION[FALLBACK], chosen_policy, features, record=record)


def log_start(started: Started) -> None:
    """A warning per refused engine (asked for, not served) and a line naming what is served and why."""
    for name, why in started.record["refused"].items():
        detail = why if isinstance(why, str) else "; ".join(why["failures"])
        logger.warning("engine %s REFUSED on this CPU (%s): not served", name, detail)
    logger.log(
        logging.WARNING if started.refused else logging.INFO,
        "serving engine %s (asked: %s%s), precision %s, policy %s, CPU features: %s",
        started.engine.name,
        started.record["asked"],
        ", FELL BACK to fp32" if started.refused and started.engine.name == FALLBACK else "",
        started.precision,
        started.policy,
        ", ".join(started.cpu_features) or "none",
    )


def count_refusals(context: Any, refused: int, model_name: str) -> None:
    """Add this worker's refusals to REFUSED_METRIC (TorchServe's custom metrics; absent outside a worker)."""
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    from ts.metrics.metric_type_enum import MetricTypes  # only a TorchServe worker gives metrics

    from handlers.timing import DIMENSIONS

    counter = metrics.add_metric_to_cache(REFUSED_METRIC, "count", DIMENSIONS, MetricTypes.COUNTER)
    counter.add_or_update(refused, [model_name, "Model"])
