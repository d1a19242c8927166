"""Class activation maps and embeddings from the handler in-process (TorchServe's own Context), with the test
model that sees: checked against torch references (hooks on layer4 and avgpool, fc.weight) and torchvision's
own Resize + CenterCrop for where the map lies on the original image."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from imagegen import encode, stored_with_orientation
from PIL import Image
from reference import make_context
from reference import reference as reference_input
from testmodel import PHOTOS as PHOTO_LABELS
from testmodel import Reference, photo, picture
from torchvision.transforms import CenterCrop, Resize

from handlers.engines import INT8_ONNX_FILE, ONNX_FILE
from handlers.image_handler import ImageClassifierHandler
from handlers.imaging import decode, preprocess
from modelserver.quantize import quantize

# The maps against the torch reference. A map is a sum over 2048 channels of weight x feature, whose terms
# cancel: its error is relative to the size of those terms (the sum of |weight x feature|), not to its peak,
# which can be near zero. Eager runs PyTorch's own layers; ONNX Runtime's convolutions sum in another order,
# which moves layer4's features by about 1e-5 relative, so a map element by at most about that much of its
# terms' size, on any model (the export itself is held to 1e-3 in logits).
CAM_TOLERANCE = {"eager": 1e-5, "onnx": 1e-4}
EMBEDDING_TOLERANCE = {"eager": 1e-6, "onnx": 1e-5}  # absolute, per component of the unit vector


@pytest.fixture(scope="module", params=["onnx", "eager"])
def engine_handler(request: pytest.FixtureRequest, seeing_model_dir: Path) -> ImageClassifierHandler:
    service = ImageClassifierHandler()
    service.initialize(make_context(seeing_model_dir, [{}], engine=request.param))
    return service


def ask(handler: ImageClassifierHandler, model_dir: Path, images: list[bytes], headers: dict[str, str]) -> list:
    context = make_context(model_dir, [headers] * len(images), engine=handler.engine.name)
    return handler.handle([{"body": bytearray(image)} for image in images], context)


def torch_maps(reference: Reference, data: bytes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layer4 output (2048, 7, 7), avgpool output (2048,), logits) of the reference pipeline, by forward hooks."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(reference.model, name).register_forward_hook(lambda _m, _i, out, n=name: seen.update({n: out}))
        for name in ("layer4", "avgpool")
    ]
    try:
        with torch.inference_mode():
            logits = reference.model(reference_input(data)[None])[0]
    finally:
        for hook in hooks:
            hook.remove()
    return seen["layer4"][0], seen["avgpool"][0].flatten(), logits


def reference_cam(reference: Reference, data: bytes, class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The class activation map of `class_id` by torch, and the size of its terms (sum of |weight x feature|)."""
    features, _, _ = torch_maps(reference, data)
    weight = reference.model.fc.weight.detach()[class_id]
    terms = torch.einsum("k,kij->ij", weight.abs(), features.abs())
    return torch.relu(torch.einsum("k,kij->ij", weight, features)).numpy(), terms.numpy()


PHOTOS = ["chelsea", "astronaut", "coffee", "stereo_motorcycle"]


@pytest.mark.parametrize("name", PHOTOS)
def test_cam_equals_the_torch_reference(
    engine_handler, seeing_model_dir: Path, seeing_model: Reference, name: str
) -> None:
    data = photo(name)
    [result] = ask(
        engine_handler, seeing_model_dir, [data], {"X-Output": "cam", "X-Top-K": "3", "X-Explain-Classes": "0"}
    )
    classes = [e["class_id"] for e in result["explanations"]]
    assert classes == [p["class_id"] for p in result["predictions"]] + [0]
    for explanation in result["explanations"]:
        cam = np.asarray(explanation["cam"])
        expected, terms = reference_cam(seeing_model, data, explanation["class_id"])
        assert cam.shape == (7, 7) and cam.min() >= 0
        assert (np.abs(cam - expected) <= CAM_TOLERANCE[engine_handler.engine.name] * terms).all()
    top = result["explanations"][0]
    assert top["cam"] and np.asarray(top["cam"]).max() > 0  # the top class was seen somewhere


def decode_vector(encoded: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(encoded), dtype="<f4")


@pytest.mark.parametrize("name", PHOTOS)
def test_embedding_equals_torchvisions_avgpool(
    engine_handler, seeing_model_dir: Path, seeing_model: Reference, name: str
) -> None:
    data = photo(name)
    [result] = ask(engine_handler, seeing_model_dir, [data], {"X-Output": "embedding"})
    vector = decode_vector(result["embedding"])
    _, pooled, _ = torch_maps(seeing_model, data)
    expected = (pooled / pooled.norm()).numpy()
    assert vector.shape == (2048,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    assert np.abs(vector - expected).max() < EMBEDDING_TOLERANCE[engine_handler.engine.name]


def test_a_mixed_batch_fetches_what_each_request_asked(engine_handler, seeing_model_dir: Path) -> None:
    images = [photo("coffee"), photo("rocket"), photo("coins")]
    headers = [{"X-Output": "embedding"}, {}, {"X-Output": "cam,embedding", "X-Top-K": "2"}]
    context = make_context(seeing_model_dir, headers, engine=engine_handler.engine.name)
    results = engine_handler.handle([{"body": bytearray(image)} for image in images], context)
    assert "embedding" in results[0] and "explanations" not in results[0]
    assert "embedding" not in results[1] and "explanations" not in results[1]
    assert "embedding" in results[2] and len(results[2]["explanations"]) == 2
    alone = ask(engine_handler, seeing_model_dir, [images[1]], {})[0]
    assert [p["class_id"] for p in alone["predictions"]] == [p["class_id"] for p in results[1]["predictions"]]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Output": "pixels"},
        {"X-Output": "cam", "X-Explain-Classes": "1000"},
        {"X-Output": "cam", "X-Explain-Classes": "cat"},
    ],
)
def test_bad_extras_are_per_item_errors(engine_handler, seeing_model_dir: Path, headers: dict) -> None:
    context = make_context(seeing_model_dir, [headers, {}], engine=engine_handler.engine.name)
    results = engine_handler.handle([{"body": bytearray(photo("coins"))}] * 2, context)
    assert results[0]["error"]["code"] == "bad_output" and context.get_response_status(0)[0] == 422
    assert results[1]["predictions"] and context.get_response_status(1)[0] == 200


def reference_crop(width: int, height: int) -> list[float]:
    """The crop of torchvision's Resize(232) + CenterCrop(224) in the original's pixels: the resized size is
    Resize's own, the offsets are read off CenterCrop's output on an image whose pixels hold their index, and
    Pillow's resize maps the whole original onto the whole resized image."""
    resized = Resize(232)(Image.new("L", (width, height)))
    index = np.arange(resized.width * resized.height, dtype=np.int32).reshape(resized.height, resized.width)
    first, last = np.asarray(CenterCrop(224)(Image.fromarray(index, "I")))[[0, -1], [0, -1]]
    top, left = divmod(int(first), resized.width)
    bottom, right = divmod(int(last), resized.width)
    sx, sy = width / resized.width, height / resized.height
    return [left * sx, top * sy, (right + 1) * sx, (bottom + 1) * sy]


def sampled_crop(width: int, height: int) -> list[float]:
    """The same box measured instead: Resize + CenterCrop of images whose pixels hold their own x (or y) centre;
    the crop's first and last pixels show where it lies (to about 0.05 px: bilinear weights are sampled)."""

    def span(along: int, across: int, axis: int) -> tuple[float, float]:
        ramp = np.broadcast_to((np.arange(along, dtype=np.float32) + 0.5), (across, along))
        img = Image.fromarray(np.ascontiguousarray(ramp if axis == 0 else ramp.T), "F")
        crop = np.asarray(CenterCrop(224)(Resize(232)(img)))
        line = crop[112, :] if axis == 0 else crop[:, 112]
        step = (float(line[-1]) - float(line[0])) / 223  # original pixels per model pixel
        return float(line[0]) - step / 2, float(line[-1]) + step / 2

    (left, right), (top, bottom) = span(width, height, 0), span(height, width, 1)
    return [left, top, right, bottom]


def scene(width: int, height: int) -> Image.Image:
    return picture("chelsea").resize((width, height), Image.Resampling.BICUBIC)


# (what is sent, the upright size): landscape, portrait, and photos stored sideways with an EXIF orientation.
PLACEMENTS = {
    "landscape": (encode(scene(640, 427), "JPEG", quality=90), (640, 427)),
    "portrait": (encode(scene(300, 533), "PNG"), (300, 533)),
    "exif-6-portrait": (stored_with_orientation(scene(427, 640), 6), (427, 640)),
    "exif-8-landscape": (stored_with_orientation(scene(801, 450), 8), (801, 450)),
    "small": (encode(scene(150, 97), "PNG"), (150, 97)),
}


@pytest.mark.parametrize("case", PLACEMENTS)
def test_crop_box_is_the_reference_pipelines_crop(engine_handler, seeing_model_dir: Path, case: str) -> None:
    data, (width, height) = PLACEMENTS[case]
    [result] = ask(engine_handler, seeing_model_dir, [data], {"X-Output": "cam", "X-Top-K": "1"})
    geometry = result["geometry"]
    assert (geometry["width"], geometry["height"]) == (width, height)
    assert geometry["crop"] == pytest.approx(reference_crop(width, height), abs=1e-9)
    assert geometry["crop"] == pytest.approx(sampled_crop(width, height), abs=0.1)
    left, top, right, bottom = geometry["crop"]
    assert 0 <= left < right <= width and 0 <= top < bottom <= height


INT8_MIN_COSINE = 0.98  # the INT8 engine's embeddings against fp32's (measured 0.985-0.989 on the 12 photos)


@pytest.fixture(scope="module")
def int8_handler(seeing_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The test model's archive with its INT8 graph, quantised by the build's own code on the test photos."""
    model_dir = tmp_path_factory.mktemp("int8_model_dir")
    shutil.copytree(seeing_model_dir, model_dir, dirs_exist_ok=True)
    calibration = np.stack([preprocess(decode(photo(name), 10**8)) for name in PHOTO_LABELS])
    quantize(model_dir / ONNX_FILE, model_dir / INT8_ONNX_FILE, calibration)
    service = ImageClassifierHandler()
    service.initialize(make_context(model_dir, [{}], engine="onnx-int8"))
    return service, model_dir


def test_int8_gives_embeddings_close_to_fp32_and_refuses_maps(int8_handler: tuple, seeing_model_dir: Path) -> None:
    int8_handler, model_dir = int8_handler
    fp32 = ImageClassifierHandler()
    fp32.initialize(make_context(seeing_model_dir, [{}], engine="onnx"))
    assert int8_handler.describe()["outputs"] == ["embedding"] and fp32.describe()["outputs"] == ["embedding", "cam"]
    for name in PHOTO_LABELS:
        data = photo(name)
        [quantised] = ask(int8_handler, model_dir, [data], {"X-Output": "embedding"})
        [exact] = ask(fp32, seeing_model_dir, [data], {"X-Output": "embedding"})
        cosine = float(decode_vector(quantised["embedding"]) @ decode_vector(exact["embedding"]))
        assert cosine >= INT8_MIN_COSINE, (name, cosine)
    context = make_context(model_dir, [{"X-Output": "cam"}], engine="onnx-int8")
    [refused] = int8_handler.handle([{"body": bytearray(photo("coins"))}], context)
    assert refused["error"]["code"] == "unsupported_output" and context.get_response_status(0)[0] == 422
    assert "INT8" in refused["error"]["detail"] and "onnx" in refused["error"]["detail"]
