"""Open Inference Protocol (KServe v2) on the gateway, for Triton/KServe clients.

    GET  /v2/health/live, /v2/health/ready        open, like /healthz and /readyz
    GET  /v2/models/{name}, /v2/models/{name}/ready
    POST /v2/models/{name}/infer

({name}: the served model, GATEWAY_MODEL_NAME, by default contract/wire.py's MODEL_NAME.)

Input: one BYTES tensor of encoded images, shape [N] (N = batch, at most GATEWAY_MAX_BATCH_FILES), as
base64 strings in JSON, or raw with the binary-data extension (`Inference-Header-Content-Length`; each
element a 4-byte little-endian length and the bytes). Output `probabilities` (FP32 [N, C], C the served
model's classes: 1000 for ImageNet, the archive's own count otherwise) or, with the `classification`
parameter k (1 to C), BYTES [N, k] of Triton-style "score:index:label" strings; output `embedding`
(FP32 [N, 2048]): the L2-normalised embeddings of /v1/embed, from the same forward pass. Binary outputs are
sent when asked for (`binary_data`). Same auth, validation, limits and error mapping as /v1; errors come
in the protocol's `{"error": "..."}` shape (`error_response`; gateway/errors.py picks it for every path
under /v2/, unknown ones included).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any, TypedDict

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from contract.wire import EMBEDDING_SIZE, ItemAnswer, ModelDescription, ServedModel
from gateway import readiness
from gateway.deps import Authenticated, DrainDep, InferenceDep, SettingsDep, UpstreamDep
from gateway.digits import ascii_int
from gateway.problems import Problem
from gateway.settings import Settings
from gateway.uploads import read_body, tensor_images
from gateway.vectors import floats

PREFIX = "/v2"
router = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol v2"])
HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
EMBEDDING_NAME = "embedding"
# Bytes held for each byte of a body, in the body budget: the images split out of it, and the body itself
# or (JSON) its base64 text while they are decoded.
BODY_COPIES = 2


def error_response(problem: Problem, request_id: str | None) -> Response:
    """An error in the protocol's shape: `{"error": "..."}` (KServe v2 has no error types)."""
    return JSONResponse({"error": f"{problem.title}: {problem.detail}"}, problem.status, headers=problem.headers)


def served_version(model: ServedModel) -> str:
    """The served model's version, from the handler's model block (the archive's metadata)."""
    return str(model["version"])


class TensorMetadata(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(TypedDict):
    """GET /v2/models/{name}: the protocol's model metadata."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Live(TypedDict):
    live: bool


class ServerReady(TypedDict):
    ready: bool


class ModelReady(TypedDict):
    name: str
    ready: bool


def metadata(model_name: str, model: ModelDescription) -> ModelMetadata:
    """v2 metadata of what is served: `model` is the handler's description (version, engine, outputs)."""
    outputs: list[TensorMetadata] = [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, model["labels"]]}]
    if "embedding" in (model.get("outputs") or []):  # archives built before embeddings have none
        outputs.append({"name": EMBEDDING_NAME, "datatype": "FP32", "shape": [-1, EMBEDDING_SIZE]})
    return {
        "name": model_name,
        "versions": [served_version(model)],
        "platform": f"torchserve_{model['engine']}",  # the handler's engine: onnx, onnx-int8, eager, ...
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    }


def bad(detail: str) -> Problem:
    return Problem("invalid-request", detail)


def batch_size(limit: int) -> Problem:
    return bad(f"send 1 to {limit} images")


# A request header holds a few dozen JSON values besides one per image; parsing a header of millions of them
# would hold the event loop for as long (json.loads keeps the GIL, so a thread would not help), and each
# value but the last is followed by a comma, which bytes.count finds at memory speed.
HEADER_COMMAS = 1024


def split_binary(body: bytes, header_length: str | None, max_images: int) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary tail of a request (a view of the body, not a copy)."""
    view = memoryview(body)
    if header_length is None:
        header, tail = body, view[len(body) :]
    else:
        length = ascii_int(header_length)
        if length is None or length > len(body):
            raise bad(f"{HEADER_LENGTH} must be a length within the body, in ASCII digits")
        header, tail = body[:length], view[length:]
    if header.count(b",") > HEADER_COMMAS + max_images:
        raise bad(f"the inference request header has more than {HEADER_COMMAS + max_images} JSON values")
    try:
        parsed = json.loads(header)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        raise bad("the inference request header is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise bad("the inference request must be a JSON object")
    return parsed, tail


def bytes_elements(tensor: dict[str, Any], tail: memoryview, max_images: int) -> list[bytes]:
    """The encoded images of the BYTES input, from JSON (base64) or from the binary tail. Counted as they are
    found: the request is refused at the first one beyond `max_images`, before any is copied or decoded."""
    if tensor.get("datatype") != "BYTES":
        raise bad(f"input {INPUT_NAME!r} must have datatype BYTES")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(tail):
            raise bad("binary_data_size does not match the binary data sent")
        raw, offset = tail[:size], 0
        bounds: list[tuple[int, int]] = []
        while offset < len(raw):
            if len(bounds) == max_images:
                raise batch_size(max_images)
            if offset + 4 > len(raw):
                raise bad("truncated BYTES element length")
            (length,) = struct.unpack_from("<I", raw, offset)
            if offset + 4 + length > len(raw):
                raise bad("truncated BYTES element")
            bounds.append((offset + 4, offset + 4 + length))
            offset += 4 + length
        return [bytes(raw[start:end]) for start, end in bounds]
    data = tensor.get("data")
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise bad("BYTES data in JSON must be a list of base64 strings")
    if len(data) > max_images:
        raise batch_size(max_images)
    try:
        return [base64.b64decode(item, validate=True) for item in data]
    except (binascii.Error, ValueError):
        raise bad("BYTES data in JSON must be base64-encoded images") from None


def requested_outputs(request_json: dict[str, Any]) -> list[dict[str, Any]]:
    outputs = request_json.get("outputs") or [{"name": OUTPUT_NAME}]
    names = (OUTPUT_NAME, EMBEDDING_NAME)
    if not isinstance(outputs, list) or any(not isinstance(o, dict) or o.get("name") not in names for o in outputs):
        raise bad(f"the outputs are {OUTPUT_NAME!r} and {EMBEDDING_NAME!r}")
    return outputs


def classification_k(output: dict[str, Any], classes: int) -> int | None:
    """The `classification` parameter k of an output, 1 to the model's `classes`; None when not asked for."""
    k = (output.get("parameters") or {}).get("classification")
    if k is None or output["name"] == EMBEDDING_NAME:
        return None
    if not isinstance(k, int) or not 1 <= k <= classes:
        raise bad(f"classification must be an integer from 1 to {classes}")
    return k


def encode_output(output: dict[str, Any], results: list[ItemAnswer], classes: int) -> tuple[dict[str, Any], bytes]:
    """One output tensor as JSON, plus its binary form when the client asked for binary data; `classes`: the
    served model's, the width of the dense probabilities."""
    k = classification_k(output, classes)
    binary = bool((output.get("parameters") or {}).get("binary_data"))
    tensor: dict[str, Any]
    values: list[float] | list[str]
    if output["name"] == EMBEDDING_NAME:
        raw = b"".join(base64.b64decode(result["embedding"]) for result in results)
        values = floats(raw)
        tensor = {"name": EMBEDDING_NAME, "datatype": "FP32", "shape": [len(results), EMBEDDING_SIZE]}
    elif k is None:
        scores = [0.0] * (len(results) * classes)
        for row, result in enumerate(results):
            for p in result["predictions"]:
                if p["class_id"] >= classes:  # TorchServe serves another archive under the name since described
                    raise Problem("model-unavailable", "the served model changed during the request; retry")
                scores[row * classes + p["class_id"]] = p["score"]
        tensor = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [len(results), classes]}
        raw = struct.pack(f"<{len(scores)}f", *scores)
        values = scores
    else:
        strings = [f"{p['score']:.6f}:{p['class_id']}:{p['label']}" for r in results for p in r["predictions"][:k]]
        tensor = {"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [len(results), k]}
        raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in strings)
        values = strings
    if binary:
        tensor["parameters"] = {"binary_data_size": len(raw)}
        return tensor, raw
    tensor["data"] = values
    return tensor, b""


# The JSON answers' documented schema is a plain object, as before they were typed: response_model says so.
JSON_OBJECT = dict[str, Any]


@router.get("/health/live", response_model=JSON_OBJECT, summary="The gateway process is alive")
async def live() -> Live:
    return {"live": True}


@router.get("/health/ready", response_model=JSON_OBJECT, summary="TorchServe has a READY worker", responses={503: {}})
async def ready(drain: DrainDep, upstream: UpstreamDep) -> ServerReady:
    readiness.refuse_while_draining(drain)
    await readiness.ready(upstream)
    return {"ready": True}


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown model"}}


@router.get("/models/{model_name}", response_model=JSON_OBJECT, summary="Model metadata", responses=NOT_FOUND)
async def model_metadata(
    model_name: str, _: Authenticated, settings: SettingsDep, upstream: UpstreamDep
) -> ModelMetadata:
    expect_model(settings, model_name)
    return metadata(model_name, await upstream.model_info())


@router.get("/models/{model_name}/ready", response_model=JSON_OBJECT, summary="The model is ready", responses=NOT_FOUND)
async def model_ready(model_name: str, _: Authenticated, settings: SettingsDep, upstream: UpstreamDep) -> ModelReady:
    expect_model(settings, model_name)
    await readiness.ready(upstream)  # the model serves while the gateway drains: only /v2/health/ready turns 503
    return {"name": model_name, "ready": True}


def expect_model(settings: Settings, model_name: str) -> None:
    if model_name != settings.model_name:
        raise Problem("not-found", f"unknown model {model_name!r}")


@router.post("/models/{model_name}/infer", summary="Classify a batch of encoded images", responses=NOT_FOUND)
async def infer(
    request: Request,
    model_name: str,
    caller: Authenticated,
    settings: SettingsDep,
    upstream: UpstreamDep,
    inference: InferenceDep,
) -> Response:
    expect_model(settings, model_name)
    body = await read_body(request, settings.max_body_bytes, "the inference request", BODY_COPIES)
    request_json, tail = split_binary(body, request.headers.get(HEADER_LENGTH), settings.max_batch_files)
    del body  # what is kept is split from it (the tail is a view of it)
    inputs = request_json.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad(f"send exactly one input, {INPUT_NAME!r}")
    images = bytes_elements(inputs[0], tail, settings.max_batch_files)
    if not images:
        raise batch_size(settings.max_batch_files)
    caller.charge_images(len(images))
    outputs = requested_outputs(request_json)
    wanted = {o["name"] for o in outputs}
    classes = (await upstream.model_info())["labels"]  # after the body: what its head decides needs no model
    top_k = max([(classification_k(o, classes) or classes) for o in outputs if o["name"] == OUTPUT_NAME], default=1)
    checked = tensor_images(images, settings)
    results = await inference.classify_all(checked, top_k, embedding=EMBEDDING_NAME in wanted)
    encoded = [encode_output(output, results, classes) for output in outputs]
    response_json = {
        "model_name": model_name,
        "model_version": served_version(results[0]["model"]),
        "id": request_json.get("id", inference.request_id),
        "outputs": [tensor for tensor, _ in encoded],
    }
    binary = b"".join(raw for _, raw in encoded)
    header = json.dumps(response_json).encode()
    if not binary:
        return Response(header, media_type="application/json")
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return Response(header + binary, media_type="application/octet-stream", headers=headers)
