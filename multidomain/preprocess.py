"""Evaluation-time image preprocessing shared by training and serving.

Only torch, torchvision, numpy and PIL may be imported here: the service reuses this module.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torchvision.transforms import v2

__all__ = [
    "DEFAULT_FORMATS",
    "ImageDecodeError",
    "ImageTooLargeError",
    "Normalize",
    "decode_image",
    "decode_to_input",
    "eval_resize",
    "eval_transform",
    "normalize_batch",
]

#: Image formats that :func:`decode_image` accepts by default (PIL format names).
DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "WEBP", "GIF", "TIFF")


class ImageTooLargeError(ValueError):
    """The image header declares more pixels than allowed."""


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (unknown format, corrupt or truncated)."""


def eval_resize(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (any mode) -> uint8 tensor [3, image_size, image_size].

    RGB conversion, resize of the shorter side to ``image_size`` (antialiased) and a centre crop.
    This is the geometric part of :func:`eval_transform`; training data uses it for user images.
    An RGB image that already has the target size skips the transforms (same pixels, faster).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    transforms = v2.Compose(
        [
            v2.RGB(),
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToImage(),
        ]
    )

    def resize(image: Image.Image) -> torch.Tensor:
        if image.mode == "RGB" and image.size == (image_size, image_size):
            pixels = np.array(image, dtype=np.uint8)  # a copy: torch needs writable memory
            return torch.from_numpy(pixels).permute(2, 0, 1)
        return transforms(image).as_subclass(torch.Tensor)

    return resize


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (any mode) -> normalised float32 tensor [3, image_size, image_size]."""
    _check_stats(mean, std)
    return v2.Compose(
        [
            eval_resize(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
        ]
    )


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
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {_one_line(exc)}") from None
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
