"""The gateway app in process (in_process.py) in front of a fake TorchServe: the gateway's own decisions
(auth, rate limits, ranking, the mapping of TorchServe's answers and failures to problems, key renewal, the
error shapes), where TorchServe itself is not the subject. Real TorchServe: tests/integration."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import httpx
import pytest
from fake_torchserve import INVALID_KEY, SCORES
from imagegen import png
from in_process import API_KEY, OTHER_KEY, gateway
from support import assert_problem

from contract.wire import REQUEST_ID_HEADER, TOP_K_HEADER
from gateway.main import create_app
from gateway.problems import PROBLEM_JSON, TYPE_BASE
from gateway.settings import Settings

pytestmark = pytest.mark.anyio
IMAGE = png(64, 48)


async def predict(client: httpx.AsyncClient, key: str = API_KEY, query: str = "", image: bytes = IMAGE):
    files = {"file": ("photo.png", image, "image/png")}
    return await client.post(f"/v1/predict{query}", files=files, headers={"X-API-Key": key})


async def test_a_prediction_is_the_handlers_scores_ranked_with_a_decision(tmp_path: Path) -> None:
    async with gateway(tmp_path) as served:
        response = await predict(served.client, query="?top_k=3")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["request_id"] == response.headers["x-request-id"]
        assert [(p["rank"], p["class_id"], p["score"]) for p in body["predictions"]] == [
            (1, 0, SCORES[0]),
            (2, 1, SCORES[1]),
            (3, 2, SCORES[2]),
        ]
        assert body["decision"] == {"label": "crane", "class_id": 0, "score": SCORES[0]}
        assert body["model"]["weights"] == "file:fake.pth"
        (sent,) = served.torchserve.predictions()
        assert sent.body == IMAGE  # forwarded as uploaded
        assert sent.headers[TOP_K_HEADER] == "3"
        assert sent.headers[REQUEST_ID_HEADER] == body["request_id"]


async def test_no_key_or_an_unknown_key_is_one_401_and_nothing_is_forwarded(tmp_path: Path) -> None:
    async with gateway(tmp_path) as served:
        for headers in ({}, {"X-API-Key": "ica_unknown"}, {"Authorization": "Bearer ica_unknown"}):
            response = await served.client.post("/v1/predict", content=IMAGE, headers=headers)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert served.torchserve.predictions() == []
        response = await served.client.post(
            "/v1/predict", content=IMAGE, headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "image/png"}
        )
        assert response.status_code == 200, response.text


async def test_each_key_has_its_own_bucket_and_a_refusal_says_when_to_retry(tmp_path: Path) -> None:
    async with gateway(tmp_path, rate_limit_rps=0.01, rate_limit_burst=2) as served:
        assert [(await predict(served.client)).status_code for _ in range(2)] == [200, 200]
        refused = await predict(served.client)
        body = assert_problem(refused, 429, "rate-limited")
        assert "rate limit" in body["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-limit"] == "2" and refused.headers["ratelimit-remaining"] == "0"
        assert (await predict(served.client, key=OTHER_KEY)).status_code == 200
        assert len(served.torchserve.predictions()) == 3


async def test_a_batch_of_more_images_than_the_burst_is_refused_whole(tmp_path: Path) -> None:
    async with gateway(tmp_path, rate_limit_burst=2) as served:
        files = [("files", (f"{i}.png", IMAGE, "image/png")) for i in range(3)]
        response = await served.client.post("/v1/predict/batch", files=files, headers={"X-API-Key": API_KEY})
        assert_problem(response, 413, "payload-too-large")
        assert served.torchserve.predictions() == []


async def test_an_allow_list_renormalises_over_its_classes_by_id_or_name(tmp_path: Path) -> None:
    async with gateway(tmp_path) as served:
        response = await predict(served.client, query="?classes=crane,7")  # "crane" names classes 0 and 1
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["class_id"] for p in predictions] == [0, 1, 7]
        total = SCORES[0] + SCORES[1] + SCORES[7]
        assert [p["score"] for p in predictions] == pytest.approx([SCORES[i] / total for i in (0, 1, 7)])
        assert served.torchserve.predictions()[0].headers[TOP_K_HEADER] == "1000"  # all, to renormalise
        body = assert_problem(await predict(served.client, query="?classes=crane,unicorn"), 422, "invalid-request")
        assert body["unknown_classes"] == ["unicorn"]


async def test_unknown_below_decides_unknown_and_keeps_the_predictions(tmp_path: Path) -> None:
    async with gateway(tmp_path) as served:
        body = (await predict(served.client, query=f"?unknown_below={SCORES[0] + 1e-6}")).json()
        assert body["decision"] == {"label": "unknown", "class_id": None, "score": SCORES[0]}
        assert body["predictions"][0]["class_id"] == 0


async def test_a_client_mistake_is_a_4xx_problem_and_never_reaches_torchserve(tmp_path: Path) -> None:
    async with gateway(tmp_path) as served:
        assert_problem(await predict(served.client, query="?top_k=0"), 422, "invalid-request")
        assert_problem(await predict(served.client, image=b"not an image at all"), 415, "unsupported-media-type")
        assert served.torchserve.predictions() == []


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "slug"),
    [
        (503, b'{"code": 503, "message": "no worker"}', 503, "model-unavailable"),
        (404, b'{"code": 404, "message": "Model not found"}', 503, "model-unavailable"),
        (413, b"", 413, "payload-too-large"),
        (422, b'{"error": {"code": "undecodable", "detail": "cannot identify image"}}', 422, "invalid-image"),
        (422, b'{"error": {"code": "too_large", "detail": "too many pixels"}}', 413, "image-too-large"),
        (500, b'{"code": 500, "message": "Worker died."}', 502, "upstream-error"),
        (200, b"<html>not the handler</html>", 502, "upstream-error"),
        (200, b'{"no": "predictions"}', 502, "upstream-error"),
    ],
)
async def test_torchserves_answers_become_problems(
    tmp_path: Path, status: int, body: bytes, expected_status: int, slug: str
) -> None:
    async with gateway(tmp_path) as served:
        served.torchserve.script.append((status, body))
        response = await predict(served.client)
        assert_problem(response, expected_status, slug)
        if expected_status == 503:
            assert response.headers["retry-after"] == "2"
        assert "Worker died" not in response.text and "html" not in response.text


async def test_no_answer_within_the_timeout_is_a_504(tmp_path: Path) -> None:
    async with gateway(tmp_path, request_timeout_s=0.3) as served:
        served.torchserve.delay_s = 2.0
        assert_problem(await predict(served.client), 504, "upstream-timeout")


async def test_an_expired_key_is_renewed_with_the_api_key_and_clients_never_see_it(tmp_path: Path) -> None:
    async with gateway(tmp_path) as served:
        assert (await predict(served.client)).status_code == 200
        served.torchserve.expire("inference")
        assert (await predict(served.client)).status_code == 200
        renewals = [s for s in served.torchserve.seen if s.path == "/token"]
        assert [r.query["type"] for r in renewals] == ["inference"]
        assert (
            json.loads(served.torchserve.key_file.read_text())["inference"]["key"]
            == served.torchserve.keys["inference"]
        )


async def test_a_key_that_cannot_be_renewed_is_a_503_not_the_clients_fault(tmp_path: Path) -> None:
    async with gateway(tmp_path) as served:
        served.torchserve.keys["API"] = "not-the-one-in-the-file"
        served.torchserve.expire("inference")
        response = await predict(served.client)
        assert_problem(response, 503, "model-unavailable")
        assert "authenticate" in response.json()["detail"]
        assert INVALID_KEY.decode() not in response.text


async def test_readiness_follows_the_workers_and_needs_no_key(tmp_path: Path) -> None:
    async with gateway(tmp_path, readiness_cache_s=0) as served:
        ready = await served.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers_ready"] == 1
        served.torchserve.workers = ["UNLOADING"]
        assert_problem(await served.client.get("/readyz"), 503, "model-unavailable")


async def test_v2_infer_answers_the_same_scores_in_its_own_tensor(tmp_path: Path) -> None:
    async with gateway(tmp_path) as served:
        images = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(IMAGE).decode()]}
        request = {"inputs": [images], "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
        response = await served.client.post("/v2/models/resnet50/infer", json=request, headers={"X-API-Key": API_KEY})
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["shape"] == [1, 2]
        assert output["data"] == [f"{SCORES[0]:.6f}:0:crane", f"{SCORES[1]:.6f}:1:crane"]
        bad = await served.client.post("/v2/models/resnet50/infer", content=b"{", headers={"X-API-Key": API_KEY})
        assert bad.status_code == 422 and set(bad.json()) == {"error"}  # v2's shape, not problem+json
        assert len(served.torchserve.predictions()) == 1


async def test_an_unhandled_error_is_answered_in_the_shape_of_the_paths_protocol(tmp_path: Path) -> None:
    """The middleware's internal-error answer takes the same decision as every other error (gateway/errors.py):
    the v2 shape under /v2/, problem+json elsewhere; never the exception's text. The fault is a route added to
    the real app that raises, the one failure no request can cause."""
    async with gateway(tmp_path) as served:

        async def broken() -> None:
            raise RuntimeError("a secret stack detail")

        for path in ("/v2/broken", "/v1/broken"):
            served.app.add_api_route(path, broken)
        v2, v1 = await served.client.get("/v2/broken"), await served.client.get("/v1/broken")
        assert v2.status_code == 500
        assert v2.json() == {"error": "Internal error: an internal error occurred; it has been logged"}
        assert v1.status_code == 500 and v1.headers["content-type"] == PROBLEM_JSON
        assert v1.json()["type"] == TYPE_BASE + "internal-error"
        assert "secret" not in v1.text + v2.text


async def test_making_an_app_leaves_the_processs_logging_alone() -> None:
    """Logging is the entry point's (gateway/__main__.py): an app made in a test, a benchmark or a tool leaves the
    root logger and uvicorn's loggers as they were."""
    names = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
    loggers = [logging.getLogger(name) for name in names]
    before = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    create_app(Settings(api_key_hashes=["a" * 64], log_level="DEBUG"))
    assert [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers] == before


async def test_the_lifespan_gives_the_torchserve_client_the_apps_metrics() -> None:
    """The client the lifespan makes counts into the app's own metrics (its upstream latency and slots), not
    into a registry of its own; it is closed when the app stops."""
    app = create_app(Settings(api_key_hashes=["a" * 64]))
    async with app.router.lifespan_context(app):
        upstream = app.state.upstream
        assert upstream.metrics is app.state.metrics
        assert not upstream.session.closed
    assert upstream.session.closed
