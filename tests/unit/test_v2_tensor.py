"""gateway/v2.py's reading and writing of the Open Inference Protocol's tensors, byte by byte: the JSON
header and binary tail of a request, the BYTES elements (base64 in JSON, or length-prefixed in the tail)
counted as they are found, and the outputs (FP32 probabilities, classification strings, binary form)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from contract.wire import ItemAnswer
from gateway.problems import Problem
from gateway.v2 import HEADER_COMMAS, bytes_elements, encode_output, split_binary


def elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def refused(call, *args) -> str:
    with pytest.raises(Problem) as problem:
        call(*args)
    assert problem.value.slug == "invalid-request"
    return problem.value.detail


def test_a_body_without_a_header_length_is_all_json() -> None:
    header, tail = split_binary(b'{"inputs": []}', None, 4)
    assert header == {"inputs": []} and bytes(tail) == b""


def test_the_header_length_splits_json_from_the_binary_tail_without_copying() -> None:
    head = json.dumps({"inputs": []}).encode()
    body = head + b"\x00\x01binary"
    header, tail = split_binary(body, str(len(head)), 4)
    assert header == {"inputs": []}
    assert bytes(tail) == b"\x00\x01binary" and tail.obj is body


@pytest.mark.parametrize("length", ["-1", "99", "1e3", "\u0661"])
def test_a_header_length_that_is_not_ascii_digits_within_the_body_is_refused(length: str) -> None:
    assert "inference-header-content-length" in refused(split_binary, b'{"inputs": []}', length, 4)


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"\xff\xfe", b"[" * 100_000])
def test_a_header_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    refused(split_binary, body, None, 4)


def test_a_header_of_more_values_than_a_request_needs_is_refused_before_parsing() -> None:
    body = json.dumps({"x": list(range(HEADER_COMMAS + 8))}).encode()
    assert "JSON values" in refused(split_binary, body, None, 4)


def test_bytes_elements_from_base64_json() -> None:
    tensor = {"datatype": "BYTES", "data": [base64.b64encode(b"one").decode(), base64.b64encode(b"two").decode()]}
    assert bytes_elements(tensor, memoryview(b""), 4) == [b"one", b"two"]
    assert "base64" in refused(bytes_elements, {"datatype": "BYTES", "data": ["not base64!"]}, memoryview(b""), 4)
    assert "BYTES" in refused(bytes_elements, {"datatype": "FP32", "data": []}, memoryview(b""), 4)


def test_bytes_elements_from_the_binary_tail() -> None:
    tail = elements(b"one", b"", b"three")
    tensor = {"datatype": "BYTES", "parameters": {"binary_data_size": len(tail)}}
    assert bytes_elements(tensor, memoryview(tail), 4) == [b"one", b"", b"three"]


@pytest.mark.parametrize(
    ("tail", "size", "detail"),
    [
        (elements(b"one"), 100, "binary_data_size"),
        (elements(b"one")[:-1], None, "truncated BYTES element"),
        (elements(b"one") + b"\x01\x00", None, "truncated BYTES element length"),
        (elements(b"one"), -1, "binary_data_size"),
    ],
)
def test_a_tail_that_does_not_add_up_is_refused(tail: bytes, size: int | None, detail: str) -> None:
    tensor = {"datatype": "BYTES", "parameters": {"binary_data_size": len(tail) if size is None else size}}
    assert detail in refused(bytes_elements, tensor, memoryview(tail), 4)


def test_elements_beyond_the_batch_limit_are_refused_at_the_first_one_too_many() -> None:
    tail = elements(*[b"x"] * 5)
    tensor = {"datatype": "BYTES", "parameters": {"binary_data_size": len(tail)}}
    assert "1 to 4 images" in refused(bytes_elements, tensor, memoryview(tail), 4)
    data = {"datatype": "BYTES", "data": ["eA=="] * 5}
    assert "1 to 4 images" in refused(bytes_elements, data, memoryview(b""), 4)


CLASSES = 1000  # the served model's, as its description says (ImageNet's here)


def results() -> list[ItemAnswer]:
    first = [{"class_id": 7, "label": "seven", "score": 0.75}, {"class_id": 2, "label": "two", "score": 0.25}]
    second = [{"class_id": 2, "label": "two", "score": 1.0}]
    return [{"request_id": None, "model": {}, "predictions": p} for p in (first, second)]  # type: ignore[misc]


def test_probabilities_are_a_dense_fp32_tensor_of_every_class() -> None:
    tensor, raw = encode_output({"name": "probabilities"}, results(), CLASSES)
    assert (tensor["datatype"], tensor["shape"], raw) == ("FP32", [2, CLASSES], b"")
    data = tensor["data"]
    assert (data[7], data[2], data[CLASSES + 2]) == (0.75, 0.25, 1.0)
    assert sum(data) == pytest.approx(2.0)


def test_classification_strings_and_the_binary_form() -> None:
    output = {"name": "probabilities", "parameters": {"classification": 1, "binary_data": True}}
    tensor, raw = encode_output(output, results(), CLASSES)
    assert tensor == {
        "name": "probabilities",
        "datatype": "BYTES",
        "shape": [2, 1],
        "parameters": {"binary_data_size": len(raw)},
    }
    assert raw == elements(b"0.750000:7:seven", b"1.000000:2:two")
    dense, dense_raw = encode_output({"name": "probabilities", "parameters": {"binary_data": True}}, results(), CLASSES)
    assert struct.unpack(f"<{2 * CLASSES}f", dense_raw)[7] == 0.75 and "data" not in dense


def test_the_dense_tensor_and_classification_are_as_wide_as_the_models_classes() -> None:
    tensor, _ = encode_output({"name": "probabilities"}, results(), 8)
    assert tensor["shape"] == [2, 8] and len(tensor["data"]) == 16
    assert (tensor["data"][7], tensor["data"][8 + 2]) == (0.75, 1.0)
    assert "from 1 to 8" in refused(
        encode_output, {"name": "probabilities", "parameters": {"classification": 9}}, [], 8
    )
    with pytest.raises(Problem) as changed:  # class 7 from a model described with 5 classes: it was replaced
        encode_output({"name": "probabilities"}, results(), 5)
    assert changed.value.slug == "model-unavailable" and "the served model changed" in changed.value.detail
