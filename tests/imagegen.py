"""Test images generated on the fly: every format and Pillow mode we accept, EXIF orientations, odd sizes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

from contract.formats import IMAGE_FORMATS

RNG_SEED = 7


def gradient(width: int, height: int, seed: int = RNG_SEED) -> Image.Image:
    """A deterministic RGB image with structure (gradients + noise), so resizing is actually exercised."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    base = np.concatenate(
        [np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)), (x + y) / 2 % 256], axis=2
    )
    noisy = base + rng.normal(0, 20, size=(height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def jpeg(width: int = 320, height: int = 240, seed: int = RNG_SEED, quality: int = 90) -> bytes:
    return encode(gradient(width, height, seed), "JPEG", quality=quality)


def png(width: int = 320, height: int = 240, seed: int = RNG_SEED) -> bytes:
    return encode(gradient(width, height, seed), "PNG")


def with_orientation(orientation: int, width: int = 300, height: int = 200) -> bytes:
    """A JPEG whose EXIF Orientation tag is `orientation` (1-8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(gradient(width, height, seed=orientation), "JPEG", quality=92, exif=exif.tobytes())


def in_mode(mode: str, width: int = 257, height: int = 311) -> tuple[str, bytes]:
    """An image in Pillow `mode`, saved in a format that keeps that mode; returns (format, bytes)."""
    rgb = gradient(width, height)
    if mode == "1":
        return "PNG", encode(rgb.convert("1"), "PNG")
    if mode == "L":
        return "PNG", encode(rgb.convert("L"), "PNG")
    if mode == "LA":
        la = rgb.convert("LA")
        la.putalpha(Image.linear_gradient("L").resize(rgb.size))
        return "PNG", encode(la, "PNG")
    if mode == "P":
        pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        return "PNG", encode(pal, "PNG", transparency=0)
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").rotate(90).resize(rgb.size))
        return "PNG", encode(rgba, "PNG")
    if mode == "CMYK":
        return "JPEG", encode(rgb.convert("CMYK"), "JPEG", quality=90)
    if mode == "I;16":
        wide = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        return "PNG", encode(Image.frombytes("I;16", rgb.size, wide.astype("<u2").tobytes()), "PNG")
    if mode == "RGB":
        return "PNG", encode(rgb, "PNG")
    raise ValueError(mode)


MODES = ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"]


def in_format(fmt: str, width: int = 300, height: int = 260) -> bytes:
    img = gradient(width, height)
    if fmt == "GIF":
        frames = [img.convert("P", palette=Image.Palette.ADAPTIVE), gradient(width, height, seed=99).convert("P")]
        return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    if fmt == "WEBP":
        return encode(img, "WEBP", quality=90)
    if fmt == "TIFF":
        return encode(img, "TIFF", compression="tiff_lzw")
    return encode(img, fmt)


FORMATS = [fmt["name"] for fmt in IMAGE_FORMATS]  # pinned in tests/unit/test_contract.py


def truncated_jpeg() -> bytes:
    data = jpeg(200, 150)
    return data[: len(data) // 2]


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR claims `width`x`height` (CRC fixed up): a decompression bomb's header."""
    data = bytearray(png(16, 16))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = crc.to_bytes(4, "big")
    return bytes(data)


def shapes(width: int = 480, height: int = 360, seed: int = RNG_SEED) -> Image.Image:
    """A deterministic RGB picture of coloured ellipses and boxes on a tinted ground: each seed a different scene."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 14))):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1 + 8, y1 + 8), fill=fill)
    return img


# How Pillow's ImageOps.exif_transpose turns stored pixels upright, per EXIF Orientation (2-8); each
# storing transform below is the inverse, so the stored JPEG displays the original upright.
_STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_with_orientation(upright: Image.Image, orientation: int, quality: int = 92) -> bytes:
    """A JPEG whose pixels are stored turned and whose EXIF Orientation tag turns them back to `upright`."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(_STORE[orientation]) if orientation in _STORE else upright
    return encode(stored, "JPEG", quality=quality, exif=exif.tobytes())


# --- hostile shapes (issue 18): cheap to send, costly to decode or resize without the bounds of contract/bounds.py


def thin_png(width: int = 20000, height: int = 1) -> bytes:
    """A flat grey PNG of a few hundred bytes; at 20000x1 its resize to 232 px high is 4,640,000x232."""
    return encode(Image.new("L", (width, height), 128), "PNG")


def scan_repeated_jpeg(scans: int, width: int = 1000, height: int = 1000) -> bytes:
    """A flat grey progressive JPEG whose last scan (an AC refinement, 23 bytes) is repeated until the file
    has `scans` scans: libjpeg visits every block of the image for each one, with a warning, and decodes it."""
    data = encode(Image.new("L", (width, height), 128), "JPEG", progressive=True, quality=90)
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - data.count(b"\xff\xda")) + data[end:]


def _png_chunk(kind: bytes, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def fragmented(fmt: str, pieces: int = 25_000) -> bytes:
    """A 16x16 image padded with `pieces` empty pieces that Pillow's Python parsers read one by one: private
    PNG chunks before IDAT ("PNG"), empty IDAT chunks ("PNG-IDAT"), GIF comment extensions before the first
    frame, 0xFF fill bytes before a JPEG marker, BMP RLE8 no-op deltas; or, "JPEG-COM", empty comment segments
    after the scan, which libjpeg reads in C and the scan count walks. Each piece is 1-12 bytes."""
    if fmt in ("PNG", "PNG-IDAT"):
        data = png(16, 16)
        idat = data.index(b"IDAT") - 4
        if fmt == "PNG":
            return data[:idat] + _png_chunk(b"prIv") * pieces + data[idat:]
        return data[:idat] + _png_chunk(b"IDAT") * pieces + data[idat:]
    if fmt == "GIF":
        data = encode(Image.new("P", (16, 16)), "GIF")
        frame = data.index(b",")  # the first image descriptor
        return data[:frame] + b"!\xfe\x00" * pieces + data[frame:]
    if fmt == "JPEG":
        data = jpeg(16, 16)
        return data[:2] + b"\xff" * pieces + data[2:]
    if fmt == "JPEG-COM":
        data = jpeg(16, 16)
        return data[:-2] + b"\xff\xfe\x00\x02" * pieces + data[-2:]
    if fmt == "BMP":
        # deltas (0, 0), then 16 rows of a run of 16 pixels of colour 0, then the end of the bitmap
        rle = b"\x00\x02\x00\x00" * pieces + b"\x10\x00\x00\x00" * 16 + b"\x00\x01"
        header = struct.pack("<IiiHHIIiiII", 40, 16, 16, 1, 8, 1, len(rle), 2835, 2835, 256, 0)
        offset = 14 + len(header) + 1024
        return b"BM" + struct.pack("<IHHI", offset + len(rle), 0, 0, offset) + header + bytes(1024) + rle
    raise ValueError(fmt)


FRAGMENTED = ["PNG", "PNG-IDAT", "GIF", "JPEG", "JPEG-COM", "BMP"]
