"""The gateway over HTTP, in front of a real TorchServe."""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from imagegen import (
    encode,
    gradient,
    in_format,
    in_mode,
    jpeg,
    png,
    stored_with_orientation,
    truncated_jpeg,
    with_orientation,
)
from prometheus_client.parser import text_string_to_metric_families
from support import OTHER_KEY, PYTHON, Gateway, assert_problem, gateway_env, post
from testmodel import LABELS, PROB_TOLERANCE, TEST_MODEL_FILE, Reference, max_difference, photo, picture

from gateway.keys import key_hash
from gateway.problems import TYPE_BASE
from handlers.cpu_features import present, this_cpu_flags
from handlers.engine_start import NOT_GATED
from modelserver.torchserve import TorchServe

SERVED_MODEL = {"name": "resnet50", "version": "1.0", "weights": f"file:{TEST_MODEL_FILE}", "untrained": False}


def assert_prediction(body: dict, top_k: int = 5) -> None:
    assert body["model"] == SERVED_MODEL
    predictions = body["predictions"]
    assert [p["rank"] for p in predictions] == list(range(1, len(predictions) + 1))
    assert len(predictions) == top_k
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert all(set(p) == {"rank", "class_id", "label", "score"} for p in predictions)
    assert body["timing_ms"]["total"] >= body["timing_ms"]["upstream"] > 0


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_multipart_upload(gateway: Gateway, api_key: str, fmt: str) -> None:
    response = post(gateway, api_key, files={"file": (f"x.{fmt.lower()}", in_format(fmt), "image/whatever")})
    assert response.status_code == 200, response.text
    assert_prediction(response.json())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_raw_body_upload(gateway: Gateway, api_key: str, fmt: str) -> None:
    response = post(gateway, api_key, content=in_format(fmt), headers={"Content-Type": f"image/{fmt.lower()}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_prediction(body)
    assert body["request_id"] == response.headers["x-request-id"]


def test_same_answer_as_torchserve_direct(gateway: Gateway, api_key: str, torchserve) -> None:
    data = photo("astronaut")
    auth = {"Authorization": f"Bearer {torchserve.keys()['inference']}", "X-Top-K": "20"}
    direct = httpx.post(
        f"{torchserve.inference_url}/predictions/resnet50", content=data, headers=auth, timeout=60
    ).json()
    via = post(gateway, api_key, content=data, headers={"Content-Type": "image/jpeg"}, params={"top_k": 20}).json()
    assert via["predictions"][0]["label"] == "space shuttle"
    assert [p["class_id"] for p in via["predictions"]] == [p["class_id"] for p in direct["predictions"]]
    scores = lambda body: [p["score"] for p in body["predictions"]]  # noqa: E731
    assert max_difference(scores(via), scores(direct)) <= PROB_TOLERANCE


def test_a_known_photo_and_its_exif_rotated_copies_get_its_label(
    gateway: Gateway, api_key: str, seeing_model_dir: Path
) -> None:
    """End to end: the photo and its copies stored turned with an EXIF Orientation tag (2-8) all get the
    photo's label, each with the reference pipeline's probabilities (which apply the tag)."""
    model = Reference(seeing_model_dir)
    copies = [photo("chelsea")] + [stored_with_orientation(picture("chelsea"), o) for o in range(2, 9)]
    for data in copies:
        response = post(gateway, api_key, content=data, headers={"Content-Type": "image/jpeg"}, params={"top_k": 20})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert predictions[0]["label"] == "tabby"
        expected = model.probabilities(data)
        assert (
            max_difference([p["score"] for p in predictions], [expected[p["class_id"]] for p in predictions])
            <= PROB_TOLERANCE
        )


def test_request_id_is_passed_through(gateway: Gateway, api_key: str) -> None:
    response = post(gateway, api_key, content=jpeg(), headers={"Content-Type": "image/jpeg", "X-Request-ID": "abc-1"})
    assert response.json()["request_id"] == response.headers["x-request-id"] == "abc-1"
    hostile = post(gateway, api_key, content=jpeg(), headers={"Content-Type": "image/jpeg", "X-Request-ID": "a<b>"})
    assert hostile.status_code == 200
    assert hostile.headers["x-request-id"] != "a<b>" and hostile.json()["request_id"] == hostile.headers["x-request-id"]


@pytest.mark.parametrize("top_k", [1, 3, 20])
def test_top_k(gateway: Gateway, api_key: str, top_k: int) -> None:
    response = post(gateway, api_key, params={"top_k": top_k}, content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert_prediction(response.json(), top_k)


def test_min_score_drops_low_predictions(gateway: Gateway, api_key: str) -> None:
    everything = post(gateway, api_key, params={"top_k": 20}, content=jpeg(), headers={"Content-Type": "image/jpeg"})
    scores = [p["score"] for p in everything.json()["predictions"]]
    threshold = (scores[1] + scores[2]) / 2
    kept = post(
        gateway,
        api_key,
        params={"top_k": 20, "min_score": threshold},
        content=jpeg(),
        headers={"Content-Type": "image/jpeg"},
    ).json()["predictions"]
    assert [p["score"] for p in kept] == scores[:2]
    assert [p["rank"] for p in kept] == [1, 2]


@pytest.mark.parametrize(
    "params", [{"top_k": 0}, {"top_k": 21}, {"top_k": "many"}, {"min_score": -0.1}, {"min_score": 1.5}]
)
def test_parameter_bounds(gateway: Gateway, api_key: str, params: dict) -> None:
    response = post(gateway, api_key, params=params, content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert_problem(response, 422, "invalid-request")


def test_batch_mixed_good_and_bad(gateway: Gateway, api_key: str) -> None:
    files = [
        ("files", ("a.jpg", jpeg(seed=1), "image/jpeg")),
        ("files", ("empty.jpg", b"", "image/jpeg")),
        ("files", ("b.png", png(), "image/png")),
        ("files", ("notes.txt", b"hello there, not an image", "text/plain")),
        ("files", ("cut.jpg", truncated_jpeg(), "image/jpeg")),
        ("files", ("c.webp", in_format("WEBP"), "image/webp")),
    ]
    response = post(gateway, api_key, "/v1/predict/batch", files=files, params={"top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == SERVED_MODEL
    results = body["results"]
    assert [r["filename"] for r in results] == ["a.jpg", "empty.jpg", "b.png", "notes.txt", "cut.jpg", "c.webp"]
    for i in (0, 2, 5):
        assert len(results[i]["predictions"]) == 3 and "error" not in results[i]
    errors = {i: results[i]["error"] for i in (1, 3, 4)}
    assert errors[1]["type"] == TYPE_BASE + "invalid-image" and errors[1]["code"] == "empty"
    assert errors[3]["type"] == TYPE_BASE + "unsupported-media-type" and errors[3]["status"] == 415
    assert errors[4]["type"] == TYPE_BASE + "invalid-image" and errors[4]["code"] == "undecodable"
    assert all(e["request_id"] == body["request_id"] for e in errors.values())


def test_batch_file_count_limit(gateway: Gateway, api_key: str) -> None:
    files = [("files", (f"{i}.png", png(8, 8), "image/png")) for i in range(33)]
    assert_problem(post(gateway, api_key, "/v1/predict/batch", files=files), 422, "invalid-request")


def test_batch_needs_files(gateway: Gateway, api_key: str) -> None:
    response = post(gateway, api_key, "/v1/predict/batch", files={"other": ("a.png", png(), "image/png")})
    assert_problem(response, 422, "invalid-request")
    raw = post(gateway, api_key, "/v1/predict/batch", content=png(), headers={"Content-Type": "image/png"})
    assert_problem(raw, 415, "unsupported-media-type")


def test_models(gateway: Gateway, api_key: str) -> None:
    response = httpx.get(f"{gateway.url}/v1/models", headers={"X-API-Key": api_key}, timeout=30)
    assert response.status_code == 200, response.text
    (model,) = response.json()["models"]
    assert model == {
        **SERVED_MODEL,
        "labels": 1000,
        "label_names": LABELS,
        "labels_source": "torchvision ImageNet-1K",
        "engine": "onnx",
        "int8_gate": None,
        "outputs": ["embedding", "cam"],
        "precision": "fp32",
        "precision_policy": "exact",
        "cpu_features": present(this_cpu_flags()),
        "engine_choice": {
            "asked": "onnx",
            "skipped": {},
            "refused": {},
            "verdict": NOT_GATED,
        },
        "workers_ready": model["workers_ready"],
    }
    assert model["workers_ready"] >= 1


def test_health_and_readiness_are_open(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_openapi_and_docs(gateway: Gateway) -> None:
    spec = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(body)
    assert "examples" in spec["components"]["schemas"]["Prediction"]
    assert httpx.get(f"{gateway.url}/docs", timeout=10).status_code == 200


class TestAuth:
    def test_missing_key(self, gateway: Gateway) -> None:
        response = httpx.post(f"{gateway.url}/v1/predict", content=jpeg(), headers={"Content-Type": "image/jpeg"})
        assert_problem(response, 401, "unauthorized")
        assert "Bearer" in response.headers["www-authenticate"]

    def test_wrong_key_looks_like_missing(self, gateway: Gateway) -> None:
        wrong = post(gateway, "ica_wrong", content=jpeg(), headers={"Content-Type": "image/jpeg"})
        missing = httpx.post(f"{gateway.url}/v1/predict", content=jpeg(), headers={"Content-Type": "image/jpeg"})
        body_wrong, body_missing = assert_problem(wrong, 401, "unauthorized"), missing.json()
        assert {k: v for k, v in body_wrong.items() if k != "request_id"} == {
            k: v for k, v in body_missing.items() if k != "request_id"
        }

    def test_bearer_and_second_key(self, gateway: Gateway) -> None:
        headers = {"Content-Type": "image/jpeg", "Authorization": f"Bearer {OTHER_KEY}"}
        response = httpx.post(f"{gateway.url}/v1/predict", content=jpeg(), timeout=60, headers=headers)
        assert response.status_code == 200, response.text

    def test_bearer_key_wins_over_a_foreign_x_api_key(self, gateway: Gateway) -> None:
        """Behind Amazon API Gateway, x-api-key carries API Gateway's key; ours comes as Bearer."""
        headers = {"Content-Type": "image/jpeg", "Authorization": f"Bearer {OTHER_KEY}", "X-API-Key": "apigw-key"}
        response = httpx.post(f"{gateway.url}/v1/predict", content=jpeg(), timeout=60, headers=headers)
        assert response.status_code == 200, response.text

    def test_models_needs_a_key(self, gateway: Gateway) -> None:
        assert_problem(httpx.get(f"{gateway.url}/v1/models", timeout=10), 401, "unauthorized")

    def test_rate_limit(self, torchserve, tmp_path, api_key: str) -> None:
        from support import gateway_env

        from gateway.keys import key_hash

        env = gateway_env(torchserve, [key_hash(api_key)], rate_limit_rps="0.2", rate_limit_burst="2")
        with Gateway(tmp_path / "gw.log", env) as limited:
            codes = []
            for _ in range(3):
                response = post(limited, api_key, content=b"", headers={"Content-Type": "image/jpeg"})
                codes.append(response.status_code)
            assert codes[:2] == [422, 422]
            body = assert_problem(response, 429, "rate-limited")
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["ratelimit-limit"] == "2" and response.headers["ratelimit-remaining"] == "0"
            assert "rate limit" in body["detail"]
            metrics = httpx.get(f"{limited.url}/metrics", timeout=10).text
            assert "gateway_rate_limited_requests_total 1.0" in metrics


@pytest.mark.parametrize(
    "name",
    ["CMYK", "I;16", "P", "LA", "1", "exif-6", "exif-3", "gif-animated", "1x1", "very-wide", "tiff", "bmp"],
)
def test_odd_but_valid_images(gateway: Gateway, api_key: str, name: str) -> None:
    data = {
        "exif-6": lambda: with_orientation(6),
        "exif-3": lambda: with_orientation(3),
        "gif-animated": lambda: in_format("GIF"),
        "1x1": lambda: encode(gradient(1, 1), "PNG"),
        "very-wide": lambda: encode(gradient(4000, 20), "PNG"),  # 200:1, the most elongated accepted
        "tiff": lambda: in_format("TIFF"),
        "bmp": lambda: in_format("BMP"),
    }.get(name, lambda: in_mode(name)[1])()
    response = post(gateway, api_key, files={"file": ("img", data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    assert_prediction(response.json())


def test_concurrent_clients(gateway: Gateway, api_key: str) -> None:
    images = [jpeg(seed=s) for s in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda d: post(gateway, api_key, content=d, headers={"Content-Type": "image/jpeg"}), images)
        )
    assert [r.status_code for r in responses] == [200] * 16


def test_metrics_exposition(gateway: Gateway, api_key: str) -> None:
    post(gateway, api_key, content=jpeg(), headers={"Content-Type": "image/jpeg"})
    post(gateway, api_key, content=b"nope", headers={"Content-Type": "image/jpeg"})
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert 'gateway_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert "gateway_request_duration_seconds_bucket" in text and "gateway_upstream_duration_seconds_count" in text
    assert 'gateway_images_total{outcome="classified"}' in text
    assert 'gateway_rejected_inputs_total{reason="unsupported-media-type"}' in text


METRIC_LABELS = {"method", "route", "status", "outcome", "reason", "le"}  # le: a histogram's bucket bound


def test_metrics_labels_are_low_cardinality_and_never_identify(gateway: Gateway, api_key: str) -> None:
    """Requests that each carry their own request id, path, file names and (wrong) key: a second round of them,
    all new values, adds no series, and no label holds any of them; the labels are the route template, method,
    status, outcome and problem type slug only."""

    def round_of_requests() -> list[str]:
        tokens = [uuid.uuid4().hex for _ in range(4)]
        image = {"content": jpeg(), "headers": {"Content-Type": "image/jpeg", "X-Request-ID": tokens[0]}}
        assert post(gateway, api_key, **image).status_code == 200
        assert httpx.get(f"{gateway.url}/no-such-{tokens[1]}", timeout=10).status_code == 404
        files = [("files", (f"{tokens[2]}.jpg", jpeg(), "image/jpeg"))]
        assert post(gateway, api_key, "/v1/predict/batch", files=files).status_code == 200
        assert post(gateway, f"ica_{tokens[3]}", **image).status_code == 401
        return tokens

    def series() -> tuple[str, set[tuple[str, frozenset[tuple[str, str]]]]]:
        text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
        samples = [s for f in text_string_to_metric_families(text) if f.name.startswith("gateway_") for s in f.samples]
        return text, {(s.name, frozenset(s.labels.items())) for s in samples}

    series()  # the scrape's own route, counted from then on
    first = round_of_requests()
    _, before = series()
    second = round_of_requests()
    text, after = series()
    assert after == before, "new request ids, paths, file names or keys made new series"
    assert not [t for t in [*first, *second, api_key, OTHER_KEY] if t in text]
    assert {label for _, labels in after for label, _ in labels} <= METRIC_LABELS
    routes = {value for _, labels in after for label, value in labels if label == "route"}
    assert {"unmatched", "/v1/predict", "/v1/predict/batch"} <= routes
    gauges = {"gateway_requests_in_flight", "gateway_upstream_in_flight", "gateway_upstream_slots", "gateway_draining"}
    assert {name for name, _ in after} >= gauges | {"gateway_requests_total", "gateway_images_total"}


def test_metrics_capacity_slots_queue_waits_and_in_flight(torchserve: TorchServe, api_key: str, tmp_path: Path) -> None:
    """GATEWAY_MAX_CONNECTIONS=1 under 6 concurrent images: every prediction's wait for the slot is observed,
    the shed ones (503 after the 0.05 s queue timeout) above 0.05 s; nothing holds a slot afterwards, and the
    one request in flight while /metrics answers is that scrape."""
    env = gateway_env(torchserve, [key_hash(api_key)], max_connections="1", queue_timeout_s="0.05")
    with Gateway(tmp_path / "gw.log", env) as narrow:
        big, headers = jpeg(1600, 1200), {"Content-Type": "image/jpeg"}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = pool.map(lambda _: post(narrow, api_key, content=big, headers=headers), range(6))
            codes = [answer.status_code for answer in answers]
        text = httpx.get(f"{narrow.url}/metrics", timeout=10).text
    samples = {(s.name, s.labels.get("le")): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    shed = codes.count(503)
    assert shed and codes.count(200) + shed == 6, codes
    assert samples[("gateway_upstream_slots", None)] == 1.0
    assert samples[("gateway_upstream_queue_wait_seconds_count", None)] == 6.0
    assert samples[("gateway_upstream_queue_wait_seconds_bucket", "0.025")] <= 6 - shed
    assert samples[("gateway_upstream_in_flight", None)] == 0.0
    assert samples[("gateway_requests_in_flight", None)] == 1.0
    buckets = sorted(float(le) for name, le in samples if name == "gateway_request_duration_seconds_bucket" and le)
    assert {25.0, 29.0, 30.0} <= set(buckets), "the buckets resolve the range up to API Gateway's 29 s cap"


def test_logs_are_json_lines_without_keys(gateway: Gateway, api_key: str) -> None:
    import json

    post(gateway, api_key, content=jpeg(), headers={"Content-Type": "image/jpeg", "X-Request-ID": "log-probe"})
    probe: list[dict] = []
    for _ in range(50):  # the line is written once the response has been sent: allow it a moment
        lines = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
        probe = [line for line in lines if line.get("request_id") == "log-probe" and line["msg"] == "request"]
        if probe:
            break
        time.sleep(0.1)
    assert probe and probe[-1]["status"] == 200 and probe[-1]["route"] == "/v1/predict"
    assert probe[-1]["key_id"] and probe[-1]["latency_ms"] > 0
    assert api_key not in gateway.logs() and OTHER_KEY not in gateway.logs()


def test_gateway_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "from gateway.main import create_app\n"
        "from gateway.settings import Settings\n"
        "create_app(Settings(api_key_hashes=['a' * 64]))\n"
        "assert not any(m.startswith(('torch', 'numpy', 'onnx')) and sys.modules[m] is not None for m in sys.modules)\n"
        "print('ok')"
    )
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
