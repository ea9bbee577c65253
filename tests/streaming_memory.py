"""Peak memory of the data path on a generated Decathlon domain: building its cache (decoding
in worker processes), two epochs of training batches through the DataLoader, and evaluation
batches of every split, in this process.

    python -m tests.streaming_memory ROOT NAME CACHE_DIR [--image-size 72] [--workers 2]

prints one JSON line: ``peak_growth_bytes`` (this process's peak resident set, VmHWM reset
through /proc/self/clear_refs after the imports and a warm-up, minus the resident set then),
``decoded_bytes`` (the domain's images at the image size, what an in-memory loader holds) and
the image count; ``worker_peak_growth_bytes``: the largest growth of a data-loader worker's
resident set between its first batch and the last one (``workers``: how many were seen).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import psutil

from tests.peak_memory import status_bytes
from training.data import SPLITS, DomainData, TrainBatches, iterate_eval, load_domains


def _children_rss() -> dict[int, int]:
    return {c.pid: c.memory_info().rss for c in psutil.Process().children(recursive=True)}


def _warm_up(image_size: int) -> None:
    """Allocate what the first batch allocates once (torch's kernels, the DataLoader's workers'
    first start), on a tiny in-memory domain."""
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (8, image_size, image_size, 3), np.uint8) for s in SPLITS}
    targets = {s: np.arange(8, dtype=np.int64) % 2 for s in SPLITS}
    tiny = DomainData("tiny", ["a", "b"], images, targets, (0.5,) * 3, (0.2,) * 3, True, "t")
    with TrainBatches({0: tiny}, 64, {0: 0}, workers=2) as batches:
        batches.next()
    for _ in iterate_eval(tiny, "val", 256):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("name")
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--image-size", type=int, default=72)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    _warm_up(args.image_size)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_bytes("VmRSS")
    spec = [f"decathlon:{args.name}={args.root}"]
    domain = load_domains(spec, args.cache_dir, args.image_size, 0, args.workers)[args.name]
    count = sum(domain.counts().values())
    steps = 2 * domain.counts()["train"] // 64
    with TrainBatches({0: domain}, 64, {0: 0}, workers=args.workers) as batches:
        batches.next()
        first = _children_rss()
        for _ in range(steps - 1):
            batches.next()
        last = _children_rss()
    worker_growth = [last[pid] - first[pid] for pid in first if pid in last]
    for split in SPLITS:
        for _ in iterate_eval(domain, split, 256):
            pass
    growth = status_bytes("VmHWM") - before
    decoded = count * args.image_size * args.image_size * 3
    result = {
        "peak_growth_bytes": growth,
        "decoded_bytes": decoded,
        "images": count,
        "workers": len(worker_growth),
        "worker_peak_growth_bytes": max(worker_growth, default=0),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
