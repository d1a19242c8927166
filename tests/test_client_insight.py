"""`imgcls embed` (vectors to .npy plus a paths file, resumable) and `imgcls classify --explain DIR`, run as
`python -m client.cli` against the session's real gateway + TorchServe (the test model that sees)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from imagegen import encode
from PIL import Image
from support import API_KEY, Gateway, imgcls, post
from testmodel import PHOTOS, photo, picture

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
    first = imgcls(gateway.url, API_KEY, str(folder), "--glob", "*.jpg", "-o", str(out), "--batch-size", "2",
                   command="embed", timeout=180)  # fmt: skip
    assert first.returncode == 1, first.stderr  # broken.jpg failed
    assert "3 ok, 1 failed" in first.stderr
    resumed = imgcls(gateway.url, API_KEY, str(folder), "-r", "-o", str(out), "--resume", "--batch-size", "4",
                     command="embed", timeout=180)  # fmt: skip
    assert "3 ok, 1 failed, 3 skipped" in resumed.stderr, resumed.stderr
    vectors = np.load(out)
    lines = out.with_suffix(".paths.txt").read_text().splitlines()
    assert vectors.shape == (len(NAMES), 2048) and vectors.dtype == np.float32
    assert sorted(lines) == sorted(str(p) for p in folder.rglob("*.jpg") if p.name != "broken.jpg")
    for row, path in zip(vectors, lines, strict=True):
        assert np.allclose(row, served_embedding(gateway, Path(path).read_bytes()), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embed_needs_an_npy_output(gateway: Gateway, folder: Path) -> None:
    done = imgcls(gateway.url, API_KEY, str(folder), "-o", "vectors.csv", command="embed", timeout=180)
    assert done.returncode == 2 and ".npy" in done.stderr


def test_classify_explain_writes_the_overlays(gateway: Gateway, folder: Path, tmp_path: Path) -> None:
    overlays = tmp_path / "why"
    wide = tmp_path / "wide.jpg"
    wide.write_bytes(encode(picture("chelsea").resize((1800, 1200)), "JPEG", quality=90))
    out = tmp_path / "results.jsonl"
    cat = next(folder.rglob("chelsea.jpg"))
    done = imgcls(gateway.url, API_KEY, str(cat), str(wide), str(folder / "broken.jpg"),
                  "--explain", str(overlays), "-o", str(out), timeout=180)  # fmt: skip
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
    done = imgcls(gateway.url, API_KEY, str(tmp_path / "in"), "-r", "--explain", str(overlays), "-o", str(out),
                  timeout=180)  # fmt: skip
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
