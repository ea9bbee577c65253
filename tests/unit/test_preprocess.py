"""Tests for multidomain.preprocess: eval transform, fast normalisation, safe decoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from multidomain.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    Normalize,
    decode_image,
    eval_resize,
    eval_transform,
    normalize_batch,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def test_normalize_batch_matches_eval_transform() -> None:
    images = [_noise((32, 32), seed=i) for i in range(4)] + [_noise((32, 32), "L", seed=9)]
    transform = eval_transform(32, MEAN, STD)
    expected = torch.stack([transform(im) for im in images])
    batch = torch.stack(
        [torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in images]
    )
    got = normalize_batch(batch, MEAN, STD)
    assert got.dtype == torch.float32 and got.shape == (5, 3, 32, 32)
    assert torch.max(torch.abs(got - expected)).item() <= 1e-6


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_eval_transform_any_mode_and_aspect(mode: str) -> None:
    image = _noise((50, 40), "RGB").convert(mode)
    out = eval_transform(32, MEAN, STD)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    resized = eval_resize(32)(image)
    assert resized.shape == (3, 32, 32) and resized.dtype == torch.uint8


@pytest.mark.parametrize("mode,size", [("RGB", (32, 32)), ("RGB", (40, 32)), ("L", (32, 32))])
def test_eval_resize_shortcut_gives_the_transforms_pixels(mode: str, size: tuple[int, int]) -> None:
    image = _noise(size, "RGB", seed=3).convert(mode)
    transforms = v2.Compose(
        [v2.RGB(), v2.Resize(32, antialias=True), v2.CenterCrop(32), v2.ToImage()]
    )
    expected = transforms(image)
    got = eval_resize(32)(image)
    assert type(got) is torch.Tensor and got.dtype == torch.uint8
    assert torch.equal(got, expected.as_subclass(torch.Tensor))


def test_normalize_layer_equals_normalize_batch() -> None:
    batch = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(Normalize(MEAN, STD)(batch), normalize_batch(batch, MEAN, STD))
    with pytest.raises(TypeError):
        Normalize(MEAN, STD)(batch.float())
    with pytest.raises(ValueError):
        Normalize(MEAN, (1.0, 0.0, 1.0))


def test_normalize_batch_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        normalize_batch(torch.zeros(1, 3, 4, 4), MEAN, STD)
    with pytest.raises(ValueError):
        normalize_batch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), MEAN, STD)
    with pytest.raises(ValueError):
        normalize_batch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), MEAN, (1.0, 0.0, 1.0))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_decode_image_roundtrip(fmt: str) -> None:
    image = decode_image(_encode(_noise((40, 30)), fmt), max_pixels=10_000)
    assert image.size == (40, 30)
    assert image.mode == "RGB"


def _png_with_header_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR (with a valid CRC) claims width x height pixels."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_decode_image_pixel_bomb_refused_from_header() -> None:
    bomb = _png_with_header_size(5_000, 5_000)
    # Decoding must fail (the data holds one pixel), so ImageTooLargeError proves the size
    # check ran on the header, before any decoding.
    with pytest.raises(ImageTooLargeError, match="5000x5000"):
        decode_image(bomb, max_pixels=1_000_000)
    with pytest.raises(ImageDecodeError):
        decode_image(bomb, max_pixels=5_000 * 5_000)
    # Far beyond PIL's own bomb limit: refused as too large as well, never decoded.
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_with_header_size(20_000, 20_000), max_pixels=1_000_000)


def test_decode_image_limit_on_real_image() -> None:
    data = _encode(_noise((64, 64)), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=64 * 64 - 1)
    assert decode_image(data, max_pixels=64 * 64).size == (64, 64)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_image_truncated(fmt: str) -> None:
    data = _encode(_noise((64, 64)), fmt)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data[: len(data) // 2], max_pixels=1_000_000)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n"])
def test_decode_image_garbage(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data, max_pixels=1_000_000)


def test_decode_image_refuses_unlisted_format() -> None:
    data = _encode(_noise((8, 8)), "PPM")
    with pytest.raises(ImageDecodeError):
        decode_image(data, max_pixels=1_000)
    assert decode_image(data, max_pixels=1_000, formats=None).size == (8, 8)


def test_decode_image_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = _encode(_noise((40, 20)), "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=10_000).size == (20, 40)
