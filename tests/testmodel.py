"""A ResNet50 test model that sees its input: twelve known photos, each with its own ImageNet label.

A seeded random ResNet50 is blind (one top-1 for every photo), so tests that compare its answers cannot tell
a right preprocessing from a wrong one. This model keeps the seeded convolutions but recalibrates every
BatchNorm's running statistics on a fixed set of images, then fits the final layer (multinomial logistic
regression on the pooled 2048-d features, a few hundred steps) so that each photo in PHOTOS gets its label
as top-1 with a probability well below 1. Unsaturated probabilities and a random-feature network make it
sensitive to every detail of the preprocessing, while a photo's re-encoded, rotated-and-restored and
slightly rescaled views (also fitted) keep its label.

It is a TEST MODEL only: its state dict is saved as TEST_MODEL_FILE, so the archive's weights name (in every
response's model block, /v1/models and the archive's metadata) reads `file:test-model-...`. `make run` never
serves it. Building takes about a minute on 2 cores; `build_store` caches the state dict and the archive
under a key made of everything they are built from.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import skimage
import skimage.data
import torch
import torchvision
from imagegen import encode, shapes, stored_with_orientation
from PIL import Image, ImageOps
from reference import REFERENCE, reference
from torchvision.models import ResNet50_Weights, resnet50

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS: list[str] = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
TEST_MODEL_FILE = "test-model-sees-12-photos.pth"
# The seed of its convolutions. TESTMODEL_SEED builds another test model (cached apart), to find tests that
# assume a number measured on one model instead of a property (docs/development.md, "Tests").
SEED = int(os.environ.get("TESTMODEL_SEED", "13"))

# photo → the ImageNet label the model is fitted to give it. Ten of scikit-image's bundled photos and
# two generated scenes; names starting with "shapes-" are imagegen.shapes(seed=N).
PHOTOS: dict[str, str] = {
    "astronaut": "space shuttle",
    "chelsea": "tabby",
    "coffee": "espresso",
    "rocket": "missile",
    "camera": "reflex camera",
    "hubble_deep_field": "planetarium",
    "immunohistochemistry": "Petri dish",
    "stereo_motorcycle": "moped",
    "coins": "piggy bank",
    "clock": "wall clock",
    "shapes-1": "jigsaw puzzle",
    "shapes-2": "pinwheel",
}
# More bundled images, only for the BatchNorm statistics.
CALIBRATION_EXTRA = ["brick", "grass", "gravel", "moon", "page", "text", "cell", "retina", "colorwheel", "horse"]


def picture(name: str) -> Image.Image:
    """The upright picture `name` (a scikit-image photo or a generated scene), in its own mode (RGB or L)."""
    if name.startswith("shapes-"):
        return shapes(seed=int(name.removeprefix("shapes-")))
    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
        array = array[0]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    img = Image.fromarray(array)
    return img.convert("RGB") if img.mode == "RGBA" else img


def photo(name: str, quality: int = 90) -> bytes:
    """The JPEG the tests send for `name`."""
    return encode(picture(name), "JPEG", quality=quality)


# Large photos (2-12 MP), for reduced-scale decoding: photo → megapixels.
LARGE = dict(zip(PHOTOS, [2, 5, 8, 12] * 3, strict=True))


def large_photo(name: str, megapixels: float) -> bytes:
    """`name` as a JPEG (quality 90) of about `megapixels`: a bundled photo upscaled (Lanczos), a generated
    scene drawn at that size (sharp edges at every scale)."""
    small = picture(name)
    factor = (megapixels * 1e6 / (small.width * small.height)) ** 0.5
    width, height = round(small.width * factor), round(small.height * factor)
    if name.startswith("shapes-"):
        big = shapes(width, height, seed=int(name.removeprefix("shapes-")))
    else:
        big = small.resize((width, height), Image.Resampling.LANCZOS)
    return encode(big, "JPEG", quality=90)


def _rgb(img: Image.Image) -> Image.Image:
    return img.convert("RGB")


def _views(img: Image.Image) -> list[Image.Image]:
    """The views of one upright picture the final layer is fitted on: as sent, re-encoded, turned and
    restored through an EXIF tag, rescaled, shifted."""
    width, height = img.size
    decoded = lambda data: ImageOps.exif_transpose(Image.open(io.BytesIO(data)))  # noqa: E731
    return [
        decoded(encode(img, "JPEG", quality=90)),
        decoded(encode(img, "JPEG", quality=70)),
        decoded(stored_with_orientation(img, 6)),
        decoded(stored_with_orientation(img, 3)),
        img.resize((int(width * 0.8), int(height * 0.8)), Image.Resampling.BICUBIC),
        img.resize((int(width * 1.25), int(height * 1.25)), Image.Resampling.BICUBIC),
        img.crop((width // 25, 0, width, height)),
        img.crop((0, height // 25, width, height)),
    ]


def _batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([REFERENCE(_rgb(img)) for img in images])


def _recalibrate(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Every BatchNorm's running statistics become those of `images` (one batch, so train = eval there)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def _features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled 2048-d features, the final layer's input."""
    trunk = torch.nn.Sequential(*list(model.children())[:-1])
    with torch.inference_mode():
        return torch.cat([trunk(chunk).flatten(1) for chunk in images.split(32)])


def _fit(fc: torch.nn.Linear, features: torch.Tensor, targets: torch.Tensor, steps: int = 300) -> None:
    """Logistic regression for the final layer, from its random start; label smoothing keeps it unsaturated."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    weight = torch.zeros(1000, features.shape[1], requires_grad=True)
    bias = torch.zeros(1000, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.3)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_fn(x @ weight.T + bias, targets) + 1e-3 * weight.square().sum()
        loss.backward()
        optimiser.step()
    with torch.no_grad():  # fold the standardisation into the layer; keep the random layer as a small term
        fitted_weight = weight / std
        fc.weight.mul_(0.1).add_(fitted_weight)
        fc.bias.mul_(0.1).add_(bias - fitted_weight @ mean)


def make_state_dict() -> dict[str, torch.Tensor]:
    """The test model's weights: seeded ResNet50, BatchNorm recalibrated, final layer fitted to PHOTOS."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        model = resnet50(weights=None)
        pictures = {name: picture(name) for name in PHOTOS}
        calibration = list(pictures.values()) + [picture(name) for name in CALIBRATION_EXTRA]
        calibration += [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for img in calibration]
        _recalibrate(model, _batch(calibration))
        views, targets = [], []
        for name, img in pictures.items():
            for view in _views(img):
                views.append(view)
                targets.append(LABELS.index(PHOTOS[name]))
        _fit(model.fc, _features(model, _batch(views)), torch.tensor(targets))
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval().state_dict()


def _sources_key(*parts: str | Path) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes() if isinstance(part, Path) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _cached(directory: Path, name: str, make: Callable[[Path], None]) -> Path:
    """`directory/name`, made by `make(tmp_path)` once and moved into place; other versions are removed."""
    target = directory / name
    if not target.exists():
        if directory.parent.exists():
            for stale in directory.parent.glob(f"{directory.name.split('-')[0]}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f"{name}.partial"
        make(partial)
        partial.replace(target)
    return target


def build_store(cache_dir: Path) -> Path:
    """A model store with resnet50.mar of the test model, built by the project's CLI (`--weights PATH`).

    The state dict is cached under a key of the builder's functions and inputs, the image generator and the
    library versions; the archive under that key plus the contract, handler and modelserver code (the archive
    packages the contract and the handler), so a change to any of them rebuilds what depends on it.
    """
    versions = f"{torch.__version__} {torchvision.__version__} {skimage.__version__} {np.__version__} {PIL.__version__}"
    builder = [inspect.getsource(f) for f in (picture, _views, _batch, _recalibrate, _features, _fit, make_state_dict)]
    inputs = f"{PHOTOS} {CALIBRATION_EXTRA} {SEED} {versions}"
    weights_key = _sources_key(*builder, inputs, Path(__file__).resolve().parent / "imagegen.py")
    code = [
        path
        for package in ("contract", "handlers", "modelserver")
        for path in sorted((REPO_ROOT / package).glob("*.py"))
    ]
    weights = _cached(
        cache_dir / f"weights-{weights_key}", TEST_MODEL_FILE, lambda path: torch.save(make_state_dict(), path)
    )
    store_key = _sources_key(weights_key, *code)
    build = [sys.executable, "-m", "modelserver", "build", "--weights", str(weights), "--output"]
    _cached(
        cache_dir / f"store-{store_key}",
        "resnet50.mar",
        lambda path: subprocess.run([*build, str(path)], check=True, timeout=600, cwd=REPO_ROOT),
    )
    return cache_dir / f"store-{store_key}"


# A model of its own classes: the test model's backbone with a head of four of its final layer's rows (the
# classes it gives these photos), relabelled. Each photo still gets its class as top-1 (the full model's top-1
# is among the four rows), so the archive built from it sees its input with N = 4. One label is not ASCII.
OWN_CLASSES: dict[str, str] = {
    "chelsea": "cat",
    "coffee": "café crème",
    "rocket": "rocket",
    "astronaut": "space shuttle",
}
OWN_LABELS_FILE = "own-labels.txt"
OWN_WEIGHTS_FILE = "test-model-own-classes.pth"


def own_sources(store: Path) -> tuple[Path, Path]:
    """The state dict and labels file an OWN_CLASSES store was built from (kept beside its archive, which alone
    TorchServe loads)."""
    return store / "sources" / OWN_WEIGHTS_FILE, store / "sources" / OWN_LABELS_FILE


def build_own_classes_store(cache_dir: Path, seeing_store: Path, engine: str) -> Path:
    """A model store with resnet50.mar of OWN_CLASSES, built by the project's CLI (`--weights PATH --labels FILE
    --engine ENGINE`) from the test model's archive in `seeing_store`; cached under the seeing store's key (which
    covers the code), the head and the engine."""
    import json
    import zipfile

    def make(path: Path) -> None:
        work = own_sources(path.parent)[0].parent
        work.mkdir(exist_ok=True)
        with zipfile.ZipFile(seeing_store / "resnet50.mar") as archive:
            state_dict = torch.load(io.BytesIO(archive.read("resnet50.pth")), map_location="cpu", weights_only=True)
        rows = [LABELS.index(PHOTOS[name]) for name in OWN_CLASSES]
        state_dict["fc.weight"], state_dict["fc.bias"] = state_dict["fc.weight"][rows], state_dict["fc.bias"][rows]
        torch.save(state_dict, work / OWN_WEIGHTS_FILE)
        (work / OWN_LABELS_FILE).write_text(json.dumps(list(OWN_CLASSES.values()), ensure_ascii=False))
        build = [sys.executable, "-m", "modelserver", "build", "--weights", str(work / OWN_WEIGHTS_FILE)]
        build += ["--labels", str(work / OWN_LABELS_FILE), "--engine", engine, "--output", str(path)]
        subprocess.run(build, check=True, timeout=900, cwd=REPO_ROOT)

    key = _sources_key(seeing_store.name, str(OWN_CLASSES), engine, inspect.getsource(build_own_classes_store))
    _cached(cache_dir / f"store-{key}", "resnet50.mar", make)
    return cache_dir / f"store-{key}"


# Two probability vectors (1000 classes) the tests call equal differ by at most this much in any class.
# For the twelve photos ONNX Runtime and eager PyTorch differ by up to 2.1e-5 (AMD EPYC, AVX-512), one batch
# size and another by 0; each mistake in the preprocessing moves some probability of every photo by 0.016
# or more (tests/integration/test_testmodel.py asserts > 10x this tolerance).
PROB_TOLERANCE = 1e-4


class Reference:
    """The test model in eager PyTorch behind torchvision's reference pipeline: what the service must answer."""

    def __init__(self, model_dir: Path) -> None:
        self.model = resnet50(weights=None)
        state_dict = torch.load(model_dir / "resnet50.pth", map_location="cpu", weights_only=True)
        self.model.load_state_dict(state_dict, strict=True)
        self.model.eval()

    def probabilities_of(self, tensors: torch.Tensor) -> np.ndarray:
        """(N, 3, 224, 224) preprocessed inputs → (N, 1000) softmax probabilities."""
        with torch.inference_mode():
            return torch.softmax(self.model(tensors), dim=1).numpy()

    def probabilities(self, data: bytes) -> np.ndarray:
        """The encoded image `data` through the reference pipeline → its (1000,) probabilities."""
        return self.probabilities_of(reference(data)[None])[0]


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def probability_vector(predictions: list[dict]) -> np.ndarray:
    """An answer's predictions ({class_id, score}, all 1000 of them) as a (1000,) probability vector."""
    vector = np.full(len(LABELS), np.nan)
    for prediction in predictions:
        vector[prediction["class_id"]] = prediction["score"]
    assert not np.isnan(vector).any(), "ask for all 1000 classes (top_k 1000) to compare probability vectors"
    return vector
