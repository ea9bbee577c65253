"""Reading user image files for the ImageFolder and Decathlon formats: decoded safely and resized
the way serving resizes (``multidomain.preprocess``), in worker processes, chunk by chunk."""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from multidomain.preprocess import ImageDecodeError, ImageTooLargeError, decode_image, eval_resize
from training.errors import DataError

__all__ = ["DECODE_CHUNK", "MAX_SOURCE_PIXELS", "decode_files", "require_dir", "require_files"]

#: Decompression-bomb guard for user image files.
MAX_SOURCE_PIXELS = 64_000_000
#: Images one decoding task handles; a worker holds at most this many decoded images.
DECODE_CHUNK = 64


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


def _decode_chunk(paths: Sequence[Path], image_size: int) -> np.ndarray:
    resize = eval_resize(image_size)
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = _load_image_file(path, resize)
    return out


def decode_files(paths: Sequence[Path], image_size: int, workers: int) -> Iterator[np.ndarray]:
    """The images of ``paths`` in order, as uint8 ``[k, S, S, 3]`` chunks of up to
    ``DECODE_CHUNK``, decoded by ``workers`` processes (0: in this process). At most two chunks
    per worker are in flight, so memory does not grow with the number of files."""
    chunks = (paths[i : i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK))
    if workers == 0:
        for chunk in chunks:
            yield _decode_chunk(chunk, image_size)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context())
    pending: deque[Future[np.ndarray]] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_decode_chunk, chunk, image_size))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"{what} not found: {root}")
    if not root.is_dir():
        raise DataError(f"{what} is not a directory: {root}")
    return root


def require_files(paths: Sequence[Path], listed_in: Path) -> None:
    """Refuse, before decoding anything, image files that are listed but missing."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{listed_in}: {len(missing)} of {len(paths)} listed images are missing "
            f"(first: {missing[0]})"
        )
