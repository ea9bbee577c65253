"""Reading user image files for the ImageFolder and Decathlon formats: decoded safely and resized
the way serving resizes (``multidomain.preprocess``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from multidomain.preprocess import ImageDecodeError, ImageTooLargeError, decode_image, eval_resize
from training.errors import DataError

__all__ = ["MAX_SOURCE_PIXELS", "load_image_files", "require_dir"]

#: Decompression-bomb guard for user image files.
MAX_SOURCE_PIXELS = 64_000_000


def _load_image_file(path: Path, resize: Callable[[Image.Image], torch.Tensor]) -> np.ndarray:
    """Image file -> uint8 [S, S, 3] with the serving-time resize and centre crop."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    try:
        image = decode_image(data, MAX_SOURCE_PIXELS)
    except (ImageDecodeError, ImageTooLargeError) as exc:
        raise DataError(f"bad image file {path}: {exc}") from None
    with image:
        tensor = resize(image)
    return tensor.permute(1, 2, 0).contiguous().numpy()


def load_image_files(paths: Sequence[Path], image_size: int) -> np.ndarray:
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    resize = eval_resize(image_size)
    for i, path in enumerate(paths):
        out[i] = _load_image_file(path, resize)
    return out


def require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"{what} not found: {root}")
    if not root.is_dir():
        raise DataError(f"{what} is not a directory: {root}")
    return root
