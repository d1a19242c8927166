"""End to end against a real TorchServe serving the real archive (the test model that sees), token auth on."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from imagegen import in_format, jpeg, png_claiming, truncated_jpeg
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from support import PYTHON, metrics_url, read_properties, start_torchserve
from testmodel import (
    PHOTOS,
    PROB_TOLERANCE,
    TEST_MODEL_FILE,
    Reference,
    max_difference,
    photo,
    probability_vector,
)

from handlers.timing import COUNTERS, INFERENCE, PREPROCESS
from modelserver.torchserve import TorchServe, allowed_urls, ready_workers, regex_literal, render_config

ALL = {"X-Top-K": "1000"}  # every probability, to compare whole vectors


def predict(server: TorchServe, data: bytes, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {server.keys()['inference']}"}
    return httpx.post(
        f"{server.inference_url}/predictions/resnet50", content=data, headers={**auth, **headers}, timeout=60
    )


def test_single_prediction(torchserve: TorchServe) -> None:
    response = predict(torchserve, photo("chelsea"), **{"X-Top-K": "3", "X-Request-ID": "req-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "req-1"
    assert [p["label"] for p in body["predictions"]][:1] == ["tabby"] and len(body["predictions"]) == 3
    assert body["model"] == {
        "name": "resnet50",
        "version": "1.0",
        "weights": f"file:{TEST_MODEL_FILE}",  # the test model, named as such wherever the model is shown
        "untrained": False,
        "engine": "onnx",
    }


def test_answers_are_the_reference_pipelines(torchserve: TorchServe, seeing_model_dir: Path) -> None:
    """Every known photo gets its label and the probabilities of torchvision's pipeline and PyTorch."""
    model = Reference(seeing_model_dir)
    for name, label in PHOTOS.items():
        data = photo(name)
        response = predict(torchserve, data, **ALL)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert predictions[0]["label"] == label
        assert max_difference(probability_vector(predictions), model.probabilities(data)) <= PROB_TOLERANCE


def test_multipart_field_is_accepted(torchserve: TorchServe) -> None:
    auth = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    response = httpx.post(
        f"{torchserve.inference_url}/predictions/resnet50",
        files={"data": ("x.png", in_format("PNG"), "image/png")},
        headers=auth,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 5


def test_concurrent_requests_are_batched_and_bad_items_stay_isolated(torchserve: TorchServe) -> None:
    names = list(PHOTOS)
    bad = {3: b"", 7: truncated_jpeg(), 10: png_claiming(30000, 30000)}
    payloads = [bad.get(i, photo(name)) for i, name in enumerate(names)]
    solo = {i: predict(torchserve, payloads[i], **ALL).json() for i in (0, 5)}
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(
            pool.map(lambda ip: predict(torchserve, ip[1], **{"X-Request-ID": f"c{ip[0]}"}, **ALL), enumerate(payloads))
        )
    for i, response in enumerate(responses):
        body = response.json()
        assert body["request_id"] == f"c{i}"
        if i in bad:
            assert response.status_code == 422
            assert body["error"]["code"] == {3: "empty", 7: "undecodable", 10: "too_large"}[i]
        else:
            assert response.status_code == 200, body
            assert body["predictions"][0]["label"] == PHOTOS[names[i]]
    for i, expected in solo.items():  # the same probabilities alone and in a batch
        batched = probability_vector(responses[i].json()["predictions"])
        assert max_difference(batched, probability_vector(expected["predictions"])) <= PROB_TOLERANCE
    log = (torchserve.workdir / "logs" / "model_log.log").read_text()
    sizes = [int(line.split("batch of ")[1].split(":")[0]) for line in log.splitlines() if "batch of " in line]
    assert max(sizes) > 1, "TorchServe never batched concurrent requests"


def test_token_auth_is_on(torchserve: TorchServe) -> None:
    for url in (f"{torchserve.inference_url}/ping", f"{torchserve.inference_url}/predictions/resnet50"):
        response = httpx.post(url, content=jpeg(), timeout=30) if "predictions" in url else httpx.get(url, timeout=30)
        assert response.status_code == 400 and response.json()["type"] == "InvalidKeyException"
    wrong = httpx.get(f"{torchserve.management_url}/models", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 400


def test_model_registration_api_is_off(torchserve: TorchServe) -> None:
    key = torchserve.keys()["management"]
    response = httpx.post(
        f"{torchserve.management_url}/models",
        params={"url": "https://example.invalid/evil.mar"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code in (400, 403, 405), response.text
    assert (
        "evil"
        not in httpx.get(
            f"{torchserve.management_url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ).text
    )


def register(server: TorchServe, url: str, name: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {server.keys()['management']}"}
    return httpx.post(
        f"{server.management_url}/models", params={"url": url, "model_name": name}, headers=auth, timeout=120
    )


def test_allowed_urls_name_the_one_store_served(seeing_model_store: Path, tmp_path: Path) -> None:
    """Registration turned on for this instance only, to test `allowed_urls` itself (defence in depth): an
    archive in another directory named model_store, or in a directory whose name differs only in case, is
    refused by TorchServe's URL check and never copied in; one of the served store is accepted."""
    served = tmp_path / "served.d" / "model_store"
    served.mkdir(parents=True)
    shutil.copy(seeing_model_store / "resnet50.mar", served / "resnet50.mar")
    shutil.copy(seeing_model_store / "resnet50.mar", served / "second.mar")
    elsewhere = [tmp_path / "other" / "model_store", tmp_path / "Served.d" / "model_store"]
    for store in elsewhere:
        store.mkdir(parents=True)
        shutil.copy(seeing_model_store / "resnet50.mar", store / "evil.mar")
    with start_torchserve(tmp_path / "ts", served, {"enable_model_api": "true"}) as server:
        props = read_properties((server.workdir / "config.properties").read_text())
        assert props["allowed_urls"] == allowed_urls(served.resolve())
        assert re.fullmatch(props["allowed_urls"], f"file://{served.resolve()}/second.mar")
        refused = [f"file://{store}/evil.mar" for store in elsewhere] + [f"FILE://{served}/evil.mar"]
        for url in refused:
            response = register(server, url, "evil")
            assert response.status_code == 404, (url, response.text)
            assert "does not match any allowed URL" in response.text, (url, response.text)
        assert sorted(p.name for p in served.iterdir()) == ["resnet50.mar", "second.mar"], "nothing copied in"
        assert register(server, "second.mar", "second").status_code == 200
        auth = {"Authorization": f"Bearer {server.keys()['management']}"}
        listed = httpx.get(f"{server.management_url}/models", headers=auth, timeout=30).json()
        assert sorted(m["modelName"] for m in listed["models"]) == ["resnet50", "second"]


@pytest.mark.parametrize("path", ["/srv/model_store", "/tmp/a.b/x+y (1)/c\u00e1f\u00e9,\\[s]*?$^|{2}/\u4e2d"])
def test_regex_literal_matches_its_text_only(path: str) -> None:
    literal = regex_literal(path)
    assert literal.isascii() and "," not in literal  # TorchServe reads ISO 8859-1 and splits allowed_urls at ','
    assert re.fullmatch(literal, path) and not re.fullmatch(literal, path.upper())
    assert not re.fullmatch(literal, path.replace(".", "X").replace("/s", "/S").replace("*", ""))
    assert regex_literal("/\U0001f600") == "/\\x{1f600}"  # beyond the BMP in Java's syntax (Python has none)


def test_rendered_values_read_back_as_java_reads_them() -> None:
    value = allowed_urls(Path("/tmp/\u00e9t\u00e9.d"))
    rendered = render_config("# a comment\nallowed_urls=(?!)\n", {"allowed_urls": value, "other": "tab\there"})
    assert rendered.isascii() and "\\\\x2e" in rendered  # the regex's backslash, doubled for Properties.load
    assert read_properties(rendered) == {"allowed_urls": value, "other": "tab\there"}


def test_rendered_config_binds_loopback_only(torchserve: TorchServe) -> None:
    props = read_properties((torchserve.workdir / "config.properties").read_text())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"


def test_prometheus_metrics(torchserve: TorchServe) -> None:
    response = httpx.get(f"{metrics_url(torchserve)}/metrics", timeout=30)
    assert response.status_code == 200
    assert "ts_inference_requests_total" in response.text


def test_handler_timings_reach_the_prometheus_output(torchserve: TorchServe) -> None:
    """The handler's counters (handlers/timing.py) come out of TorchServe's metrics port as counters under exactly
    their declared names (TorchServe adds no `_total`), labelled by model, level and host (model_metrics_auto_detect
    in config.properties; without it TorchServe drops them). The worker's log lines reach the frontend a moment
    after the answer: polled."""
    assert predict(torchserve, photo(next(iter(PHOTOS)))).status_code == 200
    samples: dict[str, Sample] = {}
    types: dict[str, str] = {}
    for _ in range(50):
        families = list(
            text_string_to_metric_families(httpx.get(f"{metrics_url(torchserve)}/metrics", timeout=30).text)
        )
        samples = {s.name: s for f in families for s in f.samples if s.name in COUNTERS}
        types = {f.name: f.type for f in families}
        if set(samples) == set(COUNTERS) and samples[INFERENCE.count].value >= 1:
            break
        time.sleep(0.2)
    assert set(samples) == set(COUNTERS), sorted(samples)
    for name, sample in samples.items():
        # prometheus_client's parser names a counter's family without `_total`; its sample keeps the full name.
        assert types[name.removesuffix("_total")] == "counter", name
        assert set(sample.labels) == {"ModelName", "Level", "Hostname"}, sample
        assert (sample.labels["ModelName"], sample.labels["Level"]) == ("resnet50", "Model"), sample
    for stage in (PREPROCESS, INFERENCE):
        count, seconds = samples[stage.count].value, samples[stage.seconds].value
        assert count >= 1 and count == int(count), stage
        assert 0 < seconds < 60 * count, f"{stage}: seconds, not milliseconds"
    # Every forward pass had at least one image decoded and preprocessed (logged before it).
    assert samples[PREPROCESS.count].value >= samples[INFERENCE.count].value


def test_ready_command_reports_workers(torchserve: TorchServe) -> None:
    import subprocess

    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "modelserver",
            "ready",
            "--management-url",
            torchserve.management_url,
            "--key-file",
            str(torchserve.key_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "READY worker" in done.stdout
    assert ready_workers(torchserve.management_url, torchserve.workdir / "missing" / "key_file.json") == 0


@pytest.mark.parametrize("field", ["management", "inference", "API"])
def test_key_file_has_all_keys(torchserve: TorchServe, field: str) -> None:
    assert json.loads(torchserve.key_file.read_text())[field]["key"]


def test_custom_describe_returns_the_model_block(torchserve: TorchServe) -> None:
    response = httpx.get(
        f"{torchserve.management_url}/models/resnet50",
        params={"customized": "true"},
        headers={"Authorization": f"Bearer {torchserve.keys()['management']}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    described = response.json()[0]["customizedMetadata"]
    assert described["labels"] == 1000 and described["untrained"] is False
    assert described["weights"] == f"file:{TEST_MODEL_FILE}" and described["engine"] == "onnx"
