"""Tests for multidomain.preprocess: eval transform, fast normalisation, safe decoding."""

from __future__ import annotations

import io
import subprocess
import sys

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
from tests.hostile_images import (
    frames,
    gif_with_sizes,
    jpeg_with_header_size,
    png_with_header_size,
    tiff_with_header_size,
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


def test_decode_image_pixel_bomb_refused_from_header() -> None:
    bomb = png_with_header_size(5_000, 5_000)
    # Decoding must fail (the data holds one pixel), so ImageTooLargeError proves the size
    # check ran on the header, before any decoding.
    with pytest.raises(ImageTooLargeError, match="5000x5000"):
        decode_image(bomb, max_pixels=1_000_000)
    with pytest.raises(ImageDecodeError):
        decode_image(bomb, max_pixels=5_000 * 5_000)
    # Far beyond PIL's own bomb limit: refused as too large as well, never decoded.
    with pytest.raises(ImageTooLargeError):
        decode_image(png_with_header_size(20_000, 20_000), max_pixels=1_000_000)


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


# geometry: torchvision's pixels, bounded intermediates ----------------------------------------


def _reference(image: Image.Image, size: int) -> torch.Tensor:
    transforms = v2.Compose(
        [v2.RGB(), v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToImage()]
    )
    return transforms(image).as_subclass(torch.Tensor)


@pytest.mark.parametrize("size", [(57, 43), (43, 57), (200, 51), (51, 203), (640, 480), (33, 32)])
@pytest.mark.parametrize("image_size", [16, 32])
def test_eval_resize_bit_identical_to_torchvision_up_to_aspect_4(
    size: tuple[int, int], image_size: int
) -> None:
    image = _noise(size, seed=size[0])
    assert torch.equal(eval_resize(image_size)(image), _reference(image, image_size))


@pytest.mark.parametrize("size", [(600, 20), (20, 600), (5000, 7), (3, 40_000)])
def test_eval_resize_strips_within_one_level_of_torchvision(size: tuple[int, int]) -> None:
    # Beyond aspect 4 only the source region under the crop is resized (Pillow's box= takes
    # float32 coordinates, hence at most one level of difference).
    width, height = size
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    pixels = np.concatenate([x + 0 * y, 0 * x + y, (x + y) / 2], axis=2).astype(np.uint8)
    image = Image.fromarray(pixels)
    got = eval_resize(16)(image).to(torch.int16)
    diff = (got - _reference(image, 16).to(torch.int16)).abs()
    assert diff.max().item() <= 1


# multi-frame images: the first frame -----------------------------------------------------------


def _first_pixel(data: bytes) -> list[int]:
    image = decode_image(data, max_pixels=10_000)
    return eval_resize(8)(image)[:, 4, 4].tolist()


def test_gif_first_frame_with_its_transparency() -> None:
    first = Image.new("P", (16, 16), 1)
    first.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    first.paste(0, (0, 0, 16, 8))  # top half red, bottom half transparent (index 1)
    second = Image.new("P", (16, 16), 0)
    second.putpalette([0, 255, 0] + [0] * 765)
    data = frames("GIF", [first, second], transparency=1, disposal=1)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    image = decode_image(data, max_pixels=10_000)
    pixels = eval_resize(16)(image)
    assert pixels[:, 2, 8].tolist() == [255, 0, 0]
    assert pixels[:, 12, 8].tolist() == [255, 255, 255]  # transparent: the white background


def test_tiff_first_page() -> None:
    first = Image.fromarray(np.full((8, 8), 257 * 100, dtype=np.uint16))  # I;16
    second = Image.new("RGB", (8, 8), (0, 0, 255))
    data = frames("TIFF", [first, second])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert _first_pixel(data) == [100, 100, 100]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])  # APNG, animated WebP
def test_animation_first_frame(fmt: str) -> None:
    first = Image.new("RGBA", (8, 8), (200, 0, 0, 255))
    second = Image.new("RGBA", (8, 8), (0, 0, 200, 255))
    data = frames(fmt, [first, second], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert _first_pixel(data) == [200, 0, 0]


# small files that declare huge images ---------------------------------------------------------


@pytest.mark.parametrize(
    "data,message",
    [
        (jpeg_with_header_size(8_000, 8_000), "8000x8000"),
        (jpeg_with_header_size(65_000, 65_000), "limit 16777216"),
        (gif_with_sizes((8_000, 8_000), (4, 4)), "8000x8000"),
        (gif_with_sizes((65_535, 65_535), (4, 4)), "limit 16777216"),
        (gif_with_sizes((4, 4), (8_000, 8_000)), "8000x8000"),  # frame beyond the screen
        (tiff_with_header_size(8_000, 8_000), "8000x8000"),
        (tiff_with_header_size(100_000, 100_000), "limit 16777216"),
    ],
    ids=["jpeg", "jpeg-huge", "gif", "gif-huge", "gif-frame", "tiff", "tiff-huge"],
)
def test_decode_image_small_file_huge_header_refused(data: bytes, message: str) -> None:
    assert len(data) < 1_000
    with pytest.raises(ImageTooLargeError, match=message):
        decode_image(data, max_pixels=4096 * 4096)


def test_preprocessing_needs_no_torchvision() -> None:
    # torchvision is only the reference in tests; importing it costs the service ~160 MiB RSS.
    code = "import sys, multidomain.preprocess; print('torchvision' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
