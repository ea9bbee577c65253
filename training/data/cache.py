"""The on-disk cache of built domains (``<name>.npz`` + ``<name>.json`` sidecar) and the
benchmark digest.

A cached domain is used only when its sidecar records this ``CACHE_FORMAT_VERSION``, the same
name, image size and seed, and the sha256 of the ``.npz`` beside it; anything else is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from multidomain.files import atomic_path, read_json, sha256_file, write_json
from training.data.domain import SPLITS, DomainData

__all__ = [
    "CACHE_FORMAT_VERSION",
    "benchmark_digest",
    "embedded_cache_dir",
    "load_cached",
    "save_cached",
]

log = logging.getLogger(__name__)

#: Bump when the embedded builder changes: cached files with another version are rebuilt.
CACHE_FORMAT_VERSION = 1


def embedded_cache_dir(cache_dir: Path, image_size: int, seed: int) -> Path:
    """Folder holding the cached embedded domains for this size and seed."""
    return Path(cache_dir) / f"embedded-s{image_size}-seed{seed}"


def _cache_paths(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}.npz", folder / f"{name}.json"


def save_cached(folder: Path, domain: DomainData, image_size: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    npz_path, json_path = _cache_paths(folder, domain.name)
    arrays: dict[str, Any] = {}
    for s in SPLITS:
        arrays[f"images_{s}"] = domain.images[s]
        arrays[f"targets_{s}"] = domain.targets[s]
    with atomic_path(npz_path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    meta = {
        "format": CACHE_FORMAT_VERSION,
        "name": domain.name,
        "image_size": image_size,
        "seed": seed,
        "labels": domain.labels,
        "mean": list(domain.mean),
        "std": list(domain.std),
        "allow_flip": domain.allow_flip,
        "source": domain.source,
        "npz_sha256": sha256_file(npz_path),
    }
    write_json(json_path, meta)


def load_cached(folder: Path, name: str, image_size: int, seed: int) -> DomainData | None:
    """The cached domain, or None when absent, stale or corrupt (then it is rebuilt)."""
    npz_path, json_path = _cache_paths(folder, name)
    if not (npz_path.is_file() and json_path.is_file()):
        return None
    try:
        meta = read_json(json_path)
        if (
            meta.get("format") != CACHE_FORMAT_VERSION
            or meta.get("name") != name
            or meta.get("image_size") != image_size
            or meta.get("seed") != seed
            or meta.get("npz_sha256") != sha256_file(npz_path)
        ):
            log.warning("cache for %s in %s is stale or corrupt; rebuilding", name, folder)
            return None
        with np.load(npz_path, allow_pickle=False) as z:
            images = {s: z[f"images_{s}"] for s in SPLITS}
            targets = {s: z[f"targets_{s}"] for s in SPLITS}
        mean = [float(v) for v in meta["mean"]]
        std = [float(v) for v in meta["std"]]
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean/std need 3 values")
        domain = DomainData(
            name=name,
            labels=[str(v) for v in meta["labels"]],
            images=images,
            targets=targets,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            allow_flip=bool(meta["allow_flip"]),
            source=str(meta["source"]),
        )
        domain.validate()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot use cache for %s in %s (%s); rebuilding", name, folder, exc)
        return None
    return domain


def benchmark_digest(domains: dict[str, DomainData]) -> str:
    """sha256 over every domain's labels, split images and targets, in a fixed order."""
    h = hashlib.sha256()
    for name in sorted(domains):
        d = domains[name]
        h.update(json.dumps({"name": name, "labels": d.labels}).encode())
        for split in SPLITS:
            x = np.ascontiguousarray(d.images[split], dtype=np.uint8)
            y = np.ascontiguousarray(d.targets[split], dtype="<i8")
            h.update(f"{split}:{list(x.shape)}".encode())
            h.update(x.data)
            h.update(y.data)
    return h.hexdigest()
