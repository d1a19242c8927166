"""Result writers (JSON Lines or CSV, chosen by the output file's suffix; embeddings as .npy plus a paths
file) and the resume set.

Each record is written as one whole line and flushed at once, so an interrupted run leaves a valid file
holding every result that had arrived. `--resume` reads the paths back from that file (for embeddings,
after checking that the pair can be continued).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

import numpy as np

from client.records import Error, Record, slug

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
CSV_FIELDS = ["path", "status", "top1_label", "top1_score", "error", "request_id", "explanation", "explanation_error"]


class OutputError(Exception):
    """A problem with the output file that stops the run before anything is sent."""


def format_of(path: str | Path | None) -> str:
    if path is None:
        return "jsonl"
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputError(f"cannot tell the format of {path}: use a .jsonl or .csv suffix")
    return fmt


def error_text(error: Error) -> str:
    """An error record as one CSV cell: '422 invalid-image: the file is empty'."""
    status = error["status"]
    return f"{status if status is not None else '-'} {slug(error)}: {error['detail'] or ''}"


def csv_row(record: Record) -> dict[str, str | float]:
    predictions = record.get("predictions")
    top = predictions[0] if predictions else None
    return {
        "path": record["path"],
        "status": record["status"],
        "top1_label": top["label"] if top else "",
        "top1_score": top["score"] if top else "",
        "error": error_text(record["error"]) if "error" in record else "",
        "request_id": record.get("request_id") or "",
        "explanation": record.get("explanation", ""),  # --explain: the overlay's path, or why there is none
        "explanation_error": error_text(record["explanation_error"]) if "explanation_error" in record else "",
    }


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that has no newline (a run killed mid-write) so appending starts on a fresh line."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # scan back for the last newline, 64 KiB at a time
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)


def done_paths(path: str | Path) -> set[str]:
    """Absolute paths already recorded in an output file (ok or failed); empty if there is no file yet.

    A half-written last line is removed first; lines that do not parse are ignored.
    """
    path = Path(path)
    if not path.exists():
        return set()
    _drop_partial_line(path)
    done: set[str] = set()
    with path.open(encoding="utf-8", newline="") as f:
        if format_of(path) == "csv":
            for row in csv.DictReader(f):
                if row.get("path"):
                    done.add(row["path"])
        else:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("path"), str):
                    done.add(record["path"])
    return done


class RecordWriter:
    """Writes records to a file (appending with `resume`) or to stdout; one flush per record."""

    def __init__(self, path: str | Path | None, resume: bool = False) -> None:
        self.format = format_of(path)
        self.path = Path(path) if path is not None else None
        if self.path is None:
            self._file: TextIO = sys.stdout
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a" if resume else "w", encoding="utf-8", newline="")
        self._csv = None
        if self.format == "csv":
            self._csv = csv.DictWriter(self._file, CSV_FIELDS, lineterminator="\n")
            if self.path is None or self._file.tell() == 0:
                self._csv.writeheader()
                self._file.flush()

    def write(self, record: Record) -> None:
        if self._csv is not None:
            buf = io.StringIO()
            csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n").writerow(csv_row(record))
            line = buf.getvalue()
        else:
            line = json.dumps(record, ensure_ascii=False) + "\n"
        self._file.write(line)  # one write per record: never half a line in the buffer at a flush
        self._file.flush()

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()


@dataclass(frozen=True)
class VectorsSoFar:
    """What an earlier run left: row i's path, the vector size, and how much of the pair is whole."""

    paths: list[str]
    dims: int
    paths_bytes: int  # the paths file up to its last whole line


def vectors_so_far(path: str | Path) -> VectorsSoFar | None:
    """The `.npy` / `.paths.txt` pair an earlier run left, checked for `--resume` without changing either; None
    when neither exists. OutputError (both files left as they are) when the pair cannot be continued safely:
    one file without the other, an old-format or foreign paths file, or counts that disagree by more than
    the one row a run interrupted between its two writes leaves without a path line."""
    vectors, paths_file = Path(path), paths_file_of(Path(path))
    if not vectors.exists() and not paths_file.exists():
        return None
    for present, absent in ((vectors, paths_file), (paths_file, vectors)):
        if not absent.exists():
            raise OutputError(
                f"{present} exists but {absent} does not, so which file each row is cannot be told: nothing "
                "resumed or changed; move it away, or run without --resume to start over"
            )
    data = paths_file.read_bytes()
    whole = data.rfind(b"\n") + 1  # after a run killed mid-line, the last line is cut when writing resumes
    paths = [_path_line(line, paths_file, n) for n, line in enumerate(data[:whole].split(b"\n")[:-1], 1)]
    rows, dims = _npy_shape(vectors)
    if rows not in (len(paths), len(paths) + 1):
        raise OutputError(
            f"{vectors} has {rows} rows but {paths_file} names {len(paths)} files: they do not belong together; "
            "nothing resumed or changed"
        )
    return VectorsSoFar(paths, dims, whole)


def _path_line(line: bytes, paths_file: Path, n: int) -> str:
    try:
        path = json.loads(line)
    except ValueError:
        path = None
    if isinstance(path, str):
        return path
    if line.startswith(b"/"):
        raise OutputError(
            f"{paths_file} holds raw paths, one per line (written by imgcls before 0.2), which names with line "
            "breaks make ambiguous, so it cannot be resumed safely: nothing resumed or changed; run without "
            "--resume to start over, or use another --output"
        )
    raise OutputError(f"{paths_file}, line {n}: not a JSON string; nothing resumed or changed")


def _npy_shape(vectors: Path) -> tuple[int, int]:
    """(rows, dims) from the header of a .npy VectorWriter wrote; OutputError for any other file."""
    try:
        with vectors.open("rb") as f:
            if np.lib.format.read_magic(f) != (1, 0):
                raise ValueError("not .npy version 1.0")
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            header_end, size = f.tell(), f.seek(0, os.SEEK_END)
    except (OSError, ValueError) as exc:
        raise OutputError(f"{vectors} is not a vectors file imgcls wrote ({exc}); nothing resumed or changed") from None
    ours = header_end == VectorWriter.HEADER_BYTES and dtype == np.dtype("<f4") and not fortran_order
    if not ours or len(shape) != 2 or size < header_end + shape[0] * shape[1] * 4:
        raise OutputError(f"{vectors} is not a whole vectors file imgcls wrote; nothing resumed or changed")
    return shape[0], shape[1]


class VectorWriter:
    """Embeddings as `NAME.npy` (float32, one row per file) plus `NAME.paths.txt` (row i's path on line i, as a
    JSON string: ASCII, so no name can break a line, whatever reads it).

    Each vector is appended and the .npy header's row count rewritten, then its path line; both flushed at
    once, so an interrupted run leaves a valid pair. Resuming from `so_far` (vectors_so_far) keeps the rows
    whose path was written (a row written without its path, and a half-written line, are cut) and appends.
    Failed files are not written: a resumed run sends them again.
    """

    HEADER_BYTES = 128  # the .npy header, reserved whole so that the row count can grow in place

    def __init__(self, path: str | Path, so_far: VectorsSoFar | None = None) -> None:
        self.path = Path(path)
        self.paths_file = paths_file_of(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if so_far is None:
            self.rows, self.dims = 0, 0
            self._file = self.path.open("w+b")
            self._paths: IO[bytes] = self.paths_file.open("wb")
        else:
            self.rows, self.dims = len(so_far.paths), so_far.dims
            self._file = self.path.open("r+b")
            self._file.truncate(self.HEADER_BYTES + self.rows * self.dims * 4)
            self._paths = self.paths_file.open("r+b")
            self._paths.truncate(so_far.paths_bytes)
            self._paths.seek(0, os.SEEK_END)
        self._write_header()

    def _write_header(self) -> None:
        described = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({self.rows}, {self.dims}), }}"
        header = described.ljust(self.HEADER_BYTES - 11) + "\n"
        self._file.seek(0)
        self._file.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        self._file.seek(0, os.SEEK_END)
        self._file.flush()

    def write(self, record: Record) -> None:
        if record["status"] != "ok":
            return
        vector = np.frombuffer(base64.b64decode(record["embedding"]), dtype="<f4")
        if self.dims and vector.size != self.dims:
            raise OutputError(f"{record['path']}: {vector.size} dimensions, the file has {self.dims}")
        self.dims = vector.size
        self._file.write(vector.tobytes())
        self.rows += 1
        self._write_header()
        self._paths.write(json.dumps(record["path"]).encode("ascii") + b"\n")
        self._paths.flush()

    def close(self) -> None:
        self._file.close()
        self._paths.close()


def paths_file_of(vectors: Path) -> Path:
    return vectors.with_suffix(".paths.txt")
