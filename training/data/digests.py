"""What data a run saw, and the check that a backbone did not train on a run's test images.

A domain's digest is the sha256 over its name, its labels and each split's digest (``split_digest``:
the split's shape, image bytes in order and targets), so it identifies the split *content*, not
the seed or path that produced it: the same images in the same splits give the same digest, any
image moved between splits another. The overall digest is the sha256 over the domains' digests
(sorted by name). The backbone record and every artifact manifest hold the run's ``data``
record: ``{"split_seed", "digest", "domains": {name: digest}}``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from training.data.domain import SPLITS, DataError, DomainData
from training.data.store import split_digest

__all__ = [
    "benchmark_digest",
    "check_same_splits",
    "data_record",
    "domain_digest",
    "overall_digest",
]


def domain_digest(domain: DomainData) -> str:
    """sha256 over the domain's name, labels and split digests (those its cache recorded at
    build time, else computed from the images)."""
    h = hashlib.sha256(json.dumps({"name": domain.name, "labels": domain.labels}).encode())
    for split in SPLITS:
        digest = domain.digests.get(split) or split_digest(
            domain.images[split], domain.targets[split]
        )
        h.update(f"{split}:{digest}".encode())
    return h.hexdigest()


def overall_digest(digests: Mapping[str, str]) -> str:
    """sha256 over ``name:digest`` lines, sorted by name."""
    lines = "".join(f"{name}:{digests[name]}\n" for name in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def benchmark_digest(domains: Mapping[str, DomainData]) -> str:
    """The overall digest of loaded domains (what ``mdprune data`` prints)."""
    return overall_digest({name: domain_digest(d) for name, d in domains.items()})


def data_record(
    domains: Iterable[DomainData], split_seed: int, inherited: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``data`` record of a run over ``domains``; ``inherited`` adds the digests of domains
    an initialising backbone saw (a backbone records everything its weights were trained on)."""
    digests = dict(inherited or {})
    digests.update({d.name: domain_digest(d) for d in domains})
    return {"split_seed": split_seed, "digest": overall_digest(digests), "domains": digests}


def check_same_splits(seen: Any, run: Mapping[str, Any], backbone_dir: Path) -> None:
    """Refuse a backbone (record ``seen``, its ``data``) pre-trained on other splits of a domain
    than this ``run`` uses: its training images could be in the run's test split."""
    if not isinstance(seen, Mapping) or not isinstance(seen.get("domains"), Mapping):
        raise DataError(
            f"the backbone in {backbone_dir} records no data digest (pre-trained before split "
            "digests were recorded), so its training split cannot be checked against this "
            "run's test split; pre-train it again"
        )
    shared = sorted(set(seen["domains"]) & set(run["domains"]))
    differ = [name for name in shared if seen["domains"][name] != run["domains"][name]]
    if not differ:
        return
    name = differ[0]
    more = f" (and {len(differ) - 1} more: {', '.join(differ[1:])})" if len(differ) > 1 else ""
    if seen.get("split_seed") != run.get("split_seed"):
        cause = (
            f"--split-seed {run.get('split_seed')} here but {seen.get('split_seed')} for the "
            "backbone, so its training images would be in this run's test split"
        )
    else:
        cause = (
            "the data changed since pre-training (other images, image size or package "
            "versions); pre-train the backbone on this data"
        )
    raise DataError(
        f"domain {name!r}{more}: the backbone in {backbone_dir} was pre-trained on other splits "
        f"(data digest {seen['domains'][name]}) than this run's (data digest "
        f"{run['domains'][name]}); likely cause: {cause}"
    )
