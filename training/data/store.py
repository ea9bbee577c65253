"""Pre-resized images on disk: uint8 ``[N, S, S, 3]`` in a ``.npy`` file, written sequentially
(``ShardWriter``) and read with positioned reads (``ImageShard``).

Reads never map the file: a process holds only the images it asked for, whatever the shard's
size (the kernel's page cache keeps recently read pages, outside the process's memory). An
``ImageShard`` pickles as its path, so that data-loader workers open their own file handle.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from training.errors import DataError

__all__ = ["ImageArray", "ImageShard", "ShardWriter", "split_digest"]

_NPY_UINT8 = np.lib.format.dtype_to_descr(np.dtype(np.uint8))


class ImageShard:
    """Read-only uint8 images ``[N, S, S, 3]`` of a ``.npy`` file. Indexing with an int, a
    slice or an index array returns a numpy array, like indexing the array in memory."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._pid = -1
        try:
            with self.path.open("rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
                self.offset = handle.tell()
            size = self.path.stat().st_size
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image shard {self.path}: {exc}") from None
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise DataError(
                f"image shard {self.path}: expected uint8 [N, S, S, 3] in C order, "
                f"got {dtype} {list(shape)}"
            )
        self.shape: tuple[int, int, int, int] = (shape[0], shape[1], shape[2], shape[3])
        self.item_bytes = shape[1] * shape[2] * 3
        if size != self.offset + shape[0] * self.item_bytes:
            raise DataError(
                f"image shard {self.path}: {size} bytes, expected "
                f"{self.offset + shape[0] * self.item_bytes} (truncated or modified)"
            )

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def _read_run(self, out: np.ndarray, first: int) -> None:
        """Fill ``out`` (contiguous images) with images ``first, first + 1, ...``."""
        view = out.data.cast("B")
        position = self.offset + first * self.item_bytes
        done = 0
        while done < len(view):
            got = os.preadv(self._handle(), [view[done:]], position + done)
            if got <= 0:
                raise DataError(f"image shard {self.path}: unexpected end of file")
            done += got

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at ``indices`` (any order, repeats allowed), ``[len(indices), S, S, 3]``;
        consecutive indices are read with one system call."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if index.size and (int(index.min()) < -n or int(index.max()) >= n):
            raise IndexError(f"index out of range for {n} images in {self.path}")
        index = np.where(index < 0, index + n, index)
        out = np.empty((index.size, *self.shape[1:]), dtype=np.uint8)
        start = 0
        while start < index.size:
            stop = start + 1
            while stop < index.size and index[stop] == index[stop - 1] + 1:
                stop += 1
            self._read_run(out[start:stop], int(index[start]))
            start = stop
        return out

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read([int(key)])[0]
        if isinstance(key, slice):
            return self.read(np.arange(*key.indices(len(self))))
        return self.read(key)


#: Images in memory or on disk: what ``DomainData.images`` holds per split.
ImageArray = np.ndarray | ImageShard


class ShardWriter:
    """Writes ``count`` uint8 images ``[S, S, 3]`` to a ``.npy`` file in order, hashing them as
    they go (see ``split_digest``); the file is complete only when ``close`` returns."""

    def __init__(self, path: Path, count: int, image_size: int) -> None:
        self.path = Path(path)
        self.shape = (count, image_size, image_size, 3)
        self.written = 0
        self.sha256 = hashlib.sha256(f"{list(self.shape)}".encode())
        self._handle: BinaryIO = self.path.open("wb")
        header = {"descr": _NPY_UINT8, "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._handle, header)

    def write(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.shape[1:] != self.shape[1:]:
            raise ValueError(f"expected uint8 [k, {self.shape[1]}, {self.shape[2]}, 3]")
        if self.written + len(images) > self.shape[0]:
            raise ValueError(f"{self.path}: more than {self.shape[0]} images written")
        data = np.ascontiguousarray(images)
        self._handle.write(data.data)
        self.sha256.update(data.data)
        self.written += len(images)

    def close(self, targets: np.ndarray | None) -> str:
        """Close the file; returns the split's digest over the images and ``targets``."""
        self._handle.close()
        if self.written != self.shape[0]:
            raise ValueError(f"{self.path}: {self.written} of {self.shape[0]} images written")
        if targets is not None:
            self.sha256.update(np.ascontiguousarray(targets, dtype="<i8").data)
        return self.sha256.hexdigest()

    def abort(self) -> None:
        self._handle.close()


def split_digest(images: ImageArray, targets: np.ndarray | None, chunk: int = 4096) -> str:
    """sha256 of a split: its shape, its image bytes in order, then its int64 targets; the same
    value ``ShardWriter`` computes while writing."""
    shape = (len(images), *images.shape[1:])
    digest = hashlib.sha256(f"{list(shape)}".encode())
    for start in range(0, len(images), chunk):
        digest.update(np.ascontiguousarray(images[start : start + chunk], dtype=np.uint8).data)
    if targets is not None:
        digest.update(np.ascontiguousarray(targets, dtype="<i8").data)
    return digest.hexdigest()
