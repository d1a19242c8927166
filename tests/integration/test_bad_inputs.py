"""A corpus of hostile and broken uploads: each gets a 4xx problem+json, never a 5xx, and the gateway lives on."""

from __future__ import annotations

import io
import os
import time
import zipfile

import httpx
import pytest
from imagegen import (
    FRAGMENTED,
    fragmented,
    jpeg,
    png,
    png_claiming,
    scan_repeated_jpeg,
    thin_png,
    truncated_jpeg,
)
from PIL import Image, ImageFile
from support import Gateway, assert_problem, post
from testmodel import PHOTOS, photo

from gateway.problems import PROBLEM_JSON, Problem
from gateway.settings import Settings
from gateway.validation import check_image
from modelserver.torchserve import TorchServe, ready_workers


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 frame header claims `width`x`height`."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def bad_png_crc() -> bytes:
    data = bytearray(png(32, 32))
    data[29] ^= 0xFF  # inside the IHDR CRC
    return bytes(data)


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("a.txt", "hello")
    return buf.getvalue()


def header_only_jpeg() -> bytes:
    data = jpeg(64, 64)
    return data[: data.index(b"\xff\xda")]  # everything up to the start of scan


CORPUS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "image/jpeg"),
    "random-bytes": (os.urandom(2048), "image/jpeg"),
    "text": (b"just some text, honestly", "image/png"),
    "html": (b"<!doctype html><html><body><script>alert(1)</script></body></html>", "image/jpeg"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', "image/svg+xml"),
    "pdf": (b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "image/jpeg"),
    "zip": (zip_bytes(), "image/png"),
    "elf": (b"\x7fELF\x02\x01\x01" + bytes(200), "image/jpeg"),
    "truncated-jpeg": (truncated_jpeg(), "image/jpeg"),
    "header-only-jpeg": (header_only_jpeg(), "image/jpeg"),
    "jpeg-magic-only": (b"\xff\xd8\xff", "image/jpeg"),
    "bad-png-crc": (bad_png_crc(), "image/png"),
    "png-30000x30000": (png_claiming(30000, 30000), "image/png"),
    "png-65535x65535": (png_claiming(65535, 65535), "image/png"),
    "png-0x0": (png_claiming(0, 0), "image/png"),
    "png-100000x1": (png_claiming(100000, 1), "image/png"),
    "jpeg-30000x30000": (jpeg_claiming(30000, 30000), "image/jpeg"),
    "jpeg-65500x65500": (jpeg_claiming(65500, 65500), "image/jpeg"),
    "png-magic-then-garbage": (b"\x89PNG\r\n\x1a\n" + os.urandom(300), "image/png"),
    "gif-magic-only": (b"GIF89a", "image/gif"),
    "riff-not-webp": (b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(64), "image/webp"),
    "bmp-magic-then-garbage": (b"BM" + os.urandom(100), "image/bmp"),
    "tiff-magic-then-garbage": (b"II*\x00" + os.urandom(100), "image/tiff"),
    "polyglot-jpeg-then-zip": (jpeg(32, 32)[:200] + zip_bytes(), "image/jpeg"),
    "polyglot-gif-js": (b"GIF89a/*\x00\x00*/=alert(1);", "image/gif"),
    "html-lying-as-png": (b"<html>" + bytes(100), "image/png"),
    "png-as-text-plain": (png(), "text/plain"),
    "json-body": (b'{"image": "nope"}', "application/json"),
    "ico": (b"\x00\x00\x01\x00\x01\x00\x10\x10" + bytes(64), "image/x-icon"),
    "thin-png-20000x1": (thin_png(20000, 1), "image/png"),
    "thin-png-1x20000": (thin_png(1, 20000), "image/png"),
    "scan-repeated-jpeg": (scan_repeated_jpeg(3000), "image/jpeg"),
    **{f"fragmented-{fmt.lower()}": (fragmented(fmt), f"image/{fmt.lower()}") for fmt in FRAGMENTED},
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_input_is_a_4xx_problem(gateway: Gateway, api_key: str, name: str) -> None:
    data, content_type = CORPUS[name]
    for response in (
        post(gateway, api_key, content=data, headers={"Content-Type": content_type}),
        post(gateway, api_key, files={"file": (f"{name}.bin", data, content_type)}),
    ):
        if name == "png-as-text-plain" and response.request.headers["content-type"].startswith("multipart"):
            assert response.status_code == 200  # the bytes are a real PNG; the declared type is ignored
            continue
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        assert "Traceback" not in response.text


def test_oversized_body_is_413(gateway: Gateway, api_key: str) -> None:
    body = os.urandom(8 * 1024 * 1024 + 1)
    assert_problem(
        post(gateway, api_key, content=body, headers={"Content-Type": "image/jpeg"}), 413, "payload-too-large"
    )
    assert_problem(post(gateway, api_key, files={"file": ("big.jpg", body, "image/jpeg")}), 413, "payload-too-large")


def test_chunked_upload_without_length_is_capped(gateway: Gateway, api_key: str) -> None:
    def chunks():
        for _ in range(20):
            yield os.urandom(512 * 1024)

    response = post(gateway, api_key, content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload-too-large")


def test_huge_dimensions_in_a_header_are_refused(gateway: Gateway, api_key: str) -> None:
    body = assert_problem(
        post(gateway, api_key, content=png_claiming(30000, 30000), headers={"Content-Type": "image/png"}),
        413,
        "image-too-large",
    )
    assert "pixels" in body["detail"]


def test_dimension_checks_decode_no_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's checks read sizes from the header only: Pillow's pixel decoder (ImageFile.load, which
    every decode goes through) is never called, for a bomb's header nor for an image that is accepted."""
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> object:
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    Image.open(io.BytesIO(png(16, 16))).convert("RGB")
    assert (16, 16) in decoded, "the spy must see a decode"
    decoded.clear()
    with pytest.raises(Problem) as refused:
        check_image(png_claiming(30000, 30000), Settings())
    assert refused.value.slug == "image-too-large"
    assert check_image(jpeg(64, 48), Settings()).width == 64
    assert decoded == []


def test_gateway_still_serves_after_the_corpus(gateway: Gateway, api_key: str) -> None:
    for data, content_type in CORPUS.values():
        post(gateway, api_key, content=data, headers={"Content-Type": content_type})
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200
    response = post(gateway, api_key, content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200


# --- the costs of one image bounded (contract/bounds.py; docs/model.md, "The handler") --------------------------------


@pytest.mark.parametrize("size", [(20000, 1), (1, 20000), (20000, 2), (2, 20000), (201, 1)])
def test_thin_images_are_refused_before_forwarding(gateway: Gateway, api_key: str, size: tuple[int, int]) -> None:
    """A few hundred bytes whose resize to 232 px on the shorter side would be gigabytes (20000x1: 4,640,000x232)."""
    response = post(gateway, api_key, content=thin_png(*size), headers={"Content-Type": "image/png"})
    body = assert_problem(response, 413, "image-too-large")
    assert body["code"] == "extreme_aspect_ratio" and "200:1" in body["detail"]


def test_the_thinnest_accepted_shape_is_classified(gateway: Gateway, api_key: str) -> None:
    for size in ((200, 1), (1, 200)):
        response = post(gateway, api_key, content=thin_png(*size), headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text


def test_scan_repeated_jpeg_is_refused_before_forwarding(gateway: Gateway, api_key: str) -> None:
    """3,000 scans of a 1000x1000 progressive JPEG (40 KB) cost libjpeg seconds; more than 100 are refused."""
    response = post(gateway, api_key, content=scan_repeated_jpeg(3000), headers={"Content-Type": "image/jpeg"})
    body = assert_problem(response, 422, "invalid-image")
    assert body["code"] == "too_many_scans"


@pytest.mark.parametrize("fmt", FRAGMENTED)
def test_fragmented_images_are_refused(gateway: Gateway, api_key: str, fmt: str) -> None:
    """25,000 empty pieces that Pillow reads one by one: refused by the gateway where its header parse reads
    them (PNG chunks and GIF extensions before the image, JPEG padding) or the JPEG scan count walks them (COM
    segments after the scan), else by the handler."""
    response = post(gateway, api_key, content=fragmented(fmt), headers={"Content-Type": "image/png"})
    body = assert_problem(response, 422, "invalid-image")
    assert body["code"] == "too_fragmented"


def test_torchserve_itself_refuses_costly_images_and_stays_ready(torchserve: TorchServe) -> None:
    """Ops may call TorchServe directly: the handler applies the same bounds before decoding, answers 422 at
    once, and the worker is free for the next request."""
    auth = {"Authorization": f"Bearer {torchserve.keys()['inference']}"}
    url = f"{torchserve.inference_url}/predictions/resnet50"
    hostile = {
        "extreme_aspect_ratio": thin_png(20000, 1),
        "too_many_scans": scan_repeated_jpeg(3000),
        "too_fragmented": fragmented("PNG-IDAT"),
    }
    for code, data in hostile.items():
        response = httpx.post(url, content=data, headers=auth, timeout=60)
        assert response.status_code == 422, (code, response.status_code, response.text)
        assert response.json()["error"]["code"] == code
    started = time.monotonic()
    name = next(iter(PHOTOS))
    response = httpx.post(url, content=photo(name), headers=auth, timeout=60)
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == PHOTOS[name]
    assert time.monotonic() - started < 10, "a loose bound: the worker was not left busy"
    assert ready_workers(torchserve.management_url, torchserve.key_file) >= 1
