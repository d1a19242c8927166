"""The batch client `imgcls` (client/), run as `python -m client.cli` against the real gateway + TorchServe."""

from __future__ import annotations

import asyncio
import base64
import csv
import inspect
import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from imagegen import encode, jpeg, truncated_jpeg
from support import Gateway, client_env, free_port, gateway_env, imgcls, imgcls_cmd, jsonl, summary
from testmodel import PHOTOS, photo, picture

from client.records import Record
from client.sender import Sender
from client.tasks import Classify, Embed
from gateway.keys import key_hash
from gateway.problems import TYPE_BASE
from modelserver.paths import REPO_ROOT
from modelserver.torchserve import TorchServe

REPO = REPO_ROOT

GOOD = {  # 12 images in nested folders: path → the test model's photo, which it knows by its label
    "top1.jpg": "astronaut",
    "top2.png": "chelsea",
    "a/a1.jpg": "coffee",
    "a/a2.jpg": "rocket",
    "a/a3.png": "camera",
    "a/b/b1.jpg": "hubble_deep_field",
    "a/b/b2.png": "immunohistochemistry",
    "a/b/b3.jpg": "stereo_motorcycle",
    "c/c1.jpg": "coins",
    "c/c2.jpg": "clock",
    "c/c3.png": "shapes-1",
    "c/c4.jpg": "shapes-2",
}
BAD = {  # name → (content, HTTP status, problem slug)
    "empty.jpg": (lambda: b"", 422, "invalid-image"),
    "a/notes.txt": (lambda: b"these are notes, not an image\n", 415, "unsupported-media-type"),
    "a/b/cut.jpg": (truncated_jpeg, 422, "invalid-image"),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for name, known in GOOD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(picture(known), "PNG") if name.endswith(".png") else photo(known))
    for name, (make, _, _) in BAD.items():
        (root / name).write_bytes(make())
    (root / ".hidden.jpg").write_bytes(jpeg(32, 32))  # hidden files are not picked from folders
    return root


def paths(root: Path, names) -> set[str]:
    return {str(root / name) for name in names}


def assert_records(records: list[dict], root: Path, top_k: int) -> None:
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "a file appears twice"
    assert set(by_path) == paths(root, GOOD) | paths(root, BAD)
    for name in GOOD:
        record = by_path[str(root / name)]
        assert record["status"] == "ok" and "error" not in record, record
        assert len(record["predictions"]) == top_k
        assert all(isinstance(p["label"], str) and 0 <= p["score"] <= 1 for p in record["predictions"])
        assert record["predictions"][0]["label"] == PHOTOS[GOOD[name]], "each file gets its own answer"
        assert record["request_id"]
    for name, (_, status, slug) in BAD.items():
        record = by_path[str(root / name)]
        assert record["status"] == "failed" and "predictions" not in record, record
        assert record["error"]["type"] == TYPE_BASE + slug and record["error"]["status"] == status
        assert record["error"]["detail"]
        assert record["request_id"]


# --- selection (no server needed) -------------------------------------------------------------------


def test_walk_selects_by_glob_and_recursion_lazily(tree: Path) -> None:
    from client.inputs import iter_inputs

    assert set(iter_inputs([tree])) == paths(tree, ["top1.jpg", "top2.png", "empty.jpg"])
    assert set(iter_inputs([tree], recursive=True)) == paths(tree, GOOD) | paths(tree, BAD)
    assert set(iter_inputs([tree], glob="*.jpg")) == paths(tree, ["top1.jpg", "empty.jpg"])
    pngs = paths(tree, [n for n in GOOD if n.endswith(".png")])
    assert set(iter_inputs([tree], recursive=True, glob="*.png")) == pngs
    # a file named explicitly is taken whatever the glob; overlapping arguments give each file once
    both = list(iter_inputs([tree / "a/notes.txt", tree / "a", tree / "a/a1.jpg"], recursive=True, glob="*.jpg"))
    assert sorted(both) == sorted(
        paths(tree, ["a/notes.txt", "a/a1.jpg", "a/a2.jpg", "a/b/b1.jpg", "a/b/b3.jpg", "a/b/cut.jpg"])
    )

    # lazy: a file created after the walk started, in a folder it has not listed yet, is still found
    late = tree / "c" / "late.jpg"
    walk = iter_inputs([tree], recursive=True)
    assert inspect.isgenerator(walk)
    first = next(walk)
    try:
        late.write_bytes(b"x")
        assert str(late) in {first, *walk}
    finally:
        late.unlink()


def test_resume_set_ignores_a_half_written_last_line(tmp_path: Path) -> None:
    from client.output import done_paths

    out = tmp_path / "out.jsonl"
    out.write_text('{"path": "/x/1.jpg", "status": "ok"}\n{"path": "/x/2.jpg", "status": "failed"}\n{"path": "/x/3')
    assert done_paths(out) == {"/x/1.jpg", "/x/2.jpg"}
    assert out.read_text().endswith('"failed"}\n')  # the cut line is gone, appending starts on a fresh line


# --- against the session gateway -------------------------------------------------------------------


def test_folder_to_jsonl_with_bad_files(gateway: Gateway, api_key: str, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    done = imgcls(gateway.url, api_key, str(tree), "--recursive", "--top-k", "3", "-o", str(out), "--progress")
    assert done.returncode == 1, done.stderr  # three bad files
    assert summary(done.stderr) == {"ok": 12, "failed": 3, "skipped": 0, "retries": 0}
    assert re.search(r"15/15 \[.*img/s", done.stderr), done.stderr  # the progress bar had a total: ETA
    assert_records(jsonl(out), tree, top_k=3)
    assert done.stdout == ""


def test_glob_without_recursion(gateway: Gateway, api_key: str, tree: Path) -> None:
    done = imgcls(gateway.url, api_key, str(tree), "--glob", "*.jpg", "--top-k", "1")  # JSONL on stdout
    records = [json.loads(line) for line in done.stdout.splitlines()]
    expected = {str(tree / "top1.jpg"): "ok", str(tree / "empty.jpg"): "failed"}
    assert {r["path"]: r["status"] for r in records} == expected
    assert done.returncode == 1 and summary(done.stderr) == {"ok": 1, "failed": 1, "skipped": 0, "retries": 0}

    only_png = imgcls(gateway.url, api_key, str(tree), "-r", "--glob", "*.png")
    assert only_png.returncode == 0, only_png.stderr
    pngs = paths(tree, ["top2.png", "a/a3.png", "a/b/b2.png", "c/c3.png"])
    assert {json.loads(line)["path"] for line in only_png.stdout.splitlines()} == pngs


def test_csv_output(gateway: Gateway, api_key: str, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    done = imgcls(gateway.url, api_key, str(tree), "-r", "--batch-size", "4", "--concurrency", "2", "-o", str(out))
    assert done.returncode == 1, done.stderr
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        header = "path status top1_label top1_score error request_id explanation explanation_error"
        assert reader.fieldnames == header.split()
        rows = {row["path"]: row for row in reader}
    assert not any(row["explanation"] or row["explanation_error"] for row in rows.values())  # no --explain
    assert set(rows) == paths(tree, GOOD) | paths(tree, BAD)
    for name in GOOD:
        row = rows[str(tree / name)]
        assert row["status"] == "ok" and 0 <= float(row["top1_score"]) <= 1 and not row["error"]
        assert row["top1_label"] == PHOTOS[GOOD[name]]
    for name, (_, status, slug) in BAD.items():
        row = rows[str(tree / name)]
        assert row["status"] == "failed" and not row["top1_label"]
        assert row["error"].startswith(f"{status} {slug}: ")


def test_single_endpoint_records_4xx_problems_without_retrying(
    gateway: Gateway, api_key: str, tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "single.jsonl"
    files = [tree / name for name in BAD] + [tree / "top1.jpg"]
    done = imgcls(gateway.url, api_key, *map(str, files), "--batch-size", "1", "-v", "-o", str(out))
    assert done.returncode == 1
    assert summary(done.stderr) == {"ok": 1, "failed": 3, "skipped": 0, "retries": 0}
    assert "retry" not in done.stderr
    records = {r["path"]: r for r in jsonl(out)}
    log = gateway.logs()
    for name, (make, status, slug) in BAD.items():
        record = records[str(tree / name)]
        headers = {"X-API-Key": api_key, "Content-Type": "application/octet-stream"}
        direct = httpx.post(f"{gateway.url}/v1/predict", content=make(), headers=headers, timeout=60).json()
        assert record["error"]["type"] == direct["type"] == TYPE_BASE + slug
        assert record["error"]["detail"] == direct["detail"]
        assert record["error"]["status"] == status
        assert record["error"].get("code") == direct.get("code")
        assert log.count(f'"request_id": "{record["request_id"]}"') == 1, "sent once, not retried"


def test_wrong_key_stops_the_run_without_recording_files(gateway: Gateway, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = imgcls(gateway.url, "ica_not-a-key", str(tree), "-r", "-o", str(out))
    assert done.returncode == 2
    assert "unauthorized" in done.stderr
    assert jsonl(out) == []  # nothing recorded, so a later --resume sends every file


def test_connection_errors_are_retried_then_recorded(api_key: str, tree: Path) -> None:
    done = imgcls(f"http://127.0.0.1:{free_port()}", api_key, str(tree / "top1.jpg"), "--retries", "2", "-v")
    assert done.returncode == 1
    assert summary(done.stderr) == {"ok": 0, "failed": 1, "skipped": 0, "retries": 2}
    record = json.loads(done.stdout)
    assert record["status"] == "failed" and record["error"]["type"] == "client/connection-error"


def test_malformed_answers_are_bad_response_records(tmp_path: Path) -> None:
    """What the real gateway never sends (a fault only a stand-in can give): members of the wrong kind are
    each file's `client/bad-response`, not an ok record that a writer then trips over."""
    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg(64, 64, seed=1))
    vector = base64.b64encode(np.ones(4, dtype="<f4").tobytes()).decode()
    answers = {  # route -> the stand-in's answer
        "/v1/embed/batch": {"results": [{"embedding": [0.5, 0.5]}, {"embedding": vector}, {"filename": "c.jpg"}]},
        "/v1/predict": {"request_id": "r1", "predictions": [{"label": "tabby"}]},  # no rank, class_id, score
    }

    def stand_in(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[request.url.path])

    async def send(task: Classify | Embed, batch: bool, n: int) -> list[Record]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(stand_in), base_url="http://gw") as http:
            return await Sender(http, task, batch=batch).send([str(image)] * n)

    embedded = asyncio.run(send(Embed(), batch=True, n=3))
    assert [r["status"] for r in embedded] == ["failed", "ok", "failed"]
    assert embedded[0]["error"]["type"] == embedded[2]["error"]["type"] == "client/bad-response"
    assert embedded[1]["embedding"] == vector
    [classified] = asyncio.run(send(Classify(top_k=3), batch=False, n=1))
    assert classified["status"] == "failed" and classified["request_id"] == "r1"
    error = {"type": "client/bad-response", "detail": "no predictions in the answer", "status": 200}
    assert classified["error"] == error


# --- against a gateway with a tiny rate limit ------------------------------------------------------


@pytest.fixture(scope="module")
def limited(torchserve: TorchServe, api_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of its own allowing 2 requests/s per key (burst 2)."""
    env = gateway_env(torchserve, [key_hash(api_key)], rate_limit_rps="2", rate_limit_burst="2")
    with Gateway(tmp_path_factory.mktemp("gw-limited") / "gateway.log", env) as server:
        yield server


def rate_limited_count(gateway: Gateway) -> float:
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    match = re.search(r"^gateway_rate_limited_requests_total ([\d.e+]+)$", metrics, re.M)
    assert match, metrics
    return float(match.group(1))


def test_retries_honour_retry_after(limited: Gateway, api_key: str, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    before = rate_limited_count(limited)
    files = sorted(paths(tree, GOOD))
    done = imgcls(
        limited.url, api_key, *files, "--batch-size", "1", "--concurrency", "4", "--retries", "30", "-v", "-o", str(out)
    )
    assert done.returncode == 0, done.stderr
    counts = summary(done.stderr)
    assert counts["ok"] == 12 and counts["failed"] == 0 and counts["retries"] > 0
    waits = re.findall(r"after 429 rate-limited: waiting ([\d.]+) s \(Retry-After (\d+)\)", done.stderr)
    assert waits, done.stderr
    assert all(float(waited) >= int(asked) for waited, asked in waits)
    assert {r["path"] for r in jsonl(out) if r["status"] == "ok"} == set(files)
    assert rate_limited_count(limited) > before
    assert '"status": 429' in limited.logs()


def test_interrupt_then_resume(limited: Gateway, api_key: str, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    args = [str(tree), "-r", "--batch-size", "1", "--concurrency", "2", "--retries", "30", "-o", str(out)]
    process = subprocess.Popen(
        imgcls_cmd(*args),
        cwd=REPO,
        env=client_env(limited.url, api_key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 4:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    first = jsonl(out)  # every line whole
    before = summary(stderr)
    assert 4 <= len(first) < 15 and before["ok"] + before["failed"] == len(first)

    resumed = imgcls(limited.url, api_key, *args, "--resume")
    assert resumed.returncode == 1, resumed.stderr  # the bad files failed
    after = summary(resumed.stderr)
    assert after["skipped"] == len(first)
    assert after["ok"] + after["failed"] == 15 - len(first)
    records = jsonl(out)
    assert records[: len(first)] == first
    assert Counter(r["path"] for r in records) == Counter(paths(tree, GOOD) | paths(tree, BAD))
    assert_records(records, tree, top_k=5)
