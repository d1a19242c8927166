"""contract/ (wire.py, formats.py, bounds.py), the declarations the gateway and the handler share: the
formats agree with Pillow, both sides word and classify refusals as before, the config files serve the model
under the contract's name."""

from __future__ import annotations

import io
import re
from typing import get_args

import pytest
from imagegen import in_format
from PIL import Image

from contract.bounds import RefusalCode
from contract.formats import ACCEPTED_FORMATS, IMAGE_FORMATS, IMAGE_SUFFIXES, sniffed_format
from contract.wire import MODEL_NAME
from gateway.problems import CATALOGUE, Problem
from gateway.validation import REFUSAL_TYPES, sniff
from handlers.imaging import ImageError, decode
from modelserver.paths import REPO_ROOT

REPO = REPO_ROOT
SEND = "send JPEG, PNG, WebP, GIF, BMP or TIFF"


def test_the_accepted_formats_and_suffixes() -> None:
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"} == ACCEPTED_FORMATS
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} == IMAGE_SUFFIXES


@pytest.mark.parametrize("fmt", IMAGE_FORMATS, ids=lambda fmt: fmt["name"])
def test_each_format_is_sniffed_and_named_as_pillow_does(fmt) -> None:
    data = in_format(fmt["name"])
    assert sniffed_format(data) == sniff(data) == fmt["name"]
    assert Image.open(io.BytesIO(data)).format == fmt["name"]
    assert all(Image.registered_extensions()[suffix] == fmt["name"] for suffix in fmt["suffixes"])


def test_refusals_are_worded_as_before() -> None:
    ppm = in_format("PPM")
    with pytest.raises(ImageError) as handler_refusal:
        decode(ppm, 40_000_000)
    assert (handler_refusal.value.code, handler_refusal.value.detail) == (
        "unsupported_format",
        f"format PPM is not accepted; {SEND}",
    )
    for data, detail in [
        (ppm, f"the bytes are not a supported image; {SEND}"),
        (b"RIFF\x24\x00\x00\x00AVI LIST", f"RIFF data that is not WebP; {SEND}"),
        (b"RIFF\x24\x00\x00\x00WEBx", f"RIFF data that is not WebP; {SEND}"),
    ]:
        with pytest.raises(Problem) as gateway_refusal:
            sniff(data)
        assert (gateway_refusal.value.slug, gateway_refusal.value.detail) == ("unsupported-media-type", detail)


def test_every_bounds_refusal_has_its_problem_type() -> None:
    assert set(REFUSAL_TYPES) == set(get_args(RefusalCode))
    assert REFUSAL_TYPES == {
        "extreme_aspect_ratio": "image-too-large",
        "too_many_scans": "invalid-image",
        "too_fragmented": "invalid-image",
    }
    assert set(REFUSAL_TYPES.values()) <= set(CATALOGUE)


def test_config_files_serve_the_model_under_the_contracts_name() -> None:
    archive = f"{MODEL_NAME}.mar"
    for name in ("config.properties", "config.container.properties"):
        loads = re.findall(r"^load_models=(.*)$", (REPO / name).read_text(), re.MULTILINE)
        assert loads == [f"{MODEL_NAME}={archive}"], name
    assert re.findall(r"^MAR := (.*)$", (REPO / "Makefile").read_text(), re.MULTILINE) == [f"model_store/{archive}"]
    dockerfile = (REPO / "Dockerfile.serve").read_text()
    archives = re.findall(r"[\w.-]+\.mar\b", dockerfile)
    assert len(archives) >= 2 and set(archives) == {archive}, archives
