"""The handler in-process, driven through TorchServe's own Context and RequestProcessor classes, serving the
test model that sees its input (tests/testmodel.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import ts
from imagegen import in_format, jpeg, png_claiming, stored_with_orientation, truncated_jpeg
from reference import make_context
from testmodel import (
    PHOTOS,
    PROB_TOLERANCE,
    TEST_MODEL_FILE,
    Reference,
    large_photo,
    max_difference,
    photo,
    picture,
    probability_vector,
)
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handlers.image_handler import ImageClassifierHandler

ALL = {"X-Top-K": "1000"}


@pytest.fixture(scope="module")
def handler(seeing_model_dir: Path) -> ImageClassifierHandler:
    service = ImageClassifierHandler()
    service.initialize(make_context(seeing_model_dir, [{}]))
    return service


def run(handler: ImageClassifierHandler, model_dir: Path, items: list[dict], headers: list[dict]) -> tuple:
    context = make_context(model_dir, headers)
    return handler.handle(items, context), context


def test_mixed_batch_keeps_order_and_isolates_bad_items(
    handler: ImageClassifierHandler, seeing_model_dir: Path
) -> None:
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
    results, context = run(handler, seeing_model_dir, items, headers)
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
    model = {
        "name": "resnet50",
        "version": "1.0",
        "weights": f"file:{TEST_MODEL_FILE}",
        "untrained": False,
        "engine": "onnx",
    }
    assert all(r["model"] == model for r in results)


def test_same_image_same_answer_alone_or_in_a_batch(handler: ImageClassifierHandler, seeing_model_dir: Path) -> None:
    image = {"body": bytearray(photo("coffee"))}
    alone, _ = run(handler, seeing_model_dir, [image], [ALL])
    batched, _ = run(handler, seeing_model_dir, [{"body": bytearray(photo("rocket"))}, image, image], [ALL] * 3)
    assert alone[0]["predictions"][0]["label"] == "espresso"
    assert batched[0]["predictions"][0]["label"] == "missile"
    for other in (batched[1], batched[2]):
        assert (
            max_difference(probability_vector(alone[0]["predictions"]), probability_vector(other["predictions"]))
            <= PROB_TOLERANCE
        )


def test_default_answers_are_the_reference_pipelines(
    handler: ImageClassifierHandler, seeing_model_dir: Path, seeing_model: Reference
) -> None:
    """Small, large (12 MP) and EXIF-rotated photos: the probabilities of torchvision's pipeline and PyTorch."""
    images = [
        photo("chelsea"),
        large_photo("stereo_motorcycle", 12),
        large_photo("camera", 2),
        stored_with_orientation(picture("hubble_deep_field"), 8),
        photo("clock"),
    ]
    results, _ = run(handler, seeing_model_dir, [{"body": bytearray(data)} for data in images], [ALL] * len(images))
    for data, result in zip(images, results, strict=True):
        assert (
            max_difference(probability_vector(result["predictions"]), seeing_model.probabilities(data))
            <= PROB_TOLERANCE
        )
    labels = [r["predictions"][0]["label"] for r in results]
    assert labels == ["tabby", "moped", "reflex camera", "planetarium", "wall clock"]


def test_jpeg_draft_setting_reaches_the_decoder(seeing_model_dir: Path, seeing_model: Reference) -> None:
    """`jpeg_draft: 8` in the archive's handler block makes large JPEGs answer differently (reduced decode)."""
    drafting = ImageClassifierHandler()
    drafting.initialize(make_context(seeing_model_dir, [{}], jpeg_draft=8))
    data = large_photo("rocket", 12)
    results, _ = run(drafting, seeing_model_dir, [{"body": bytearray(data)}], [ALL])
    assert (
        max_difference(probability_vector(results[0]["predictions"]), seeing_model.probabilities(data)) > PROB_TOLERANCE
    )


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("20", 20), ("7", 7), ("1000", 1000)])
def test_top_k_header(handler: ImageClassifierHandler, seeing_model_dir: Path, raw: str, expected: int) -> None:
    results, _ = run(handler, seeing_model_dir, [{"body": bytearray(jpeg())}], [{"X-Top-K": raw}])
    assert len(results[0]["predictions"]) == expected


@pytest.mark.parametrize("raw", ["0", "1001", "five", "-3"])
def test_bad_top_k_is_a_per_item_error(handler: ImageClassifierHandler, seeing_model_dir: Path, raw: str) -> None:
    results, context = run(handler, seeing_model_dir, [{"body": bytearray(jpeg())}], [{"X-Top-K": raw}])
    assert results[0]["error"]["code"] == "bad_top_k"
    assert context.get_response_status(0)[0] == 422


def test_all_bad_batch(handler: ImageClassifierHandler, seeing_model_dir: Path) -> None:
    results, _ = run(handler, seeing_model_dir, [{"body": bytearray(b"x")}, {"body": bytearray()}], [{}, {}])
    assert [r["error"]["code"] for r in results] == ["undecodable", "empty"]


def test_concurrent_decode_gives_the_sequential_answer(seeing_model_dir: Path) -> None:
    """decode_threads 2 (the default: a batch's images decoded in a thread pool) and 1 (one by one) agree
    exactly, item by item, bad items included; the test model tells the photos apart, so a mix-up shows."""
    names = list(PHOTOS)[:5]
    items = [{"body": bytearray(photo(name))} for name in names] + [{"body": bytearray(b"not an image")}]
    headers = [{"X-Request-ID": f"r{i}"} for i in range(len(items))]
    answers = []
    for threads in (2, 1):
        context = make_context(seeing_model_dir, headers, decode_threads=threads)
        service = ImageClassifierHandler()
        service.initialize(context)
        assert (service.decoders is not None) == (threads > 1)
        answers.append(service.handle(items, context))
    assert [a["predictions"][0]["label"] for a in answers[0][:5]] == [PHOTOS[name] for name in names]
    assert answers[0] == answers[1]
    assert answers[0][5]["error"]["code"] == "undecodable" and len(answers[0][0]["predictions"]) == 5


# TorchServe 0.12's frontend reads a worker's `[METRICS]` lines with this pattern (Metric.java, PATTERN); the
# type it carries makes an auto-detected metric (model_metrics_auto_detect) a counter.
METRIC_LINE = re.compile(
    r"\[METRICS\]\s*([\w\s]+)\.([\w\s]+):([0-9\-,.e]+)\|#([^|]*)(\|#type:([^|,]+))?\|#hostname:([^,]+),([^,]+)(,(.*))?"
)


def test_timings_go_to_torchserve_metrics_and_a_context_without_metrics_is_fine(
    seeing_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With TorchServe's metrics cache in the context, each classified image adds its decode+preprocess seconds
    and 1 image, and the batch's forward pass its seconds and 1 batch, to counters labelled by model only; the
    same handler with the tests' context (no metrics) answers alike and reports nothing."""
    items = [{"body": bytearray(photo(name))} for name in list(PHOTOS)[:2]] + [{"body": bytearray(b"nope")}]
    headers = [{"X-Request-ID": f"t{i}"} for i in range(len(items))]
    answers = []
    for metrics in (MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml")), None):
        context = make_context(seeing_model_dir, headers)
        context.metrics = metrics
        service = ImageClassifierHandler()
        service.initialize(context)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            answers.append(service.handle(items, context))
        lines = [m for r in caplog.records if (m := METRIC_LINE.search(r.getMessage()))]
        if metrics is None:
            assert lines == []
            continue
        observed = sorted((m[1], m[2], m[4], m[6]) for m in lines)
        dims = "ModelName:resnet50,Level:Model"
        assert observed == sorted(
            [("handler_inference_seconds_total", "Seconds", dims, "COUNTER")]
            + [("handler_inference_batches_total", "Count", dims, "COUNTER")]
            + [("handler_preprocess_seconds_total", "Seconds", dims, "COUNTER")] * 2
            + [("handler_preprocessed_images_total", "Count", dims, "COUNTER")] * 2
        )
        values = [(m[1], float(m[3])) for m in lines]
        assert all(0 < value < 60 for name, value in values if name.endswith("_seconds_total"))
        assert all(value == 1 for name, value in values if not name.endswith("_seconds_total"))
    assert answers[0] == answers[1]
