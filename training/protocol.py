"""The two evaluation protocols, by name, and which one a run followed.

* ``same-domain``: the backbone is pre-trained on the very domains budget-aware training then
  prunes for (the default benchmark, both times);
* ``held-out``: the backbone is pre-trained on source domains only and budget-aware training
  covers target domains it never saw (new heads, BatchNorm started from a source domain's),
  as the paper adapts an ImageNet backbone to new domains.

Every artifact records the protocol its domains followed (``manifest["protocol"]``), computed
from the backbone's data record, not declared: ``mixed`` when some domains were seen and some
not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from training.data import EMBEDDED_DOMAINS

__all__ = ["PROTOCOLS", "Protocol", "protocol_of"]


class Protocol(NamedTuple):
    """Embedded domains the backbone is pre-trained on (``source``) and those budget-aware
    training covers (``target``)."""

    source: tuple[str, ...]
    target: tuple[str, ...]

    def pretrain_domains(self) -> list[str]:
        """``--domains`` items of ``mdprune pretrain``."""
        return [f"embedded:{name}" for name in self.source]

    def train_domains(self) -> list[str]:
        """``--domains`` items of ``mdprune train``."""
        return [f"embedded:{name}" for name in self.target]


PROTOCOLS: dict[str, Protocol] = {
    "same-domain": Protocol(EMBEDDED_DOMAINS, EMBEDDED_DOMAINS),
    "held-out": Protocol(("mnist", "animals", "textures"), ("digits", "faces", "letters")),
}


def protocol_of(seen: Iterable[str], trained: Iterable[str]) -> str:
    """``same-domain`` if the backbone saw every trained domain, ``held-out`` if none of them,
    else ``mixed``."""
    seen, trained = set(seen), set(trained)
    if trained <= seen:
        return "same-domain"
    return "held-out" if not trained & seen else "mixed"
