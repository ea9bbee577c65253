"""User data in ImageFolder layout: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data._images import load_image_files, require_dir
from training.data.domain import (
    SPLITS,
    DataError,
    DomainData,
    check_domain_name,
    domain_rng,
    make_domain,
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


def load_imagefolder_domain(
    root: Path, name: str, image_size: int, seed: int = 0, allow_flip: bool = True
) -> DomainData:
    """ImageFolder tree: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*``.

    Sorted class folder names give the label indices; without split folders the images are
    split 70/15/15 per class from ``seed``.
    """
    check_domain_name(name)
    root = require_dir(root, f"ImageFolder root for domain {name!r}")
    present = [s for s in SPLITS if (root / s).is_dir()]
    source = f"imagefolder {root}"
    if present:
        if len(present) != len(SPLITS):
            missing = [s for s in SPLITS if s not in present]
            raise DataError(f"{root}: has split folders {present} but is missing {missing}")
        per_split = {s: _scan_classes(root / s) for s in SPLITS}
        labels = list(per_split["train"])
        index = {c: i for i, c in enumerate(labels)}
        images, targets = {}, {}
        for s in SPLITS:
            unknown = sorted(set(per_split[s]) - set(labels))
            if unknown:
                raise DataError(f"{root / s}: classes {unknown} are not in {root / 'train'}")
            files = [(f, index[c]) for c, fs in per_split[s].items() for f in fs]
            images[s] = load_image_files([f for f, _ in files], image_size)
            targets[s] = np.asarray([t for _, t in files], dtype=np.int64)
        return make_domain(name, labels, images, targets, allow_flip, source)
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
    images = {s: load_image_files([pairs[i][0] for i in split[s]], image_size) for s in SPLITS}
    targets = {s: all_targets[split[s]] for s in SPLITS}
    return make_domain(name, labels, images, targets, allow_flip, source)
