"""Which engines `make bench` serves side by side on this CPU, and why any other is left out.

Every engine of ENGINES is served where the CPU runs it as itself; the one it does not (bf16 without AVX-512 BF16
or AMX: OpenVINO would compute in f32 and call it bf16) is listed as skipped with the reason, the same reason a
worker gives (handlers/engine_choice.py). `--engines` narrows the line-up; `auto` serves what a worker's choice
gives on this CPU under the archive's precision policy, and the report names what it served. Pure logic on the
CPU's flags: tested for any CPU on any CPU (tests/unit/test_bench_report.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.inputs import ENGINES
from handlers.engine_choice import ALLOWED, PRECISION, plan


@dataclass(frozen=True)
class Lineup:
    served: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # engine → why it is not served here


def lineup(flags: frozenset[str], asked: list[str] | None = None) -> Lineup:
    """The engines of `asked` (all of ENGINES by default) this CPU serves, in ENGINES' order, and the others'
    reasons."""
    wanted = ENGINES if asked is None else tuple(e for e in ENGINES if e in asked)
    served, skipped = [], {}
    for engine in wanted:
        why = plan(engine, "int8", flags, has_int8_model=True).skipped.get(engine) if engine in PRECISION else None
        if why is None:
            served.append(engine)
        else:
            skipped[engine] = why
    return Lineup(served, skipped)


def near_fp32(engine: str) -> bool:
    """Whether the engine computes within bf16's gate of fp32 (the issue's "near-fp32" serving), fp32 excluded."""
    return engine in PRECISION and PRECISION[engine] in ALLOWED["near-fp32"] - ALLOWED["exact"]
