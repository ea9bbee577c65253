"""Generated data in the Visual Decathlon layout as released, for tests and benchmarks:
``annotations/<name>_train.json`` and ``<name>_val.json`` (labelled, COCO-style),
``<name>_test_stripped.json`` (images only) and JPEG (or PNG) files under ``data/<name>/``.

As in the release, domain ``k``'s image and category ids are ``k * 10^7 + i`` (``i`` from 1)
and the shorter image side is the given ``short_side``; the long side varies. Class ``c`` is a
noisy image with a bright bar whose position and colour depend on ``c``, so a network can learn
it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DecathlonLayout", "write_decathlon_domain"]

_PALETTE = np.asarray(
    [(230, 40, 40), (40, 200, 60), (50, 80, 230), (220, 200, 40), (200, 60, 200), (40, 200, 210)],
    dtype=np.int16,
)


@dataclass(frozen=True)
class DecathlonLayout:
    """What ``write_decathlon_domain`` wrote: ids per split, in file order."""

    root: Path
    name: str
    category_ids: list[int]
    image_ids: dict[str, list[int]]  # train, val, test_stripped
    labels: dict[str, list[int]]  # train, val: category id per image


def _image(category: int, rng: np.random.Generator, short_side: int) -> Image.Image:
    long_side = int(short_side * rng.uniform(1.0, 1.5))
    height, width = (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)
    pixels = rng.integers(0, 70, (height, width, 3), dtype=np.int16)
    top = (category * 7) % max(1, height - height // 4)
    pixels[top : top + height // 4, :, :] += _PALETTE[category % len(_PALETTE)] // 2 + 60
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_decathlon_domain(
    root: Path,
    name: str,
    k: int,
    classes: int,
    per_class: dict[str, int],
    test_images: int,
    short_side: int = 72,
    seed: int = 0,
    image_format: str = "JPEG",
) -> DecathlonLayout:
    """Write domain ``name`` (dataset index ``k``): ``per_class["train"]`` and
    ``per_class["val"]`` labelled images per class and ``test_images`` unlabelled ones."""
    root = Path(root)
    rng = np.random.default_rng([seed, k])
    suffix = {"JPEG": "jpg", "PNG": "png"}[image_format]
    category_ids = [k * 10**7 + c + 1 for c in range(classes)]
    categories = [{"id": i, "name": f"{name}-class{c + 1:03d}"} for c, i in enumerate(category_ids)]
    next_id = k * 10**7 + 1
    image_ids: dict[str, list[int]] = {}
    labels: dict[str, list[int]] = {}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test_stripped"):
        folder = root / "data" / name / split.removesuffix("_stripped")
        folder.mkdir(parents=True, exist_ok=True)
        if split == "test_stripped":
            plan = [int(c) for c in rng.integers(0, classes, test_images)]
        else:
            plan = [c for c in range(classes) for _ in range(per_class[split])]
            plan = [plan[i] for i in rng.permutation(len(plan))]
        images: list[dict[str, object]] = []
        ids: list[int] = []
        cats: list[int] = []
        for c in plan:
            image_id, next_id = next_id, next_id + 1
            image = _image(c, rng, short_side)
            rel = f"data/{name}/{split.removesuffix('_stripped')}/{image_id}.{suffix}"
            image.save(root / rel, image_format, **({"quality": 90} if suffix == "jpg" else {}))
            images.append(
                {"id": image_id, "file_name": rel, "width": image.width, "height": image.height}
            )
            ids.append(image_id)
            cats.append(category_ids[c])
        document: dict[str, object] = {"images": images, "categories": categories}
        if split != "test_stripped":
            document["annotations"] = [
                {"id": i, "image_id": i, "category_id": cat}
                for i, cat in zip(ids, cats, strict=True)
            ]
            labels[split] = cats
        image_ids[split] = ids
        (root / "annotations" / f"{name}_{split}.json").write_text(json.dumps(document))
    return DecathlonLayout(root, name, category_ids, image_ids, labels)
