"""Whether an archive holds classes of its own (built with `--labels` or by `modelserver train-head`), which
`make mar`, `make run` and `make images` must never replace with an ImageNet archive behind the user's back.

`modelserver build --if-missing` (what `make mar` and `make run` run unless WEIGHTS=, LABELS= or FORCE=1 is
given) keeps such an archive, and refuses, with one line that says how to rebuild it, to rebuild it as ImageNet
for another ENGINE. `make images` builds the archive inside the image from WEIGHTS; docker/images.sh asks
`python3 -m modelserver.trained_archive MAR` first (standard library only: the host needs no virtualenv), which
refuses the same way when model_store holds such an archive and the images would serve ImageNet's classes.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

from contract.labels import IMAGENET_LABELS_SOURCE


def own_classes(mar: Path) -> str | None:
    """'N classes from SOURCE' when the archive `mar` holds labels of its own; None for ImageNet's (an archive
    from before custom labels included), and for a missing or unreadable file."""
    try:
        with zipfile.ZipFile(mar) as archive:
            meta = json.loads(archive.read("metadata.json"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return None
    source = meta.get("labels_source") if isinstance(meta, dict) else None
    if source in (None, IMAGENET_LABELS_SOURCE):
        return None
    return f"{meta.get('classes', '?')} classes from {source}"


def refusal(mar: Path, own: str, instead: str, make: str) -> str:
    """The one line that refuses to replace `mar` (holding `own` classes) with `instead`, and says how to
    rebuild it with `make` (`mar`, `run` or `images`)."""
    return (
        f"{mar} holds your own classes ({own}), not rebuilt as {instead}: rebuild it from its weights "
        f"(make {make} WEIGHTS=PATH LABELS=FILE ...), or FORCE=1 to replace it with ImageNet's classes"
    )


def main(argv: list[str]) -> int:
    """`python3 -m modelserver.trained_archive MAR`: exit 2 with the refusal when MAR holds classes of its own
    (docker/images.sh, before building images of ImageNet's classes), else 0."""
    mar = Path(argv[0])
    if (own := own_classes(mar)) is None:
        return 0
    print(f"images: {refusal(mar, own, 'ImageNet images', 'images')}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
