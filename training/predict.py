"""Predictions for the Visual Decathlon's unlabelled test sets: the challenge's results file
``[{"image_id": ..., "category_id": ...}, ...]`` from an artifact.

Each domain's ``<name>_test_stripped.json`` images are decoded once into the cache at the
artifact's input size and run through the domain's served network (the compact subnetwork as
serving runs it); the predicted label maps back to the original category id (``k * 10^7 + c``)
through ``<name>_train.json``'s categories, whose names must be the artifact's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from multidomain.artifact import Artifact
from training.data import decathlon_categories, images_to_tensor, load_decathlon_test
from training.data.decathlon import annotation_path
from training.errors import DataError
from training.runtime import Runtime

__all__ = ["predict_decathlon"]


def _category_ids(artifact: Artifact, root: Path, name: str) -> list[int]:
    entry = artifact.domain(name)
    if not annotation_path(root, name, "test").is_file():
        raise DataError(f"annotation file not found: {annotation_path(root, name, 'test')}")
    categories = decathlon_categories(root, name)
    if [label for _, label in categories] != entry.labels:
        raise DataError(
            f"domain {name!r}: the artifact's {entry.num_classes} labels are not the "
            f"{len(categories)} categories of {annotation_path(root, name, 'train')} in id order"
        )
    return [cat_id for cat_id, _ in categories]


@torch.inference_mode()
def predict_decathlon(
    artifact: Artifact,
    root: Path,
    names: Sequence[str],
    cache_dir: Path,
    runtime: Runtime | None = None,
    batch_size: int = 256,
) -> tuple[list[dict[str, int]], dict[str, int]]:
    """(results in domain order then image-id order, count per domain). Every domain's files
    and labels are checked before any image is decoded."""
    runtime = runtime or Runtime()
    category_ids = {name: _category_ids(artifact, root, name) for name in names}
    results: list[dict[str, int]] = []
    counts: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name in names:
        entry = artifact.domain(name)
        test = load_decathlon_test(root, name, entry.image_size, cache_dir, runtime.workers)
        network = runtime.place(artifact.served_network(name))
        cats = torch.tensor(category_ids[name])
        for start in range(0, len(test.ids), batch_size):
            images = images_to_tensor(test.images[start : start + batch_size])
            x = images.to(runtime.device).contiguous(memory_format=runtime.memory_format())
            labels = network(x).argmax(1).cpu()
            for image_id, category in zip(
                test.ids[start : start + batch_size].tolist(), cats[labels].tolist(), strict=True
            ):
                if image_id in seen:
                    raise DataError(
                        f"{test.annotation}: image id {image_id} is also in the test set of "
                        f"{seen[image_id]!r}; results need unique ids"
                    )
                seen[image_id] = name
                results.append({"image_id": image_id, "category_id": category})
        counts[name] = len(test.ids)
    return results, counts
