"""The trade-off of reduced-scale JPEG decoding (the handler's `jpeg_draft`): deviation and speed per floor.

    python -m bench.draft --model-dir DIR PHOTO.jpg ...

For each floor (1 = full decode, the reference; 2, 4, 8 = reduced-scale decode down to 1/n) and every photo:
decode + preprocess time (the fastest of --repeats, one thread, in process), and with the model unpacked in DIR
(ONNX Runtime) the largest difference of any class probability from the full decode's (over all photos, and
for the median photo), and whether the top-1 class stays. Prints a markdown table. docs/model.md, "The handler",
quotes it for the test model's large photos (tests/testmodel.py, LARGE).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from handlers.engines import OnnxEngine, softmax
from handlers.gate import compare
from handlers.imaging import JPEG_DRAFT_CHOICES, decode, preprocess

LIMIT = 10**9


def decode_ms(images: list[bytes], repeats: int) -> dict[int, list[float]]:
    """Per floor, each photo's decode + preprocess milliseconds: the fastest of `repeats`, the floors
    interleaved so that other load on the machine hits them alike."""
    best = {floor: [float("inf")] * len(images) for floor in JPEG_DRAFT_CHOICES}
    for _ in range(repeats):
        for i, data in enumerate(images):
            for floor in JPEG_DRAFT_CHOICES:
                start = time.perf_counter()
                preprocess(decode(data, LIMIT, jpeg_draft=floor))
                best[floor][i] = min(best[floor][i], (time.perf_counter() - start) * 1000)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.draft", description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True, help="an unpacked archive (model.onnx)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("photos", type=Path, nargs="+", help="JPEG files")
    args = parser.parse_args(argv)
    engine = OnnxEngine(args.model_dir, threads=1)
    images = [path.read_bytes() for path in args.photos]
    largest = max(range(len(images)), key=lambda i: len(images[i]))
    times = decode_ms(images, args.repeats)
    probabilities = {
        floor: softmax(engine.run(np.stack([preprocess(decode(data, LIMIT, jpeg_draft=floor)) for data in images])))
        for floor in JPEG_DRAFT_CHOICES
    }
    full = probabilities[1]
    lines = [
        "| jpeg_draft | max prob diff (median photo) | top-1 agreement | decode+preprocess ms: median photo, "
        f"largest file ({args.photos[largest].name}) |",
        "|---|---|---|---|",
    ]
    for floor in JPEG_DRAFT_CHOICES:
        top1, _, worst = compare(full, probabilities[floor])  # as the INT8 gate measures it
        per_photo = np.abs(probabilities[floor] - full).max(axis=1)  # for the median photo
        agree = round(top1 * len(images))
        lines.append(
            f"| {floor} | {worst:.3f} ({np.median(per_photo):.3f}) | {agree}/{len(images)} | "
            f"{statistics.median(times[floor]):.1f}, {times[floor][largest]:.1f} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
