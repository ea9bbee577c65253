"""Tiny synthetic domains and architecture for the training tests."""

from __future__ import annotations

import numpy as np

from multidomain.arch import ArchSpec
from training.data import DomainData

ARCH = ArchSpec(width_mult=0.125, image_size=16)


def synthetic_domain(name: str, classes: int, seed: int, size: int = 16) -> DomainData:
    """Class ``c`` is a bright square at a class-specific place on noise: learnable, real pixels."""
    rng = np.random.default_rng(seed)
    images, targets = {}, {}
    for split, n in (("train", 96), ("val", 24), ("test", 24)):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
        for i, c in enumerate(y):
            row = (c * 5) % (size - 4)
            x[i, row : row + 4, 2:6, c % 3] = 250
        images[split], targets[split] = x, y.astype(np.int64)
    return DomainData(
        name,
        [f"c{c}" for c in range(classes)],
        images,
        targets,
        (0.15, 0.15, 0.15),
        (0.25, 0.25, 0.25),
        True,
        "synthetic",
    )
