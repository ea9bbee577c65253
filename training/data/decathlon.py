"""User data in Visual Decathlon layout: ``root/annotations/<name>_{train,val,test}.json``
(COCO-style) with image paths relative to ``root``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from multidomain.files import read_json
from training.data._images import load_image_files, require_dir
from training.data.domain import SPLITS, DataError, DomainData, check_domain_name, make_domain

__all__ = ["load_decathlon_domain"]


def _read_object(path: Path) -> dict[str, Any]:
    obj = read_json(path, DataError)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: top level must be a JSON object")
    return obj


def _decathlon_split(
    root: Path, json_path: Path
) -> tuple[list[tuple[int, str]], list[Path], list[int]]:
    """(sorted categories, image paths, category ids) of one split's COCO-style JSON."""
    obj = _read_object(json_path)
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in obj["categories"])
        images = {int(im["id"]): str(im["file_name"]) for im in obj["images"]}
        annotations = [(int(a["image_id"]), int(a["category_id"])) for a in obj["annotations"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{json_path}: malformed COCO-style JSON (need images[id, file_name], "
            f"annotations[image_id, category_id], categories[id, name]): {exc!r}"
        ) from None
    if not annotations:
        raise DataError(
            f"{json_path}: has no annotations; every split needs labels (the official "
            "Decathlon test split is unlabelled: hold out part of train/val as test instead)"
        )
    cat_ids = {c for c, _ in categories}
    by_image: dict[int, int] = {}
    for image_id, cat in annotations:
        if image_id not in images:
            raise DataError(
                f"{json_path}: annotation refers to image id {image_id}, not in 'images'"
            )
        if cat not in cat_ids:
            raise DataError(
                f"{json_path}: annotation for image id {image_id} has unknown category {cat}"
            )
        if by_image.setdefault(image_id, cat) != cat:
            raise DataError(f"{json_path}: image id {image_id} has conflicting annotations")
    unlabelled = sorted(set(images) - set(by_image))
    if unlabelled:
        raise DataError(
            f"{json_path}: {len(unlabelled)} images have no annotation "
            f"(first image id {unlabelled[0]})"
        )
    paths, cats = [], []
    for image_id in sorted(images):
        rel = Path(images[image_id])
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(
                f"{json_path}: file_name {images[image_id]!r} must be relative to {root}"
            )
        paths.append(root / rel)
        cats.append(by_image[image_id])
    return categories, paths, cats


def load_decathlon_domain(
    root: Path, name: str, image_size: int, seed: int = 0, allow_flip: bool = True
) -> DomainData:
    """Visual Decathlon layout: ``root/annotations/<name>_{train,val,test}.json``.

    Category ids (k*10^7 + c) map to 0-based labels in id order; ``file_name`` is relative to
    ``root``. All three splits must be labelled. ``seed`` is unused (the splits are given).
    """
    del seed
    check_domain_name(name)
    root = require_dir(root, f"Decathlon root for domain {name!r}")
    parsed = {s: _decathlon_split(root, root / "annotations" / f"{name}_{s}.json") for s in SPLITS}
    categories = parsed["train"][0]
    for s in ("val", "test"):
        if parsed[s][0] != categories:
            raise DataError(
                f"{root / 'annotations' / f'{name}_{s}.json'}: categories differ from "
                f"{name}_train.json"
            )
    if len(categories) < 2:
        raise DataError(f"{root}: domain {name!r} needs at least 2 categories")
    index = {cat_id: i for i, (cat_id, _) in enumerate(categories)}
    images = {s: load_image_files(parsed[s][1], image_size) for s in SPLITS}
    targets = {s: np.asarray([index[c] for c in parsed[s][2]], dtype=np.int64) for s in SPLITS}
    labels = [label for _, label in categories]
    return make_domain(name, labels, images, targets, allow_flip, f"decathlon {root}")
