"""``load_domains``: the factory that turns ``--domains`` items into loaded domains, picking the
format from the item's prefix (``embedded``, ``imagefolder:``, ``decathlon:``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from training.data.decathlon import load_decathlon_domain
from training.data.domain import DataError, DomainData
from training.data.embedded import EMBEDDED_DOMAINS, build_embedded
from training.data.imagefolder import load_imagefolder_domain

__all__ = ["load_domains"]


def load_domains(
    spec: Sequence[str], cache_dir: Path, image_size: int, seed: int, workers: int = 0
) -> dict[str, DomainData]:
    """Load domains from spec items, in order, through the on-disk cache under ``cache_dir``
    (user images are decoded into it once, by ``workers`` processes).

    Items: ``embedded`` (all embedded domains), ``embedded:<name>``,
    ``imagefolder:<name>=<path>`` or ``decathlon:<name>=<path>``.
    """
    if not spec:
        raise DataError("no domains given")
    plan: list[tuple[str, str, Path | None]] = []
    for item in spec:
        kind, _, rest = item.strip().partition(":")
        if kind == "embedded" and not rest:
            plan.extend(("embedded", n, None) for n in EMBEDDED_DOMAINS)
        elif kind == "embedded":
            plan.append(("embedded", rest, None))
        elif kind in ("imagefolder", "decathlon"):
            name, eq, location = rest.partition("=")
            if not eq or not name or not location:
                raise DataError(f"bad domain spec {item!r}: expected {kind}:<name>=<path>")
            plan.append((kind, name, Path(location).expanduser()))
        else:
            raise DataError(
                f"bad domain spec {item!r}: expected embedded, embedded:<name>, "
                "imagefolder:<name>=<path> or decathlon:<name>=<path>"
            )
    names = [name for _, name, _ in plan]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"domain names given more than once: {', '.join(duplicates)}")
    cache_dir = Path(cache_dir)
    embedded = build_embedded(
        cache_dir, image_size, seed, [n for k, n, _ in plan if k == "embedded"]
    )
    out: dict[str, DomainData] = {}
    for kind, name, path in plan:
        if kind == "embedded":
            out[name] = embedded[name]
        elif kind == "imagefolder":
            assert path is not None
            out[name] = load_imagefolder_domain(path, name, image_size, cache_dir, seed, workers)
        else:
            assert path is not None
            out[name] = load_decathlon_domain(path, name, image_size, cache_dir, seed, workers)
    return out
