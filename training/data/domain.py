"""One domain's data (``DomainData``), its name rule, and the deterministic 70/15/15 splits."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.data.store import ImageArray
from training.errors import DataError

__all__ = [
    "SPLITS",
    "SPLIT_FRACTIONS",
    "ChannelStats",
    "DataError",
    "DomainData",
    "check_domain_name",
    "distinct_images",
    "domain_rng",
    "make_domain",
    "split_counts",
    "split_domain",
    "stratified_split",
]

SPLITS: tuple[str, str, str] = ("train", "val", "test")
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.70, "val": 0.15, "test": 0.15}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass
class DomainData:
    """One domain: label names, uint8 RGB images [N, S, S, 3] and int64 targets per split.

    ``images`` are numpy arrays in memory or ``ImageShard`` files of the on-disk cache (read on
    demand); a cached domain also knows from its cache whether it is in colour (``colour``),
    each split's digest (``digests``) and where its splits come from (``provenance``)."""

    name: str
    labels: list[str]
    images: dict[str, ImageArray]
    targets: dict[str, np.ndarray]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    allow_flip: bool
    source: str
    colour: bool | None = None
    digests: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.images["train"].shape[1])

    @property
    def is_colour(self) -> bool:
        """True when some train pixel has differing R, G, B values."""
        if self.colour is None:
            stats = ChannelStats()
            stats.update(self.images["train"])
            self.colour = stats.colour
        return self.colour

    def counts(self) -> dict[str, int]:
        return {split: int(self.targets[split].shape[0]) for split in SPLITS}

    def validate(self) -> None:
        """Raise DataError unless splits, shapes, dtypes and targets are consistent."""
        if set(self.images) != set(SPLITS) or set(self.targets) != set(SPLITS):
            raise DataError(f"domain {self.name!r}: splits must be exactly {list(SPLITS)}")
        if self.num_classes < 2:
            raise DataError(f"domain {self.name!r}: needs at least 2 classes, has {self.labels}")
        size = None
        for split in SPLITS:
            x, y = self.images[split], self.targets[split]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2]:
                raise DataError(
                    f"domain {self.name!r} split {split}: images must be uint8 [N, S, S, 3], "
                    f"got {x.dtype} {list(x.shape)}"
                )
            if size is not None and x.shape[1] != size:
                raise DataError(f"domain {self.name!r}: image size differs between splits")
            size = x.shape[1]
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise DataError(
                    f"domain {self.name!r} split {split}: targets must be int64 [N] matching images"
                )
            if x.shape[0] == 0:
                raise DataError(f"domain {self.name!r}: split {split!r} is empty")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise DataError(f"domain {self.name!r} split {split}: target out of range")


def check_domain_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise DataError(
            f"invalid domain name {name!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def domain_rng(seed: int, name: str) -> np.random.Generator:
    """An independent, build-order-independent stream per (seed, domain)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def distinct_images(images: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct image (exact bytes): a source's
    duplicates would otherwise land in different splits, a test image also in training."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    return np.sort(first)


def split_counts(n: int) -> tuple[int, int, int]:
    """70/15/15 of n; val and test get at least one item each when n >= 3."""
    n_val = math.floor(n * SPLIT_FRACTIONS["val"] + 0.5)
    n_test = math.floor(n * SPLIT_FRACTIONS["test"] + 0.5)
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    return n - n_val - n_test, n_val, n_test


def stratified_split(targets: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-class shuffled 70/15/15 split; returns sorted index arrays per split."""
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(idx.size)]
        n_train, n_val, _ = split_counts(idx.size)
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


class ChannelStats:
    """Exact per-channel mean/std (population) of uint8 images in [0, 1] via histograms, and
    whether any pixel has differing R, G, B values; fed chunk by chunk."""

    def __init__(self) -> None:
        self.histograms = np.zeros((3, 256), dtype=np.int64)
        self.colour = False

    def update(self, images: ImageArray, chunk: int = 4096) -> None:
        for start in range(0, len(images), chunk):
            x = np.asarray(images[start : start + chunk])
            for c in range(3):
                self.histograms[c] += np.bincount(x[..., c].ravel(), minlength=256)
            if not self.colour:
                self.colour = bool(np.any(x[..., 0] != x[..., 1]) or np.any(x[..., 1] != x[..., 2]))

    def mean_std(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        values = np.arange(256, dtype=np.float64) / 255.0
        means, stds = [], []
        for c in range(3):
            hist = self.histograms[c].astype(np.float64)
            total = hist.sum()
            mean = float((hist * values).sum() / total)
            var = float((hist * (values - mean) ** 2).sum() / total)
            means.append(mean)
            stds.append(max(math.sqrt(max(var, 0.0)), 1e-3))
        return (means[0], means[1], means[2]), (stds[0], stds[1], stds[2])


def make_domain(
    name: str,
    labels: Sequence[str],
    images: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    allow_flip: bool,
    source: str,
) -> DomainData:
    """A validated domain from per-split arrays; mean/std come from the train images."""
    if images["train"].size == 0:
        raise DataError(f"domain {name!r}: split 'train' is empty")
    stats = ChannelStats()
    stats.update(images["train"])
    mean, std = stats.mean_std()
    domain = DomainData(
        name=name,
        labels=list(labels),
        images={s: np.ascontiguousarray(images[s], dtype=np.uint8) for s in SPLITS},
        targets={s: np.ascontiguousarray(targets[s], dtype=np.int64) for s in SPLITS},
        mean=mean,
        std=std,
        allow_flip=allow_flip,
        source=source,
        colour=stats.colour,
    )
    domain.validate()
    return domain


def split_domain(
    name: str,
    labels: Sequence[str],
    images: np.ndarray,
    targets: np.ndarray,
    seed: int,
    allow_flip: bool,
    source: str,
) -> DomainData:
    """``make_domain`` after a seeded stratified split of unsplit arrays, each distinct image
    once (``distinct_images``)."""
    keep = distinct_images(images)
    images, targets = images[keep], targets[keep]
    split = stratified_split(targets, domain_rng(seed, name))
    return make_domain(
        name,
        labels,
        {s: images[split[s]] for s in SPLITS},
        {s: targets[split[s]] for s in SPLITS},
        allow_flip,
        source,
    )
