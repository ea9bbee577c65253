"""Evaluation-time image preprocessing shared by training and serving.

Decoding (:func:`decode_image`) refuses pixel bombs from the header, loads the first frame only
(GIF, TIFF, WebP, APNG) and applies the EXIF orientation.

Preprocessing (:func:`eval_resize`) turns any decoded image into uint8 RGB at the model's input
size: the shorter side resized to ``image_size`` (bilinear, antialiased) and a centre crop,
the pixels of torchvision's ``RGB -> Resize(image_size) -> CenterCrop(image_size)`` on a PIL
image. Memory stays bounded whatever the aspect ratio: when the resized image would be more
than :data:`WHOLE_RESIZE_MAX_ASPECT` times longer than wide, only the part of the source under
the crop is converted and resized (at most one level away from resizing the whole image).

Pixel formats, converted to 8 bits per channel:

* 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``HSV``) with Pillow's
  conversion to RGB (CMYK without a colour profile: ``R = (255-C)(255-K)/255``); ``LAB`` as
  CIE L*a*b* with a D50 white (the ICC convention) to sRGB through littleCMS. Embedded colour
  profiles are not applied.
* 16-bit greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): ``round(v / 257)``.
* 32-bit integer (``I``): as 16-bit when every value lies in 0..65535, else refused.
* 32-bit float (``F``): ``round(v * 255)`` when every value lies in [0, 1], else refused (also
  NaN and infinity).

These three are resized at their own precision, then scaled.
* Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, a palette with alpha, a transparent colour
  key): composited on :data:`ALPHA_BACKGROUND` (white).

Anything else is refused with :class:`UnsupportedImageError`, whose message names the mode.

Only torch, numpy and PIL are imported here: the service reuses this module.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

__all__ = [
    "ALPHA_BACKGROUND",
    "DEFAULT_FORMATS",
    "WHOLE_RESIZE_MAX_ASPECT",
    "ImageDecodeError",
    "ImageTooLargeError",
    "Normalize",
    "UnsupportedImageError",
    "decode_image",
    "decode_to_input",
    "eval_resize",
    "eval_transform",
    "normalize_batch",
]

#: Image formats that :func:`decode_image` accepts by default (PIL format names).
DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")

#: Background that transparent pixels are composited on (RGB).
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)

#: Up to this ratio of the resized image's long side to ``image_size`` the whole image is
#: resized, then cropped (bit-identical to torchvision); beyond it only the crop's source
#: region is resized, so that a thin strip never becomes a huge intermediate image.
WHOLE_RESIZE_MAX_ASPECT = 4

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
# round(v / 257) for every 16-bit value: 65535 -> 255, exact, no float temporaries.
_SIXTEEN_TO_EIGHT = np.rint(np.arange(65536) / 257.0).astype(np.uint8)


class ImageTooLargeError(ValueError):
    """The image header declares more pixels than allowed."""


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (unknown format, corrupt or truncated)."""


class UnsupportedImageError(ImageDecodeError):
    """The image decodes, but its pixels cannot be converted to 8-bit RGB faithfully (the
    message names the mode and the reason)."""


def eval_resize(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (any mode in the module docstring) -> uint8 tensor [3, image_size, image_size].

    Conversion to 8-bit RGB, resize of the shorter side to ``image_size`` (bilinear,
    antialiased) and a centre crop, with memory bounded by the source image and the crop (see
    the module docstring). The image's current frame is used. Raises
    :class:`UnsupportedImageError` for pixels that cannot be converted faithfully.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")

    def resize(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(_resize_crop_rgb(image, image_size)).permute(2, 0, 1)

    return resize


def _resize_crop_rgb(image: Image.Image, image_size: int) -> np.ndarray:
    """:func:`eval_resize`'s pixels as a writable uint8 array [image_size, image_size, 3]."""
    if (
        image.size == (image_size, image_size)
        and image.mode == "RGB"
        and not _has_colour_key(image)
    ):
        return np.array(image, dtype=np.uint8)  # already the model's input
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(image_size * long / short)  # torchvision's size rule (truncation)
    new_width, new_height = (image_size, new_long) if width <= height else (new_long, image_size)
    left = round((new_width - image_size) / 2.0)  # torchvision's crop anchor
    top = round((new_height - image_size) / 2.0)
    if new_long <= WHOLE_RESIZE_MAX_ASPECT * image_size:
        resized = _resizable(image, image).resize(
            (new_width, new_height), Image.Resampling.BILINEAR
        )
        out = resized.crop((left, top, left + image_size, top + image_size))
    else:
        scale_x, scale_y = width / new_width, height / new_height
        box = (
            left * scale_x,
            top * scale_y,
            min(width, (left + image_size) * scale_x),
            min(height, (top + image_size) * scale_y),
        )
        # The bilinear filter reaches max(scale, 1) source pixels beyond the box: keep them.
        margin = math.ceil(max(scale_x, scale_y, 1.0)) + 2
        region = (
            max(0, math.floor(box[0]) - margin),
            max(0, math.floor(box[1]) - margin),
            min(width, math.ceil(box[2]) + margin),
            min(height, math.ceil(box[3]) + margin),
        )
        part = _resizable(image.crop(region), image)
        shifted = (box[0] - region[0], box[1] - region[1], box[2] - region[0], box[3] - region[1])
        out = part.resize((image_size, image_size), Image.Resampling.BILINEAR, box=shifted)
    pixels = _eight_bit(out)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return np.array(pixels, dtype=np.uint8)


def _resizable(image: Image.Image, source: Image.Image) -> Image.Image:
    """``image`` (``source`` or a crop of it) in a mode that resizes to the right pixels: opaque
    8-bit ``L`` or ``RGB``, or a 16-bit, 32-bit or float greyscale that :func:`_eight_bit`
    scales after resizing (more precise, and no full-size 8-bit copy).

    The value range of a 32-bit mode is judged on the whole ``source`` (without copying it)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        if mode == "I":
            low, high = _value_range(source)
            if low < 0 or high > 65535:
                raise UnsupportedImageError(
                    f"unsupported image: 32-bit integer pixels (mode I) range {low}..{high}; "
                    "only 0..65535 (16-bit) can be scaled to 8 bits"
                )
        key = image.info.get("transparency")
        if not isinstance(key, int):
            return image
        values = np.asarray(image)  # a transparent grey value: flatten before resizing
        grey = Image.fromarray(_SIXTEEN_TO_EIGHT[values], "L")
        grey.paste(ALPHA_BACKGROUND[0], mask=Image.fromarray(_mask(values == key), "L"))
        return grey
    if mode == "F":
        low, high = _value_range(source)
        if not (low >= 0.0 and high <= 1.0):
            raise UnsupportedImageError(
                f"unsupported image: float pixels (mode F) range {low:g}..{high:g}; "
                "only values in [0, 1] can be scaled to 8 bits"
            )
        return image
    if mode == "LAB":
        return _lab_to_srgb(image)
    try:
        if mode in _ALPHA_MODES or _has_colour_key(image):
            if mode not in ("RGBA", "LA"):
                image = image.convert("LA" if mode in ("1", "L") else "RGBA")
            return _flatten_alpha(image)
        if mode in ("L", "RGB"):
            return image
        return image.convert("L" if mode == "1" else "RGB")
    except ValueError as exc:  # Pillow has no conversion from this mode
        raise UnsupportedImageError(
            f"unsupported image: pixel mode {mode} cannot be converted to RGB ({exc})"
        ) from None


def _eight_bit(resized: Image.Image) -> np.ndarray:
    """A resized image from :func:`_resizable` as uint8 [H, W] or [H, W, 3]."""
    mode = resized.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return _SIXTEEN_TO_EIGHT[np.asarray(resized)]
    if mode == "F":
        values = np.asarray(resized, dtype=np.float64)
        if not np.isfinite(values).all():
            raise UnsupportedImageError(
                "unsupported image: float pixels (mode F) include NaN or infinity"
            )
        return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.asarray(resized)


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """An ``RGBA`` or ``LA`` image over :data:`ALPHA_BACKGROUND`: ``c * a + bg * (1 - a)``,
    rounded (Pillow's masked paste, in place on the colour copy)."""
    colour = image.convert(image.mode[:-1])
    transparency = image.getchannel("A").point(lambda a: 255 - a)
    colour.paste(ALPHA_BACKGROUND[0] if colour.mode == "L" else ALPHA_BACKGROUND, mask=transparency)
    return colour


def _mask(selected: np.ndarray) -> np.ndarray:
    return np.where(selected, 255, 0).astype(np.uint8)


def _value_range(image: Image.Image) -> tuple[float, float]:
    """Smallest and largest value of a one-band image (no copy of its pixels)."""
    low, high = cast(tuple[float, float], image.getextrema())
    return low, high


def _lab_to_srgb(image: Image.Image) -> Image.Image:
    """CIE L*a*b* (D50 white, the ICC convention) -> sRGB, through littleCMS without its
    optimised 8-bit lookup tables: Pillow's plain ``convert`` is up to 22 levels off."""
    try:
        transform = _lab_transform()
    except ImportError:  # Pillow built without littleCMS
        raise UnsupportedImageError(
            "unsupported image: pixel mode LAB needs Pillow's colour management (littleCMS)"
        ) from None
    return transform.apply(image)


@functools.cache
def _lab_transform() -> Any:
    from PIL import ImageCms

    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"),
        ImageCms.createProfile("sRGB"),
        "LAB",
        "RGB",
        flags=ImageCms.Flags.NOOPTIMIZE,
    )


def _has_colour_key(image: Image.Image) -> bool:
    """Transparency given by the info dict (a transparent colour or palette alphas) or by a
    palette with an alpha channel."""
    if "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode.endswith("A")


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (any mode) -> normalised float32 tensor [3, image_size, image_size]."""
    _check_stats(mean, std)
    resize = eval_resize(image_size)
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32)

    def transform(image: Image.Image) -> torch.Tensor:
        return _normalize(resize(image).unsqueeze(0), m, s)[0]

    return transform


def normalize_batch(
    images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32, scaled to [0, 1] and normalised per channel.

    Gives the same numbers as :func:`eval_transform` on an image that already has the target
    size (same operation order as torchvision's ToDtype(scale=True) + Normalize).
    """
    _check_stats(mean, std)
    device = images_uint8.device
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32, device=device)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32, device=device)
    return _normalize(images_uint8, m, s)


class Normalize(nn.Module):
    """:func:`normalize_batch` as the first layer of a served network, so that preprocessing
    hands over uint8 pixels and normalisation runs once per batch."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        _check_stats(mean, std)
        self.register_buffer("mean", torch.tensor([float(v) for v in mean], dtype=torch.float32))
        self.register_buffer("std", torch.tensor([float(v) for v in std], dtype=torch.float32))

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return _normalize(images_uint8, self.mean, self.std)


def _normalize(images_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 tensor, got {images_uint8.dtype}")
    if images_uint8.ndim != 4 or images_uint8.shape[1] != 3:
        raise ValueError(f"expected shape [N, 3, H, W], got {list(images_uint8.shape)}")
    x = images_uint8.to(torch.float32).mul_(1.0 / 255.0)
    return x.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))


def decode_image(
    data: bytes, max_pixels: int, formats: Sequence[str] | None = DEFAULT_FORMATS
) -> Image.Image:
    """Decode image bytes with PIL, refusing pixel bombs before the pixels are decoded.

    The header's width*height is checked against ``max_pixels`` first (ImageTooLargeError);
    then the first frame is fully loaded (ImageDecodeError on any decoder error, including
    truncated files) and its EXIF orientation applied. The mode is left as stored.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    try:
        image = Image.open(io.BytesIO(data), formats=list(formats) if formats else None)
    except Image.DecompressionBombError as exc:  # Pillow's own limit, far above any sane one
        raise ImageTooLargeError(
            f"image has more pixels than the limit {max_pixels}: {_one_line(exc)}"
        ) from None
    except UnidentifiedImageError:
        accepted = ", ".join(formats or DEFAULT_FORMATS)
        raise ImageDecodeError(
            f"cannot decode image: not a recognised image format (accepted: {accepted})"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode image: {_one_line(exc)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"cannot decode image: invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image has {width}x{height}={width * height} pixels, more than the limit {max_pixels}"
        )
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {_one_line(exc)}") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, KeyError) as exc:
        raise ImageDecodeError(f"cannot decode image: {_one_line(exc)}") from None
    return image


def decode_to_input(
    data: bytes, max_pixels: int, transform: Callable[[Image.Image], torch.Tensor]
) -> torch.Tensor:
    """Decode one image (``decode_image``'s checks and errors) and apply ``transform``."""
    image = decode_image(data, max_pixels)
    try:
        return transform(image)
    finally:
        image.close()


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each, got {len(mean)} and {len(std)}")
    if any(float(s) <= 0.0 for s in std):
        raise ValueError(f"std must be positive, got {list(std)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
