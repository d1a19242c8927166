"""`imgcls embed` (vectors to .npy plus a paths file, resumable) and `imgcls classify --explain DIR`, run as
`python -m client.cli` against the session's real gateway + TorchServe (the test model that sees)."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from imagegen import encode
from PIL import Image
from support import API_KEY, Gateway, imgcls, post
from testmodel import PHOTOS, photo, picture

from client.output import OutputError, VectorsSoFar, VectorWriter, vectors_so_far

NAMES = list(PHOTOS)[:6]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    for n, name in enumerate(NAMES):
        (root / ("sub" if n % 2 else "") / f"{name}.jpg").write_bytes(photo(name))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return root


def served_embedding(gateway: Gateway, data: bytes) -> np.ndarray:
    response = post(gateway, API_KEY, "/v1/embed", content=data, headers={"Content-Type": "image/jpeg"})
    return np.asarray(response.json()["embedding"], dtype=np.float32)


def test_embed_writes_vectors_and_paths_and_resumes(gateway: Gateway, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "vectors.npy"

    def embed(*args: str) -> subprocess.CompletedProcess[str]:
        return imgcls(gateway.url, API_KEY, str(folder), *args, command="embed", timeout=180)

    first = embed("--glob", "*.jpg", "-o", str(out), "--batch-size", "2")
    assert first.returncode == 1, first.stderr  # broken.jpg failed
    assert "3 ok, 1 failed" in first.stderr
    resumed = embed("-r", "-o", str(out), "--resume", "--batch-size", "4")
    assert "3 ok, 1 failed, 3 skipped" in resumed.stderr, resumed.stderr
    vectors = np.load(out)
    lines = row_paths(out)
    assert vectors.shape == (len(NAMES), 2048) and vectors.dtype == np.float32
    assert sorted(lines) == sorted(str(p) for p in folder.rglob("*.jpg") if p.name != "broken.jpg")
    for row, path in zip(vectors, lines, strict=True):
        assert np.allclose(row, served_embedding(gateway, Path(path).read_bytes()), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def row_paths(vectors: Path) -> list[str]:
    """The paths file read as docs/client.md says: one JSON string per line."""
    return [json.loads(line) for line in vectors.with_suffix(".paths.txt").read_text().splitlines()]


def assert_rows_are_their_files(gateway: Gateway, vectors: Path, files: list[Path]) -> None:
    rows = np.load(vectors)
    assert len(rows) == len(files), f"{len(rows)} rows for {len(files)} files"
    paths = row_paths(vectors)
    assert len(paths) == len(files) and sorted(paths) == sorted(map(str, files))
    for row, path in zip(rows, paths, strict=True):
        assert np.allclose(row, served_embedding(gateway, Path(path).read_bytes()), atol=1e-6), path


# Every character str.splitlines() breaks a line at, besides "\r\n".
LINE_BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One photo per line break, named `line<break>break.jpg`, half of them in sub/, and one plain name."""
    root = tmp_path_factory.mktemp("odd names")
    (root / "sub").mkdir()
    for n, brk in enumerate([*LINE_BREAKS, "\r\n"]):
        (root / ("sub" if n % 2 else "") / f"{n:02d} line{brk}break.jpg").write_bytes(photo(NAMES[n % len(NAMES)]))
    (root / "plain.jpg").write_bytes(photo("coffee"))
    return root


def test_embed_resume_keeps_rows_and_paths_in_step_for_any_name(
    gateway: Gateway, odd_names: Path, tmp_path: Path
) -> None:
    """A name with a line break is one line of the paths file: a resumed run skips it, sends no file twice and
    ends with one row per file, each its own file's vector (imgcls 0.1: 5 rows for 3 files, one photo twice)."""
    out = tmp_path / "vectors.npy"
    top = sorted(p for p in odd_names.iterdir() if p.is_file())
    first = imgcls(gateway.url, API_KEY, str(odd_names), "-o", str(out), "-b", "4", command="embed", timeout=180)
    assert first.returncode == 0 and f"{len(top)} ok, 0 failed" in first.stderr, first.stderr
    every = sorted(p for p in odd_names.rglob("*") if p.is_file())
    again = [str(odd_names), "-r", "-o", str(out), "--resume", "-b", "4"]
    resumed = imgcls(gateway.url, API_KEY, *again, command="embed", timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(every) - len(top)} ok, 0 failed, {len(top)} skipped" in resumed.stderr, resumed.stderr
    assert_rows_are_their_files(gateway, out, every)
    assert out.with_suffix(".paths.txt").read_bytes().isascii()  # any reader splits it right


def test_embed_resume_after_a_kill_between_a_row_and_its_path(gateway: Gateway, folder: Path, tmp_path: Path) -> None:
    """Killed after a row but before its whole path line: the row and the half line are cut, the file sent again."""
    out = tmp_path / "vectors.npy"
    files = sorted(p for p in folder.glob("*.jpg") if p.name != "broken.jpg")
    assert imgcls(gateway.url, API_KEY, *map(str, files), "-o", str(out), command="embed").returncode == 0
    paths_file = out.with_suffix(".paths.txt")
    lines = paths_file.read_bytes().split(b"\n")[:-1]
    paths_file.write_bytes(b"\n".join(lines[:-1]) + b"\n" + lines[-1][:5])
    resumed = imgcls(gateway.url, API_KEY, *map(str, files), "-o", str(out), "--resume", command="embed")
    assert resumed.returncode == 0 and "1 ok, 0 failed, 2 skipped" in resumed.stderr, resumed.stderr
    assert_rows_are_their_files(gateway, out, files)


@pytest.mark.parametrize("kept", [".npy", ".paths.txt"])
def test_embed_resume_refuses_half_a_pair(gateway: Gateway, folder: Path, tmp_path: Path, kept: str) -> None:
    """Only one of the two files: nothing can tell which row is which, so --resume refuses and changes nothing
    (imgcls 0.1 truncated the one that was there)."""
    out = tmp_path / "vectors.npy"
    files = sorted(str(p) for p in folder.glob("*.jpg") if p.name != "broken.jpg")[:2]
    assert imgcls(gateway.url, API_KEY, *files, "-o", str(out), command="embed").returncode == 0
    left, gone = (out, out.with_suffix(".paths.txt")) if kept == ".npy" else (out.with_suffix(".paths.txt"), out)
    gone.unlink()
    before = left.read_bytes()
    resumed = imgcls(gateway.url, API_KEY, *files, "-o", str(out), "--resume", command="embed")
    assert resumed.returncode == 2, resumed.stderr
    assert f"{left} exists but {gone} does not" in resumed.stderr and "nothing resumed" in resumed.stderr
    assert left.read_bytes() == before and not gone.exists()


def test_embed_resume_refuses_the_old_paths_format(gateway: Gateway, folder: Path, tmp_path: Path) -> None:
    """A paths file of imgcls 0.1 (raw paths, one per line) is refused with a clear message, left unchanged."""
    out = tmp_path / "vectors.npy"
    files = sorted(str(p) for p in folder.glob("*.jpg") if p.name != "broken.jpg")[:2]
    assert imgcls(gateway.url, API_KEY, *files, "-o", str(out), command="embed").returncode == 0
    paths_file = out.with_suffix(".paths.txt")
    paths_file.write_text("".join(f"{path}\n" for path in row_paths(out)))  # what 0.1 wrote
    before = out.read_bytes(), paths_file.read_bytes()
    resumed = imgcls(gateway.url, API_KEY, *files, "-o", str(out), "--resume", command="embed")
    assert resumed.returncode == 2, resumed.stderr
    assert "holds raw paths, one per line" in resumed.stderr and "run without --resume" in resumed.stderr
    assert (out.read_bytes(), paths_file.read_bytes()) == before


@pytest.mark.parametrize("damage", ["rows", "foreign", "not a string"])
def test_a_pair_that_does_not_belong_together_is_refused(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "vectors.npy"
    writer = VectorWriter(out)
    for n in range(3):
        vector = np.full(4, n, dtype="<f4")
        writer.write({"path": f"/p/{n}.jpg", "status": "ok", "embedding": base64.b64encode(vector.tobytes())})
    writer.close()
    paths_file = out.with_suffix(".paths.txt")
    assert vectors_so_far(out) == VectorsSoFar(["/p/0.jpg", "/p/1.jpg", "/p/2.jpg"], 4, paths_file.stat().st_size)
    if damage == "rows":
        paths_file.write_text('"/p/0.jpg"\n')
    elif damage == "foreign":
        np.save(out, np.zeros((3, 4)))
    else:
        paths_file.write_text(paths_file.read_text() + '{"path": "/p/3.jpg"}\n')
    before = out.read_bytes(), paths_file.read_bytes()
    expected = {"rows": "has 3 rows but", "foreign": "is not a", "not a string": "line 4: not a JSON string"}
    with pytest.raises(OutputError, match=expected[damage]):
        vectors_so_far(out)
    assert (out.read_bytes(), paths_file.read_bytes()) == before


def test_embed_needs_an_npy_output(gateway: Gateway, folder: Path) -> None:
    done = imgcls(gateway.url, API_KEY, str(folder), "-o", "vectors.csv", command="embed", timeout=180)
    assert done.returncode == 2 and ".npy" in done.stderr


def test_classify_explain_writes_the_overlays(gateway: Gateway, folder: Path, tmp_path: Path) -> None:
    overlays = tmp_path / "why"
    wide = tmp_path / "wide.jpg"
    wide.write_bytes(encode(picture("chelsea").resize((1800, 1200)), "JPEG", quality=90))
    out = tmp_path / "results.jsonl"
    cat = next(folder.rglob("chelsea.jpg"))
    inputs = [str(cat), str(wide), str(folder / "broken.jpg")]
    done = imgcls(gateway.url, API_KEY, *inputs, "--explain", str(overlays), "-o", str(out), timeout=180)
    assert done.returncode == 1, done.stderr
    records = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    for path, size in ((cat, picture("chelsea").size), (wide, (1024, 683))):
        record = records[str(path)]
        written = Path(record["explanation"])
        assert written == overlays / (str(path).lstrip("/") + ".png")
        assert Image.open(io.BytesIO(written.read_bytes())).size == size
        assert record["predictions"][0]["label"] == "tabby"
    assert "explanation" not in records[str(folder / "broken.jpg")]
    assert len([p for p in overlays.rglob("*") if p.is_file()]) == 2


def test_classify_explain_to_csv_keeps_every_overlay(gateway: Gateway, tmp_path: Path) -> None:
    """`a/b.jpg` and `a__b.jpg` each keep their own overlay, and the CSV says where each went."""
    (tmp_path / "in" / "a").mkdir(parents=True)
    nested, flat = tmp_path / "in" / "a" / "b.jpg", tmp_path / "in" / "a__b.jpg"
    nested.write_bytes(photo("chelsea"))
    flat.write_bytes(photo("coffee"))
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    overlays, out = tmp_path / "why", tmp_path / "results.csv"
    done = imgcls(
        gateway.url, API_KEY, str(tmp_path / "in"), "-r", "--explain", str(overlays), "-o", str(out), timeout=180
    )
    assert done.returncode == 1, done.stderr  # broken.jpg failed
    with out.open(newline="") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    written = {path: Path(rows[str(path)]["explanation"]) for path in (nested, flat)}
    assert written[nested] != written[flat]
    for path, overlay in written.items():
        assert rows[str(path)]["status"] == "ok" and not rows[str(path)]["explanation_error"]
        assert Image.open(io.BytesIO(overlay.read_bytes())).size == Image.open(path).size
    assert written[nested].read_bytes() != written[flat].read_bytes()
    assert rows[str(broken)]["status"] == "failed" and not rows[str(broken)]["explanation"]
    assert len([p for p in overlays.rglob("*") if p.is_file()]) == 2
