"""``load_domains``: the factory that turns ``--domains`` items into loaded domains, picking the
format from the item's prefix (``embedded``, ``imagefolder:``, ``decathlon:``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from training.data.decathlon import load_decathlon_domain
from training.data.domain import DataError, DomainData
from training.data.embedded import EMBEDDED_DOMAINS, KNOWN_EMBEDDED_DOMAINS, build_embedded
from training.data.imagefolder import load_imagefolder_domain

__all__ = ["DomainPlan", "load_domains", "plan_domains"]


DomainPlan = list[tuple[str, str, Path | None]]


def plan_domains(spec: Sequence[str], image_size: int) -> DomainPlan:
    """Check ``--domains`` items without loading anything: their syntax, unique names, known
    embedded names, existing user paths and the image size. Returns ``(kind, name, path)``."""
    if not spec:
        raise DataError("no domains given")
    if image_size < 8:
        raise DataError(f"image_size must be >= 8, got {image_size}")
    plan: DomainPlan = []
    for item in spec:
        kind, _, rest = item.strip().partition(":")
        if kind == "embedded" and not rest:
            plan.extend(("embedded", n, None) for n in EMBEDDED_DOMAINS)
        elif kind == "embedded":
            if rest not in KNOWN_EMBEDDED_DOMAINS:
                raise DataError(
                    f"unknown embedded domain {rest!r}; known: {', '.join(KNOWN_EMBEDDED_DOMAINS)}"
                )
            plan.append(("embedded", rest, None))
        elif kind in ("imagefolder", "decathlon"):
            name, eq, location = rest.partition("=")
            if not eq or not name or not location:
                raise DataError(f"bad domain spec {item!r}: expected {kind}:<name>=<path>")
            path = Path(location).expanduser()
            if not path.exists():
                raise DataError(f"{kind} domain {name!r}: {path} does not exist")
            plan.append((kind, name, path))
        else:
            raise DataError(
                f"bad domain spec {item!r}: expected embedded, embedded:<name>, "
                "imagefolder:<name>=<path> or decathlon:<name>=<path>"
            )
    names = [name for _, name, _ in plan]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"domain names given more than once: {', '.join(duplicates)}")
    return plan


def load_domains(
    spec: Sequence[str], cache_dir: Path, image_size: int, split_seed: int, workers: int = 0
) -> dict[str, DomainData]:
    """Load domains from spec items, in order, after checking them all (``plan_domains``),
    through the on-disk cache under ``cache_dir`` (user images are decoded into it once, by
    ``workers`` processes). ``split_seed`` draws every seeded split (and the animals subset);
    it is not the training seed.

    Items: ``embedded`` (the default embedded domains), ``embedded:<name>`` (any of
    ``KNOWN_EMBEDDED_DOMAINS``),
    ``imagefolder:<name>=<path>`` or ``decathlon:<name>=<path>``.
    """
    plan = plan_domains(spec, image_size)
    cache_dir = Path(cache_dir)
    embedded = build_embedded(
        cache_dir, image_size, split_seed, [n for k, n, _ in plan if k == "embedded"]
    )
    out: dict[str, DomainData] = {}
    for kind, name, path in plan:
        if kind == "embedded":
            out[name] = embedded[name]
        elif kind == "imagefolder":
            assert path is not None
            out[name] = load_imagefolder_domain(
                path, name, image_size, cache_dir, split_seed, workers
            )
        else:
            assert path is not None
            out[name] = load_decathlon_domain(
                path, name, image_size, cache_dir, split_seed, workers
            )
    return out
