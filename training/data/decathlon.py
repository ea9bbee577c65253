"""User data in the Visual Decathlon layout, as released: ``root/annotations/<name>_train.json``
and ``<name>_val.json`` (labelled, COCO-style) and ``<name>_test_stripped.json`` (unlabelled),
with image paths relative to ``root``.

Training uses train and val as given and a labelled test split held out from train: per
category, ``HELDOUT_FRACTION`` of its images (at least one, never all) drawn with the seed;
``provenance["test_split"]`` records the seed, the count and the sha256 of the held-out image
ids. The stripped test set is only predicted (``load_decathlon_test``, ``mdprune
predict-decathlon``). Category ids (``k * 10^7 + c``) map to 0-based labels in id order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multidomain.files import read_json
from training.data._images import require_dir, require_files
from training.data.cache import (
    CachedSplits,
    DomainSource,
    SplitSource,
    cache_folder,
    file_digest,
    load_or_build,
)
from training.data.domain import DataError, DomainData, check_domain_name, domain_rng
from training.data.store import ImageShard

__all__ = [
    "HELDOUT_FRACTION",
    "DecathlonTestSet",
    "annotation_path",
    "decathlon_categories",
    "heldout_split",
    "load_decathlon_domain",
    "load_decathlon_test",
]

#: Share of each category's train images held out as the labelled test split.
HELDOUT_FRACTION = 0.1
_KINDS = {"train": "train", "val": "val", "test": "test_stripped"}


@dataclass
class _Split:
    categories: list[tuple[int, str]]
    ids: np.ndarray
    paths: list[Path]
    category_ids: list[int] | None  # None: unlabelled


def annotation_path(root: Path, name: str, split: str) -> Path:
    """``root/annotations/<name>_<train|val|test_stripped>.json``."""
    return Path(root) / "annotations" / f"{name}_{_KINDS[split]}.json"


def _require_root(root: Path, name: str) -> Path:
    root = Path(root)
    if root.is_file() and root.suffix == ".json":
        raise DataError(
            f"{root} is an annotation file; give the Decathlon root folder (the one holding "
            f"annotations/{name}_train.json) instead"
        )
    return require_dir(root, f"Decathlon root for domain {name!r}")


def _require_annotation(root: Path, name: str, split: str) -> Path:
    path = annotation_path(root, name, split)
    if not path.is_file():
        what = "labelled" if split != "test" else "unlabelled (stripped)"
        raise DataError(f"annotation file not found: {path} (the {what} {split} split of {name})")
    return path


def _parse(root: Path, json_path: Path, labelled: bool) -> _Split:
    """Categories, image ids (sorted), paths and (if ``labelled``) category ids of one file."""
    obj = read_json(json_path, DataError)
    if not isinstance(obj, dict):
        raise DataError(f"{json_path}: top level must be a JSON object")
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in obj.get("categories", []))
        images = {int(im["id"]): str(im["file_name"]) for im in obj["images"]}
        annotations = [
            (int(a["image_id"]), int(a["category_id"])) for a in obj.get("annotations") or []
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{json_path}: malformed COCO-style JSON (need images[id, file_name], "
            f"annotations[image_id, category_id], categories[id, name]): {exc!r}"
        ) from None
    if not images:
        raise DataError(f"{json_path}: lists no images")
    paths = []
    for image_id in sorted(images):
        rel = Path(images[image_id])
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(
                f"{json_path}: file_name {images[image_id]!r} must be relative to {root}"
            )
        paths.append(root / rel)
    ids = np.asarray(sorted(images), dtype=np.int64)
    if not labelled:
        return _Split(categories, ids, paths, None)
    if not annotations:
        raise DataError(
            f"{json_path}: has no annotations (is it a stripped test file?); training needs "
            "the labelled train and val annotations"
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
    return _Split(categories, ids, paths, [by_image[int(i)] for i in ids])


def heldout_split(
    targets: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) sorted index arrays: per class ``round(fraction * n)`` items at random,
    at least one when the class has two or more, never all of them."""
    keep, held = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(idx.size)]
        n_held = math.floor(fraction * idx.size + 0.5)
        n_held = min(max(n_held, 1 if idx.size >= 2 else 0), idx.size - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _source(root: Path, name: str, seed: int, allow_flip: bool) -> DomainSource:
    train_json = annotation_path(root, name, "train")
    val_json = annotation_path(root, name, "val")
    train, val = _parse(root, train_json, True), _parse(root, val_json, True)
    if val.categories != train.categories:
        raise DataError(f"{val_json}: categories differ from {train_json.name}")
    if len(train.categories) < 2:
        raise DataError(f"{train_json}: domain {name!r} needs at least 2 categories")
    require_files(train.paths, train_json)
    require_files(val.paths, val_json)
    index = {cat_id: i for i, (cat_id, _) in enumerate(train.categories)}
    train_targets = np.asarray([index[c] for c in train.category_ids or []], dtype=np.int64)
    val_targets = np.asarray([index[c] for c in val.category_ids or []], dtype=np.int64)
    kept, held = heldout_split(train_targets, HELDOUT_FRACTION, domain_rng(seed, name))
    held_ids = train.ids[held]
    splits = {
        "train": SplitSource(
            train_targets[kept], files=[train.paths[i] for i in kept], ids=train.ids[kept]
        ),
        "val": SplitSource(val_targets, files=val.paths, ids=val.ids),
        "test": SplitSource(
            train_targets[held], files=[train.paths[i] for i in held], ids=held_ids
        ),
    }
    test_split = {
        "held_out_from": train_json.name,
        "fraction": HELDOUT_FRACTION,
        "seed": seed,
        "images": int(held.size),
        "image_ids_sha256": hashlib.sha256(json.dumps(held_ids.tolist()).encode()).hexdigest(),
    }
    labels = [label for _, label in train.categories]
    return DomainSource(
        name, labels, allow_flip, f"decathlon {root}", splits, {"test_split": test_split}
    )


def load_decathlon_domain(
    root: Path,
    name: str,
    image_size: int,
    cache_dir: Path,
    seed: int = 0,
    workers: int = 0,
    allow_flip: bool = True,
) -> DomainData:
    """Visual Decathlon layout: labelled ``<name>_train.json`` and ``<name>_val.json`` under
    ``root/annotations``; the test split is held out from train (module docstring). Images are
    decoded once into the cache (``workers`` processes) and read from it afterwards."""
    check_domain_name(name)
    if name.endswith("_test_stripped"):
        raise DataError(
            f"domain {name!r} names a stripped test file, which has no labels to train on; "
            f"use the domain's name ({name.removesuffix('_test_stripped')!r})"
        )
    root = _require_root(root, name)
    annotations = [_require_annotation(root, name, s) for s in ("train", "val")]
    key = {
        "kind": "decathlon",
        "name": name,
        "image_size": image_size,
        "seed": seed,
        "heldout_fraction": HELDOUT_FRACTION,
        "allow_flip": allow_flip,
        "annotations_sha256": file_digest(annotations),
    }
    folder = cache_folder(cache_dir, "decathlon", name, key)
    build = functools.partial(_source, root, name, seed, allow_flip)
    return load_or_build(folder, key, build, image_size, workers).domain()


def decathlon_categories(root: Path, name: str) -> list[tuple[int, str]]:
    """(category id, name) of the domain in label order, from ``<name>_train.json``."""
    root = _require_root(root, name)
    return _parse(root, _require_annotation(root, name, "train"), True).categories


@dataclass
class DecathlonTestSet:
    """The unlabelled test images of a domain as cached: images in image-id order and ids."""

    name: str
    images: ImageShard
    ids: np.ndarray
    annotation: Path


def _test_source(root: Path, name: str) -> DomainSource:
    json_path = annotation_path(root, name, "test")
    split = _parse(root, json_path, False)
    require_files(split.paths, json_path)
    parts = {"test_stripped": SplitSource(None, files=split.paths, ids=split.ids)}
    return DomainSource(name, [], False, f"decathlon {root}", parts)


def load_decathlon_test(
    root: Path, name: str, image_size: int, cache_dir: Path, workers: int = 0
) -> DecathlonTestSet:
    """``<name>_test_stripped.json``'s images, decoded once into the cache."""
    check_domain_name(name)
    root = _require_root(root, name)
    json_path = _require_annotation(root, name, "test")
    key = {
        "kind": "decathlon-test-stripped",
        "name": name,
        "image_size": image_size,
        "annotations_sha256": file_digest([json_path]),
    }
    folder = cache_folder(cache_dir, "decathlon", f"{name}-test_stripped", key)
    cached: CachedSplits = load_or_build(
        folder, key, functools.partial(_test_source, root, name), image_size, workers
    )
    ids = cached.ids["test_stripped"]
    assert ids is not None
    return DecathlonTestSet(name, cached.images["test_stripped"], ids, json_path)
