"""Images on disk: what ``ShardWriter`` writes, ``ImageShard`` reads back like an array (also
after a fork and a pickle), and a damaged shard is refused by name."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, ImageShard
from training.data.store import ShardWriter, split_digest


def _images(n: int = 23, size: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _write(path: Path, images: np.ndarray, targets: np.ndarray | None) -> str:
    writer = ShardWriter(path, len(images), images.shape[1])
    for start in range(0, len(images), 5):
        writer.write(images[start : start + 5])
    return writer.close(targets)


def test_shard_reads_like_the_array(tmp_path: Path) -> None:
    images, targets = _images(), np.arange(23, dtype=np.int64)
    digest = _write(tmp_path / "x.npy", images, targets)
    assert digest == split_digest(images, targets)
    assert np.array_equal(np.load(tmp_path / "x.npy"), images)  # a plain .npy file
    shard = ImageShard(tmp_path / "x.npy")
    assert shard.shape == images.shape and len(shard) == 23
    assert np.array_equal(shard[:], images)
    assert np.array_equal(shard[3], images[3]) and np.array_equal(shard[-1], images[-1])
    assert np.array_equal(shard[4:19:3], images[4:19:3])
    index = np.asarray([7, 2, 3, 4, 22, 7, 0])
    assert np.array_equal(shard[index], images[index])
    assert split_digest(shard, targets) == digest
    with pytest.raises(IndexError):
        shard[[23]]


def test_shard_pickles_as_its_path_and_reopens_after_a_fork(tmp_path: Path) -> None:
    images = _images()
    _write(tmp_path / "x.npy", images, None)
    shard = ImageShard(tmp_path / "x.npy")
    shard[0]  # opens the file in this process
    copy = pickle.loads(pickle.dumps(shard))
    assert copy._fd is None and np.array_equal(copy[5:9], images[5:9])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must not share (and close) the parent's file descriptor
        os.close(read)
        os.write(write, shard[[1, 2]].tobytes())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        assert pipe.read() == images[[1, 2]].tobytes()
    os.waitpid(pid, 0)
    assert np.array_equal(shard[10], images[10])


def test_damaged_shards_are_refused(tmp_path: Path) -> None:
    images = _images()
    _write(tmp_path / "x.npy", images, None)
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-1])
    with pytest.raises(DataError, match=r"short\.npy: .* bytes, expected"):
        ImageShard(tmp_path / "short.npy")
    np.save(tmp_path / "float.npy", images.astype(np.float32))
    with pytest.raises(DataError, match="expected uint8"):
        ImageShard(tmp_path / "float.npy")
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="cannot read image shard"):
        ImageShard(tmp_path / "garbage.npy")
    writer = ShardWriter(tmp_path / "incomplete.npy", 5, 6)
    writer.write(images[:3])
    with pytest.raises(ValueError, match="3 of 5 images written"):
        writer.close(None)
