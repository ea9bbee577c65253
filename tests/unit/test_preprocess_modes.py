"""Pixel formats in ``multidomain.preprocess``: every mode a decoder can hand over, encoded to a
real file where a format can store it, decoded and preprocessed, compared pixel by pixel with a
numpy reference conversion of the stored values. The images already have the model's input
size, so the geometry is the identity and only the conversion is compared."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
from PIL import Image

from multidomain.preprocess import (
    ALPHA_BACKGROUND,
    ImageDecodeError,
    UnsupportedImageError,
    decode_image,
    eval_resize,
)

SIZE = 24
WHITE = np.array(ALPHA_BACKGROUND, dtype=np.float64)


def preprocess(image: Image.Image, fmt: str | None, **save: object) -> np.ndarray:
    """Through a real file of ``fmt`` (None: the PIL image itself), then ``eval_resize``:
    uint8 [H, W, 3] as int64."""
    if fmt is not None:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **save)
        image = decode_image(buffer.getvalue(), max_pixels=10**6)
    tensor = eval_resize(SIZE)(image)
    assert tensor.shape == (3, SIZE, SIZE) and str(tensor.dtype) == "torch.uint8"
    return tensor.permute(1, 2, 0).numpy().astype(np.int64)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.int64)[:, :, None], 3, axis=2)


def over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Exact compositing of ``colour`` (H, W, C) with ``alpha`` (H, W) in 0..255 on white."""
    a = alpha.astype(np.float64)[:, :, None] / 255.0
    return np.rint(colour.astype(np.float64) * a + WHITE[: colour.shape[2]] * (1.0 - a))


def assert_equal_pixels(got: np.ndarray, expected: np.ndarray, tolerance: int = 0) -> None:
    expected = np.asarray(expected, dtype=np.int64)
    if expected.shape[-1] == 1:
        expected = np.repeat(expected, 3, axis=-1)
    diff = np.abs(got - expected)
    assert diff.max() <= tolerance, f"max difference {diff.max()} at {np.argwhere(diff > 0)[:3]}"


# 16 and 32 bits ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,mode", [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I;16B")])
def test_16_bit_scaled_by_257(fmt: str, mode: str) -> None:
    values = rng().integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    values[0, :6] = [0, 128, 129, 65406, 65407, 65535]  # edges of round(v / 257)
    image = Image.fromarray(values.astype(">u2" if mode == "I;16B" else "<u2"))
    assert image.mode == mode
    got = preprocess(image, fmt)
    assert_equal_pixels(got, grey(np.rint(values / 257.0)))
    assert got[0, :6, 0].tolist() == [0, 0, 1, 254, 255, 255]


def test_16_bit_transparent_value_composited() -> None:
    values = rng().integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    values[::3, ::2] = 300
    got = preprocess(Image.fromarray(values), "PNG", transparency=300)
    expected = np.where(values == 300, 255, np.rint(values / 257.0))
    assert_equal_pixels(got, grey(expected))


def test_32_bit_integer_in_16_bit_range_scaled_by_257() -> None:
    values = rng().integers(0, 65536, (SIZE, SIZE)).astype(np.int32)
    got = preprocess(Image.fromarray(values, "I"), "TIFF")
    assert_equal_pixels(got, grey(np.rint(values / 257.0)))


@pytest.mark.parametrize("bad", [-1, 65536, 2**31 - 1])
def test_32_bit_integer_out_of_16_bit_range_refused(bad: int) -> None:
    values = np.full((SIZE, SIZE), 1000, dtype=np.int32)
    values[-1, -1] = bad  # outside the centre crop: judged on the whole image
    with pytest.raises(UnsupportedImageError, match=r"mode I\b.*0\.\.65535"):
        preprocess(Image.fromarray(values, "I").resize((SIZE * 5, SIZE)), "TIFF")


def test_float_in_unit_range_scaled_by_255() -> None:
    values = rng().random((SIZE, SIZE), dtype=np.float32)
    values[0, :3] = [0.0, 1.0, 0.25]
    got = preprocess(Image.fromarray(values, "F"), "TIFF")
    assert_equal_pixels(got, grey(np.rint(values.astype(np.float64) * 255.0)))


@pytest.mark.parametrize("bad", [-0.01, 1.5, 255.0, float("nan"), float("inf")])
def test_float_outside_unit_range_refused(bad: float) -> None:
    values = np.full((SIZE, SIZE), 0.5, dtype=np.float32)
    values[SIZE // 2, SIZE // 2] = bad
    with pytest.raises(UnsupportedImageError, match=r"mode F\b"):
        preprocess(Image.fromarray(values, "F"), "TIFF")


def test_unsupported_mode_error_is_a_decode_error() -> None:
    # The service and the TorchServe handler answer every ImageDecodeError with 422 bad_image.
    assert issubclass(UnsupportedImageError, ImageDecodeError)
    with pytest.raises(UnsupportedImageError, match=r"\bLa\b"):
        preprocess(Image.new("La", (SIZE, SIZE)), None)


# transparency ------------------------------------------------------------------------------


def test_rgba_composited_on_white() -> None:
    pixels = rng().integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    pixels[0, 0, 3], pixels[0, 1, 3] = 0, 255
    got = preprocess(Image.fromarray(pixels, "RGBA"), "PNG")
    assert_equal_pixels(got, over_white(pixels[:, :, :3], pixels[:, :, 3]))
    assert got[0, 0].tolist() == list(ALPHA_BACKGROUND)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_la_composited_on_white(fmt: str) -> None:
    pixels = rng().integers(0, 256, (SIZE, SIZE, 2), dtype=np.uint8)
    got = preprocess(Image.fromarray(pixels, "LA"), fmt)
    assert_equal_pixels(got, over_white(pixels[:, :, :1], pixels[:, :, 1]))


def palette_image(indices: np.ndarray, colours: np.ndarray) -> Image.Image:
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette(colours.astype(np.uint8).tobytes())
    return image


def test_pa_composited_on_white() -> None:
    colours = rng(1).integers(0, 256, (256, 3))
    indices = rng(2).integers(0, 256, (SIZE, SIZE))
    alpha = rng(3).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    image = palette_image(indices, colours).convert("PA")
    image.putalpha(Image.fromarray(alpha, "L"))
    got = preprocess(image, "TIFF")
    assert_equal_pixels(got, over_white(colours[indices], alpha))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparent_index_composited(fmt: str) -> None:
    colours = rng(1).integers(0, 256, (256, 3))
    indices = rng(2).integers(0, 256, (SIZE, SIZE))
    indices[::2, ::3] = 7
    got = preprocess(palette_image(indices, colours), fmt, transparency=7)
    expected = np.where((indices == 7)[:, :, None], WHITE, colours[indices])
    assert_equal_pixels(got, expected)


def test_palette_alpha_table_composited() -> None:
    # PNG tRNS with one alpha per palette entry (partial transparency).
    colours = rng(1).integers(0, 256, (256, 3))
    alphas = rng(4).integers(0, 256, 256, dtype=np.uint8)
    indices = rng(2).integers(0, 256, (SIZE, SIZE))
    got = preprocess(palette_image(indices, colours), "PNG", transparency=alphas.tobytes())
    assert_equal_pixels(got, over_white(colours[indices], alphas[indices]))


@pytest.mark.parametrize("mode,key", [("L", 77), ("RGB", (10, 20, 30))])
def test_transparent_colour_key_composited(mode: str, key: int | tuple[int, ...]) -> None:
    pixels = rng().integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    pixels[1::4, ::5] = key
    image = Image.fromarray(pixels, "RGB").convert(mode)
    values = np.asarray(image).reshape(SIZE, SIZE, -1).astype(np.int64)
    keyed = np.all(values == np.array(key).reshape(1, 1, -1), axis=2)
    got = preprocess(image, "PNG", transparency=key)
    expected = np.where(keyed[:, :, None], WHITE, np.broadcast_to(values, (SIZE, SIZE, 3)))
    assert keyed.any()
    assert_equal_pixels(got, expected)


# 8-bit colour spaces ------------------------------------------------------------------------


def test_cmyk_without_profile() -> None:
    cmyk = rng().integers(0, 256, (SIZE, SIZE, 4)).astype(np.uint8)
    got = preprocess(Image.fromarray(cmyk, "CMYK"), "TIFF")
    c, k = cmyk[:, :, :3].astype(np.float64), cmyk[:, :, 3:].astype(np.float64)
    assert_equal_pixels(got, np.rint((255.0 - c) * (255.0 - k) / 255.0))


def test_ycbcr_jfif() -> None:
    ycc = rng().integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    got = preprocess(Image.fromarray(ycc, "YCbCr"), "TIFF")
    y, cb, cr = (ycc[:, :, i].astype(np.float64) for i in range(3))
    rgb = np.stack(
        [
            y + 1.402 * (cr - 128),
            y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
            y + 1.772 * (cb - 128),
        ],
        axis=2,
    )
    assert_equal_pixels(got, np.clip(np.rint(rgb), 0, 255), tolerance=1)  # Pillow's fixed point


def test_hsv() -> None:
    hsv = rng().integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    got = preprocess(Image.fromarray(hsv, "HSV"), None)  # no file format stores HSV
    rgb = [[colorsys.hsv_to_rgb(*(p / 255.0)) for p in row] for row in hsv]
    assert_equal_pixels(got, np.rint(np.array(rgb) * 255.0))


def lab_d50_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D50) -> XYZ -> Bradford D50->D65 -> linear sRGB (IEC 61966-2-1), in [0, 1]
    before the transfer function (values outside mean out of gamut)."""
    lightness = lab[:, :, 0] / 255.0 * 100.0
    a, b = lab[:, :, 1].astype(np.int8), lab[:, :, 2].astype(np.int8)  # signed, as in TIFF
    fy = (lightness + 16.0) / 116.0
    f = np.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=2)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * [0.9642, 1.0, 0.8249]
    bradford = np.array(
        [
            [0.9555766, -0.0230393, 0.0631636],
            [-0.0282895, 1.0099416, 0.0210077],
            [0.0122982, -0.0204830, 1.3299098],
        ]
    )
    to_srgb = np.array(
        [
            [3.2404542, -1.5371385, -0.4985314],
            [-0.9692660, 1.8760108, 0.0415560],
            [0.0556434, -0.2040259, 1.0572252],
        ]
    )
    return xyz @ bradford.T @ to_srgb.T


def test_lab() -> None:
    lab = rng().integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    lab[0, 0], lab[0, 1] = (255, 0, 0), (0, 0, 0)  # white, black
    got = preprocess(Image.fromarray(lab, "LAB"), "TIFF")
    linear = lab_d50_to_srgb(lab)
    in_gamut = np.all((linear >= 0.0) & (linear <= 1.0), axis=2)
    encoded = np.where(
        linear <= 0.0031308, 12.92 * linear, 1.055 * np.clip(linear, 0, None) ** (1 / 2.4) - 0.055
    )
    expected = np.rint(encoded * 255.0)
    assert in_gamut.sum() > 50
    assert np.abs(got - expected)[in_gamut].max() <= 1
    assert got[0, 0].tolist() == [255, 255, 255] and got[0, 1].tolist() == [0, 0, 0]


def test_bilevel() -> None:
    bits = rng().integers(0, 2, (SIZE, SIZE)).astype(bool)
    got = preprocess(Image.fromarray(bits), "PNG")
    assert_equal_pixels(got, grey(bits * 255))


def test_palette_and_grey_and_rgb() -> None:
    colours = rng(1).integers(0, 256, (256, 3))
    indices = rng(2).integers(0, 256, (SIZE, SIZE))
    assert_equal_pixels(preprocess(palette_image(indices, colours), "PNG"), colours[indices])
    values = rng(3).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    assert_equal_pixels(preprocess(Image.fromarray(values, "L"), "PNG"), grey(values))
    pixels = rng(4).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert_equal_pixels(preprocess(Image.fromarray(pixels, "RGB"), "PNG"), pixels)


# scaling and geometry -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(70, 31), (31, 400)])  # whole-image path and crop-region path
@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_high_bit_depth_resized_within_one_level_of_scaling_first(
    size: tuple[int, int], mode: str
) -> None:
    # Resized at full precision, then scaled: within one level of scaling to 8 bits first.
    values = rng().integers(0, 65536, (size[1], size[0]), dtype=np.uint16)
    image = Image.fromarray(values) if mode == "I;16" else Image.fromarray(values / 65535.0)
    scale = 257.0 if mode == "I;16" else 65535.0 / 255.0
    converted = Image.fromarray(np.rint(values / scale).astype(np.uint8), "L")
    got = preprocess(image.convert("F") if mode == "F" else image, "TIFF")
    assert_equal_pixels(got, eval_resize(SIZE)(converted).permute(1, 2, 0).numpy(), tolerance=1)


def test_every_pillow_mode_is_converted_or_refused_by_name() -> None:
    modes = [
        "1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
        "LA", "PA", "RGBX", "RGBa", "La", "I;16", "I;16L", "I;16B", "I;16N",
    ]  # fmt: skip
    refused = []
    for mode in modes:
        for size in ((SIZE + 9, SIZE + 2), (SIZE, SIZE * 9)):
            try:
                preprocess(Image.new(mode, size), None)
            except UnsupportedImageError as exc:
                assert mode in str(exc)
                refused.append(mode)
    assert refused == ["La", "La"]  # premultiplied LA: no decoder produces it
