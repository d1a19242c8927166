"""The handler in-process, driven through TorchServe's own Context and RequestProcessor classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from imagegen import in_format, jpeg, png_claiming, truncated_jpeg
from ts.context import Context, RequestProcessor

from handlers.image_handler import ImageClassifierHandler


def make_context(model_dir: Path, headers: list[dict[str, str]]) -> Context:
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    context = Context("resnet50", str(model_dir), {}, len(headers), None, "0.12.0", model_yaml_config=config)
    context.request_processor = [RequestProcessor(dict(h)) for h in headers]
    return context


@pytest.fixture(scope="module")
def handler(model_dir: Path) -> ImageClassifierHandler:
    service = ImageClassifierHandler()
    service.initialize(make_context(model_dir, [{}]))
    return service


def run(handler: ImageClassifierHandler, model_dir: Path, items: list[dict], headers: list[dict]) -> tuple:
    context = make_context(model_dir, headers)
    return handler.handle(items, context), context


def test_mixed_batch_keeps_order_and_isolates_bad_items(handler: ImageClassifierHandler, model_dir: Path) -> None:
    items = [
        {"body": bytearray(jpeg(seed=1))},
        {"body": bytearray(b"")},
        {"data": bytearray(in_format("PNG"))},
        {"body": bytearray(truncated_jpeg())},
        {"body": bytearray(b"%PDF-1.7 not an image")},
        {"body": bytearray(png_claiming(30000, 30000))},
        {"body": bytearray(jpeg(seed=2))},
    ]
    headers = [{"X-Request-ID": f"r{i}"} for i in range(len(items))]
    results, context = run(handler, model_dir, items, headers)
    assert [r["request_id"] for r in results] == [f"r{i}" for i in range(len(items))]
    codes = [r.get("error", {}).get("code") for r in results]
    assert codes == [None, "empty", None, "undecodable", "undecodable", "too_large", None]
    for idx in (0, 2, 6):
        predictions = results[idx]["predictions"]
        assert len(predictions) == 5
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
        assert {"class_id", "label", "score"} == set(predictions[0])
        assert context.get_response_status(idx)[0] == 200
    for idx in (1, 3, 4, 5):
        assert context.get_response_status(idx)[0] == 422
    assert all(r["model"]["untrained"] is True and r["model"]["engine"] == "onnx" for r in results)


def test_same_image_same_answer_alone_or_in_a_batch(handler: ImageClassifierHandler, model_dir: Path) -> None:
    image = {"body": bytearray(jpeg(seed=3))}
    alone, _ = run(handler, model_dir, [image], [{}])
    batched, _ = run(handler, model_dir, [{"body": bytearray(jpeg(seed=4))}, image, image], [{}, {}, {}])
    ids = lambda r: [p["class_id"] for p in r["predictions"]]  # noqa: E731
    assert ids(alone[0]) == ids(batched[1]) == ids(batched[2])
    assert alone[0]["predictions"][0]["score"] == pytest.approx(batched[1]["predictions"][0]["score"], abs=1e-5)


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("20", 20), ("7", 7), ("1000", 1000)])
def test_top_k_header(handler: ImageClassifierHandler, model_dir: Path, raw: str, expected: int) -> None:
    results, _ = run(handler, model_dir, [{"body": bytearray(jpeg())}], [{"X-Top-K": raw}])
    assert len(results[0]["predictions"]) == expected


@pytest.mark.parametrize("raw", ["0", "1001", "five", "-3"])
def test_bad_top_k_is_a_per_item_error(handler: ImageClassifierHandler, model_dir: Path, raw: str) -> None:
    results, context = run(handler, model_dir, [{"body": bytearray(jpeg())}], [{"X-Top-K": raw}])
    assert results[0]["error"]["code"] == "bad_top_k"
    assert context.get_response_status(0)[0] == 422


def test_all_bad_batch(handler: ImageClassifierHandler, model_dir: Path) -> None:
    results, _ = run(handler, model_dir, [{"body": bytearray(b"x")}, {"body": bytearray()}], [{}, {}])
    assert [r["error"]["code"] for r in results] == ["undecodable", "empty"]


def test_concurrent_decode_gives_the_sequential_answer(model_dir: Path) -> None:
    """decode_threads 2 (the default: a batch's images decoded in a thread pool) and 1 (one by one) agree
    exactly, item by item, bad items included."""
    items = [{"body": bytearray(jpeg(seed=s))} for s in range(5)] + [{"body": bytearray(b"not an image")}]
    headers = [{"X-Request-ID": f"r{i}"} for i in range(len(items))]
    answers = []
    for threads in (2, 1):
        config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
        config["handler"]["decode_threads"] = threads
        context = make_context(model_dir, headers)
        context.model_yaml_config = config
        service = ImageClassifierHandler()
        service.initialize(context)
        assert (service.decoders is not None) == (threads > 1)
        answers.append(service.handle(items, context))
    assert answers[0] == answers[1]
    assert answers[0][5]["error"]["code"] == "undecodable" and len(answers[0][0]["predictions"]) == 5
