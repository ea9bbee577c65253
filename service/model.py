"""The served model: an artifact loaded and verified once, its domains' compact subnetworks
and preprocessing, and the description the API returns."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from multidomain.artifact import DomainEntry, load_artifact, resolve_artifact
from multidomain.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_to_input,
    eval_resize,
)
from service.engine import DomainModel
from service.errors import BadImage, ImageTooLarge, UnknownDomain
from service.schemas import DomainDetail, DomainSummary, ModelSummary
from service.settings import ServiceSettings


@dataclass(frozen=True)
class ServedDomain:
    entry: DomainEntry
    transform: Callable[[Image.Image], Tensor]

    def preprocess(self, data: bytes, max_pixels: int) -> Tensor:
        """Image bytes -> uint8 [3, S, S] tensor (the served network normalises whole batches);
        ``BadImage`` or ``ImageTooLarge``."""
        try:
            return decode_to_input(data, max_pixels, self.transform)
        except ImageTooLargeError as exc:
            raise ImageTooLarge(str(exc)) from None
        except ImageDecodeError as exc:
            raise BadImage(str(exc)) from None


@dataclass(frozen=True)
class ServedModel:
    artifact_path: str
    manifest: dict[str, Any]
    domains: dict[str, ServedDomain]

    @property
    def name(self) -> str:
        return str(self.manifest["model_name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def budget(self) -> float | None:
        return _number(self.manifest.get("budget"))

    @property
    def sharing(self) -> str | None:
        sharing = self.manifest.get("sharing")
        value = sharing.get("variant") if isinstance(sharing, dict) else sharing
        return value if isinstance(value, str) else None

    def domain(self, name: str) -> ServedDomain:
        try:
            return self.domains[name]
        except KeyError:
            known = ", ".join(sorted(self.domains))
            raise UnknownDomain(f"unknown domain {name!r}; known domains: {known}") from None

    def summary(self) -> ModelSummary:
        backbone = self.manifest.get("backbone")
        compact = self.manifest.get("compact")
        backbone = backbone if isinstance(backbone, dict) else {}
        compact = compact if isinstance(compact, dict) else {}
        return ModelSummary(
            model=self.name,
            version=self.version,
            budget=self.budget,
            budget_metric=_text(self.manifest.get("budget_metric")),
            sharing=self.sharing,
            backbone_params=_integer(backbone.get("params")),
            backbone_macs=_integer(backbone.get("macs")),
            compact_params=_integer(compact.get("params")),
            compact_params_fraction=_number(compact.get("params_fraction")),
            created_at=_text(self.manifest.get("created_at")),
            domains=[self._domain_summary(d.entry) for d in self.domains.values()],
        )

    def detail(self, name: str) -> DomainDetail:
        entry = self.domain(name).entry
        return DomainDetail(
            **self._domain_summary(entry).model_dump(),
            model=self.name,
            version=self.version,
            budget=self.budget,
            budget_metric=_text(self.manifest.get("budget_metric")),
            sharing=self.sharing,
            labels=list(entry.labels),
            mean=list(entry.mean),
            std=list(entry.std),
            channels_per_block=list(entry.mid_channels),
        )

    @staticmethod
    def _domain_summary(entry: DomainEntry) -> DomainSummary:
        info = entry.info
        return DomainSummary(
            name=entry.name,
            num_classes=entry.num_classes,
            image_size=entry.image_size,
            channels=sum(entry.mid_channels),
            params=_integer(info.get("params")),
            macs=_integer(info.get("macs")),
            params_fraction=_number(info.get("params_fraction")),
            macs_fraction=_number(info.get("macs_fraction")),
            val_accuracy=_number(info.get("val_accuracy")),
            test_accuracy=_number(info.get("test_accuracy")),
        )


def load_served_model(settings: ServiceSettings) -> tuple[ServedModel, dict[str, DomainModel]]:
    """Resolve, verify and load the artifact; build every domain's compact subnetwork once.
    Raises ``ArtifactError`` naming what is wrong."""
    path = resolve_artifact(settings.model_store, settings.model_name, settings.model_version)
    artifact = load_artifact(path)
    domains: dict[str, ServedDomain] = {}
    networks: dict[str, DomainModel] = {}
    for entry in artifact.domains:
        size = entry.image_size
        domains[entry.name] = ServedDomain(entry, eval_resize(size))
        networks[entry.name] = DomainModel(
            artifact.served_network(entry.name), (3, size, size), torch.uint8
        )
    return ServedModel(str(path), dict(artifact.manifest), domains), networks


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
