"""User data in ImageFolder layout: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from training.data._images import require_dir
from training.data.cache import DomainSource, SplitSource, cache_folder, load_or_build
from training.data.domain import (
    SPLITS,
    DataError,
    DomainData,
    check_domain_name,
    domain_rng,
    stratified_split,
)

__all__ = ["IMAGE_EXTENSIONS", "load_imagefolder_domain"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _scan_classes(folder: Path) -> dict[str, list[Path]]:
    classes = {d.name: _image_files(d) for d in _class_dirs(folder)}
    if len(classes) < 2:
        raise DataError(
            f"{folder}: needs at least 2 class subfolders, found {len(classes)} "
            f"({', '.join(classes) or 'none'})"
        )
    for cls, files in classes.items():
        if not files:
            raise DataError(
                f"class folder {folder / cls} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    return classes


def _layout(
    root: Path, name: str, seed: int
) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Labels and per split the (file, target) pairs of the tree."""
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        if len(present) != len(SPLITS):
            missing = [s for s in SPLITS if s not in present]
            raise DataError(f"{root}: has split folders {present} but is missing {missing}")
        per_split = {s: _scan_classes(root / s) for s in SPLITS}
        labels = list(per_split["train"])
        index = {c: i for i, c in enumerate(labels)}
        files = {}
        for s in SPLITS:
            unknown = sorted(set(per_split[s]) - set(labels))
            if unknown:
                raise DataError(f"{root / s}: classes {unknown} are not in {root / 'train'}")
            files[s] = [(f, index[c]) for c, fs in per_split[s].items() for f in fs]
        return labels, files
    classes = _scan_classes(root)
    labels = list(classes)
    pairs = [(f, i) for i, c in enumerate(labels) for f in classes[c]]
    all_targets = np.asarray([t for _, t in pairs], dtype=np.int64)
    split = stratified_split(all_targets, domain_rng(seed, name))
    for s in SPLITS:
        if split[s].size == 0:
            raise DataError(
                f"{root}: split {s!r} would be empty ({len(pairs)} images); add more images "
                "or provide train/val/test folders"
            )
    return labels, {s: [pairs[i] for i in split[s]] for s in SPLITS}


def _listing_digest(root: Path, files: dict[str, list[tuple[Path, int]]]) -> str:
    """sha256 of the source list: split, relative path, target, size and modification time."""
    rows = []
    for split, pairs in files.items():
        for path, target in pairs:
            stat = path.stat()
            rows.append(
                [split, str(path.relative_to(root)), target, stat.st_size, stat.st_mtime_ns]
            )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def load_imagefolder_domain(
    root: Path,
    name: str,
    image_size: int,
    cache_dir: Path,
    seed: int = 0,
    workers: int = 0,
    allow_flip: bool = True,
) -> DomainData:
    """ImageFolder tree: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*``.

    Sorted class folder names give the label indices; without split folders the images are
    split 70/15/15 per class from ``seed``. Images are decoded once into the cache (``workers``
    processes); a changed file list, size or modification time makes a new cache."""
    check_domain_name(name)
    root = require_dir(root, f"ImageFolder root for domain {name!r}")
    labels, files = _layout(root, name, seed)
    key = {
        "kind": "imagefolder",
        "name": name,
        "image_size": image_size,
        "seed": seed,
        "allow_flip": allow_flip,
        "files_sha256": _listing_digest(root, files),
    }
    splits = {
        s: SplitSource(
            np.asarray([t for _, t in pairs], dtype=np.int64), files=[f for f, _ in pairs]
        )
        for s, pairs in files.items()
    }
    source = DomainSource(name, labels, allow_flip, f"imagefolder {root}", splits)
    folder = cache_folder(cache_dir, "imagefolder", name, key)
    return load_or_build(folder, key, lambda: source, image_size, workers).domain()
