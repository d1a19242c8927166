"""Open Inference Protocol v2 on the gateway, driven by a real third-party client (tritonclient)."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from imagegen import encode, jpeg
from support import Gateway, post, slowest_answer_during
from testmodel import LABELS, PHOTOS, PROB_TOLERANCE, Reference, max_difference, photo, picture
from tritonclient.utils import InferenceServerException

from gateway.v2 import metadata


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=gateway.url.removeprefix("http://"), network_timeout=60.0)


def images_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("images", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=binary)
    return tensor


def test_health_and_metadata(client: triton.InferenceServerClient, gateway: Gateway, api_key: str) -> None:
    auth = {"X-API-Key": api_key}
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("resnet50", headers=auth)
    meta = client.get_model_metadata("resnet50", headers=auth)
    assert meta["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0]["name"] == "probabilities" and meta["outputs"][0]["shape"] == [-1, 1000]
    # What is served, as TorchServe's worker describes it (/v1/models): the archive's version and engine.
    (served,) = httpx.get(f"{gateway.url}/v1/models", headers=auth, timeout=30).json()["models"]
    assert served["version"] == "1.0" and served["engine"] == "onnx"  # the session archive's, independently known
    assert meta["versions"] == [served["version"]] and meta["platform"] == f"torchserve_{served['engine']}"


@pytest.mark.parametrize("engine", ["eager", "onnx-int8"])
def test_metadata_follows_the_served_engine_and_version(engine: str) -> None:
    """The platform is derived from whatever engine the worker reports, not chosen from a fixed list."""
    meta = metadata("resnet50", {"version": "2.3", "engine": engine, "weights": "x", "labels": 1000})
    assert meta["versions"] == ["2.3"] and meta["platform"] == f"torchserve_{engine}"


def test_infer_probabilities_binary(
    client: triton.InferenceServerClient, gateway: Gateway, api_key: str, seeing_model_dir: Path
) -> None:
    """v2's whole probability vectors are the reference pipeline's, and v1's scores are the same numbers."""
    names = ["coffee", "camera", "shapes-1"]
    images = [photo(names[0]), encode(picture(names[1]), "PNG"), photo(names[2])]
    result = client.infer(
        "resnet50",
        [images_input(images)],
        outputs=[triton.InferRequestedOutput("probabilities")],
        headers={"X-API-Key": api_key},
    )
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 1000) and probabilities.dtype == np.float32
    assert result.get_response()["model_version"] == "1.0"  # the session archive's version
    model = Reference(seeing_model_dir)
    for name, data, row in zip(names, images, probabilities, strict=True):
        assert LABELS[int(np.argmax(row))] == PHOTOS[name]
        assert max_difference(row, model.probabilities(data)) <= PROB_TOLERANCE
    v1 = post(gateway, api_key, content=images[1], headers={"Content-Type": "image/png"}, params={"top_k": 20}).json()
    assert (
        max_difference(
            [p["score"] for p in v1["predictions"]], [probabilities[1][p["class_id"]] for p in v1["predictions"]]
        )
        <= PROB_TOLERANCE
    )


def test_infer_classification_strings(client: triton.InferenceServerClient, gateway: Gateway, api_key: str) -> None:
    image = photo("rocket")
    output = triton.InferRequestedOutput("probabilities", class_count=3)
    result = client.infer("resnet50", [images_input([image])], outputs=[output], headers={"X-API-Key": api_key})
    strings = [s.decode() for s in result.as_numpy("probabilities").ravel()]
    v1 = post(gateway, api_key, content=image, headers={"Content-Type": "image/jpeg"}).json()["predictions"][:3]
    assert v1[0]["label"] == "missile"
    assert [s.split(":", 2)[1:] for s in strings] == [[str(p["class_id"]), p["label"]] for p in v1]
    v2_scores = [float(s.split(":")[0]) for s in strings]
    assert max_difference(v2_scores, [p["score"] for p in v1]) <= PROB_TOLERANCE


def test_json_base64_request(gateway: Gateway, api_key: str) -> None:
    body = {
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(jpeg()).decode()]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    response = httpx.post(
        f"{gateway.url}/v2/models/resnet50/infer", json=body, headers={"X-API-Key": api_key}, timeout=60
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 2] and len(output["data"]) == 2


def test_errors_use_the_protocol_shape(client: triton.InferenceServerClient, gateway: Gateway, api_key: str) -> None:
    with pytest.raises(InferenceServerException, match="API key"):
        client.infer("resnet50", [images_input([jpeg()])], headers={"X-API-Key": "wrong"})
    with pytest.raises(InferenceServerException, match="image 1"):
        client.infer("resnet50", [images_input([jpeg(), b"not an image"])], headers={"X-API-Key": api_key})
    unknown = httpx.get(f"{gateway.url}/v2/models/other", headers={"X-API-Key": api_key}, timeout=10)
    assert unknown.status_code == 404 and set(unknown.json()) == {"error"}
    garbage = httpx.post(
        f"{gateway.url}/v2/models/resnet50/infer", content=b"{not json", timeout=10, headers={"X-API-Key": api_key}
    )
    assert garbage.status_code == 422 and "JSON" in garbage.json()["error"]


# --- hostile requests: 4xx, and cheap for everyone else ----------------------------------------------------------

INFER = "/v2/models/resnet50/infer"


def binary_request(tail: bytes) -> tuple[bytes, int]:
    """A binary-extension request whose BYTES input is `tail` (already element-framed): body, header length."""
    images = {"name": "images", "datatype": "BYTES", "shape": [-1], "parameters": {"binary_data_size": len(tail)}}
    header = json.dumps({"inputs": [images]}).encode()
    return header + tail, len(header)


def element(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


@pytest.mark.parametrize("length", [b"\xb2", b"1\xb9", b"\xb3", b"+9", b"-1", b"1_0", b"9" * 40])
def test_header_length_is_ascii_digits_only(gateway: Gateway, api_key: str, length: bytes) -> None:
    """str.isdigit() accepts the superscripts '²' '³' '¹' (bytes 0xB2 0xB3 0xB9 as a header decodes them),
    which int() refuses: that was a 500."""
    body, _ = binary_request(element(jpeg()))
    headers = [
        (b"X-API-Key", api_key.encode()),
        (b"Inference-Header-Content-Length", length),
        (b"Content-Type", b"application/octet-stream"),
    ]
    response = httpx.post(f"{gateway.url}{INFER}", content=body, headers=headers, timeout=30)
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"} and "ASCII digits" in response.json()["error"]


def zero_length_elements() -> tuple[bytes, dict[str, str]]:
    body, length = binary_request(bytes(10 * 2**20))  # 2.6 million elements of length 0
    return body, {"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"}


HOSTILE = {
    "zero-length elements": (zero_length_elements, "send 1 to 32 images"),
    "millions of JSON values": (lambda: (b'{"inputs": [' + b"0," * 5 * 2**20 + b"0]}", {}), "JSON values"),
    "JSON nested deeper than the stack": (lambda: (b"[" * 200_000, {}), "not valid JSON"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_bodies_are_refused_without_stalling_others(gateway: Gateway, api_key: str, name: str) -> None:
    """10 MB of elements of length 0 were split in a Python loop on the event loop before the count was
    checked (other clients waited seconds); a header of millions of JSON values held it as long; nesting
    deeper than Python's stack was a 500. Now: counted as found, refused at the first beyond the limit."""
    make, detail = HOSTILE[name]
    body, headers = make()

    def send() -> httpx.Response:
        return httpx.post(f"{gateway.url}{INFER}", content=body, headers={"X-API-Key": api_key, **headers}, timeout=60)

    response, slowest = slowest_answer_during(f"{gateway.url}/healthz", send)
    assert response.status_code == 422, response.text
    assert detail in response.json()["error"]
    assert slowest < 0.5, f"/healthz took {slowest:.2f} s while the body was parsed"
