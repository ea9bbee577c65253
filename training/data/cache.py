"""The on-disk cache of pre-resized domains, built once per dataset and image size by every
format (the embedded benchmark, ImageFolder, Decathlon).

A cached domain is a folder holding, per split, ``<split>.images.npy`` (uint8 ``[N, S, S, 3]``
at the target size, read by ``ImageShard``), ``<split>.targets.npy`` (int64, labelled splits)
and ``<split>.ids.npy`` (the annotations' image ids, where the format has them), plus the
sidecar ``cache.json``: this ``CACHE_FORMAT_VERSION``, the *key* (format, name, image size,
seed and the digest of the source list: what the folder was built from), labels, mean/std of
the train pixels, each split's digest and each file's size and modification time.

A folder is built in a temporary folder beside it and renamed into place when complete, so an
interrupted build leaves nothing that looks complete. It is used only when its sidecar holds
the expected key and every file still has the recorded size and modification time; anything
else (another image size or dataset digest, a modified or truncated file) is rebuilt, with a
warning, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multidomain.files import read_json, write_json
from training.console import training_progress
from training.data._images import decode_files
from training.data.domain import SPLITS, ChannelStats, DataError, DomainData
from training.data.store import ImageShard, ShardWriter

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CachedSplits",
    "DomainSource",
    "SplitSource",
    "cache_folder",
    "embedded_cache_dir",
    "file_digest",
    "load_or_build",
]

log = logging.getLogger(__name__)

#: Bump when the cache layout or a builder changes: folders of another version are rebuilt.
CACHE_FORMAT_VERSION = 2
SIDECAR = "cache.json"


@dataclass
class SplitSource:
    """What one split is built from: ``images`` in memory or image ``files`` to decode, with
    ``targets`` (None: unlabelled) and optional image ``ids``."""

    targets: np.ndarray | None
    images: np.ndarray | None = None
    files: Sequence[Path] | None = None
    ids: np.ndarray | None = None

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        return len(self.files or ())


@dataclass
class DomainSource:
    """A domain (or an unlabelled split) before caching; ``provenance`` is recorded as is."""

    name: str
    labels: list[str]
    allow_flip: bool
    source: str
    splits: dict[str, SplitSource]
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class CachedSplits:
    """A cache folder that passed its checks: the sidecar and each split's shard, targets, ids."""

    folder: Path
    meta: dict[str, Any]
    images: dict[str, ImageShard]
    targets: dict[str, np.ndarray | None]
    ids: dict[str, np.ndarray | None]

    def domain(self) -> DomainData:
        """The labelled train/val/test domain read from this folder."""
        meta = self.meta
        if any(s not in self.images or self.targets[s] is None for s in SPLITS):
            raise DataError(f"cache {self.folder} does not hold labelled {', '.join(SPLITS)}")
        mean, std = meta["mean"], meta["std"]
        domain = DomainData(
            name=meta["name"],
            labels=list(meta["labels"]),
            images={s: self.images[s] for s in SPLITS},
            targets={s: t for s, t in self.targets.items() if t is not None and s in SPLITS},
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            allow_flip=bool(meta["allow_flip"]),
            source=str(meta["source"]),
            colour=bool(meta["colour"]),
            digests={s: meta["splits"][s]["digest"] for s in SPLITS},
            provenance=dict(meta.get("provenance", {})),
        )
        domain.validate()
        return domain


def embedded_cache_dir(cache_dir: Path, image_size: int, seed: int) -> Path:
    """Folder holding the cached embedded domains for this size and seed."""
    return Path(cache_dir) / f"embedded-s{image_size}-seed{seed}"


def cache_folder(cache_dir: Path, kind: str, name: str, key: Mapping[str, Any]) -> Path:
    """``<cache_dir>/<kind>/<name>-s<size>-<digest of the key>``: another image size, seed or
    source list gives another folder."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / kind / f"{name}-s{key['image_size']}-{digest}"


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of ``paths`` (annotation files), in order."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        digest.update(b"\0")
    return digest.hexdigest()


def _file_state(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _split_files(split: str, labelled: bool, with_ids: bool) -> list[str]:
    names = [f"{split}.images.npy"]
    if labelled:
        names.append(f"{split}.targets.npy")
    if with_ids:
        names.append(f"{split}.ids.npy")
    return names


def _open(folder: Path, key: Mapping[str, Any], image_size: int) -> CachedSplits:
    """The folder's splits after every check; ``DataError`` says why it cannot be used."""
    meta = read_json(folder / SIDECAR, DataError)
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT_VERSION:
        raise DataError(f"format {meta.get('format') if isinstance(meta, dict) else None!r}")
    if meta.get("key") != dict(key):
        raise DataError("built from another source, image size or seed")
    images: dict[str, ImageShard] = {}
    targets: dict[str, np.ndarray | None] = {}
    ids: dict[str, np.ndarray | None] = {}
    for split, info in meta["splits"].items():
        for name, state in info["files"].items():
            path = folder / name
            if not path.is_file() or _file_state(path) != state:
                raise DataError(f"{name} was modified or removed after the cache was built")
        shard = ImageShard(folder / f"{split}.images.npy")
        if shard.shape != (info["count"], image_size, image_size, 3):
            raise DataError(f"{split} images have shape {list(shard.shape)}")
        images[split] = shard
        targets[split] = ids[split] = None
        if info["labelled"]:
            targets[split] = np.load(folder / f"{split}.targets.npy", allow_pickle=False)
        if info["ids"]:
            ids[split] = np.load(folder / f"{split}.ids.npy", allow_pickle=False)
    return CachedSplits(folder, meta, images, targets, ids)


def _write_split(
    folder: Path,
    split: str,
    source: SplitSource,
    image_size: int,
    workers: int,
    stats: ChannelStats | None,
    what: str,
) -> dict[str, Any]:
    writer = ShardWriter(folder / f"{split}.images.npy", len(source), image_size)
    try:
        if source.images is not None:
            chunks: Any = (source.images[i : i + 4096] for i in range(0, len(source.images), 4096))
            for chunk in chunks:
                writer.write(chunk)
                if stats is not None:
                    stats.update(chunk)
        else:
            with training_progress() as progress:
                task = progress.add_task(f"caching {what} {split}", total=len(source), stats="")
                for chunk in decode_files(list(source.files or ()), image_size, workers):
                    writer.write(chunk)
                    if stats is not None:
                        stats.update(chunk)
                    progress.update(task, advance=len(chunk))
    except BaseException:
        writer.abort()
        raise
    digest = writer.close(source.targets)
    if source.targets is not None:
        np.save(folder / f"{split}.targets.npy", np.ascontiguousarray(source.targets, "<i8"))
    if source.ids is not None:
        np.save(folder / f"{split}.ids.npy", np.ascontiguousarray(source.ids, "<i8"))
    names = _split_files(split, source.targets is not None, source.ids is not None)
    return {
        "count": len(source),
        "labelled": source.targets is not None,
        "ids": source.ids is not None,
        "digest": digest,
        "files": {name: _file_state(folder / name) for name in names},
    }


def _build(
    folder: Path, key: Mapping[str, Any], source: DomainSource, image_size: int, workers: int
) -> None:
    """Write the folder's files into a temporary folder and rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        stats = ChannelStats() if "train" in source.splits else None
        splits = {
            split: _write_split(
                tmp,
                split,
                part,
                image_size,
                workers,
                stats if split == "train" else None,
                source.name,
            )
            for split, part in source.splits.items()
        }
        meta: dict[str, Any] = {
            "format": CACHE_FORMAT_VERSION,
            "key": dict(key),
            "name": source.name,
            "labels": source.labels,
            "allow_flip": source.allow_flip,
            "source": source.source,
            "provenance": source.provenance,
            "splits": splits,
        }
        if stats is not None:
            mean, std = stats.mean_std()
            meta.update(mean=list(mean), std=list(std), colour=stats.colour)
        write_json(tmp / SIDECAR, meta)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / SIDECAR).is_file():
                raise
            log.info("%s was built by another process meanwhile; using it", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_build(
    folder: Path,
    key: Mapping[str, Any],
    build: Callable[[], DomainSource],
    image_size: int,
    workers: int = 0,
) -> CachedSplits:
    """The cache ``folder`` if it holds ``key``, else built from ``build()`` (decoding image
    files with ``workers`` processes) and then read back the same way."""
    folder = Path(folder)
    if folder.exists():
        try:
            return _open(folder, key, image_size)
        except (DataError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache %s cannot be used (%s); rebuilding it", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    _build(folder, key, build(), image_size, workers)
    try:
        return _open(folder, key, image_size)
    except (DataError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cache {folder} is unreadable right after it was built: {exc}") from None
