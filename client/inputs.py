"""Which files to send: a lazy walk of the command line's paths (the set already done is output.py's).

Nothing here reads an image: the walk yields absolute paths one at a time (os.scandir underneath), so a
folder of 100 000 files is never listed into memory at once beyond one directory's entries.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def _entries(directory: str) -> tuple[list[str], list[str]]:
    """(subdirectories, files) of one directory, each sorted by name; unreadable directories are empty."""
    dirs, files = [], []
    try:
        with os.scandir(directory) as scan:
            for entry in scan:
                if is_hidden(entry.name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append(entry.name)
                    elif entry.is_file():
                        files.append(entry.name)
                except OSError:
                    continue
    except OSError:
        return [], []
    return sorted(dirs), sorted(files)


def _walk(directory: str, recursive: bool) -> Iterator[str]:
    """Files under `directory` in a stable order (files first, then subdirectories), depth first."""
    stack = [directory]
    while stack:
        current = stack.pop()
        dirs, files = _entries(current)
        for name in files:
            yield os.path.join(current, name)
        if recursive:
            stack.extend(os.path.join(current, name) for name in reversed(dirs))


def iter_inputs(paths: Iterable[str | Path], recursive: bool = False, glob: str | None = None) -> Iterator[str]:
    """Absolute paths of the files to send, lazily, each once.

    A file named on the command line is always taken; inside a directory only files whose name matches
    `glob` (all files by default; hidden files and directories are skipped) are taken, and subdirectories
    only with `recursive`. Symlinked directories are not followed (no cycles).
    """
    seen: set[str] = set()
    for given in paths:
        root = os.path.abspath(os.fspath(given))
        if os.path.isdir(root):
            walk = _walk(root, recursive)
            candidates: Iterator[str] = (p for p in walk if glob is None or fnmatch.fnmatch(os.path.basename(p), glob))
        else:
            candidates = iter([root])
        for path in candidates:
            if path not in seen:
                seen.add(path)
                yield path


def missing(paths: Iterable[str | Path]) -> list[str]:
    """The command-line paths that do not exist (reported before anything is sent)."""
    return [os.fspath(p) for p in paths if not os.path.exists(p)]
