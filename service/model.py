"""The served model: an artifact loaded and verified once, every domain's compact subnetwork and
preprocessing (:mod:`multidomain.serving`), the first and last of a request's three steps in the
service's terms (decode: ``preprocess``; encode: ``encode``/``encode_batch``; predict is
``InferenceEngine.predict``), and the description the API returns."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from multidomain.artifact import ArtifactError, DomainEntry, LevelEntry, load_artifact
from multidomain.preprocess import ImageDecodeError, ImageTooLargeError
from multidomain.serving import (
    ServedArtifact,
    ServedDomain,
    UnknownDomainError,
    UnknownLevelError,
)
from multidomain.store import resolve_artifact
from service.engine import Answer, DomainModel
from service.errors import BadImage, ImageTooLarge, UnknownDomain, UnknownLevel
from service.schemas import (
    BatchItem,
    BatchPredictResponse,
    DomainDetail,
    DomainSummary,
    LevelSummary,
    ModelSummary,
    PredictResponse,
)
from service.settings import ServiceSettings

__all__ = ["ServedModel", "load_served_model"]


class ServedModel(ServedArtifact):
    """:class:`~multidomain.serving.ServedArtifact` with the service's errors and schemas."""

    @property
    def budget(self) -> float | None:
        return _number(self.manifest.get("budget"))

    @property
    def sharing(self) -> str | None:
        sharing = self.manifest.get("sharing")
        value = sharing.get("variant") if isinstance(sharing, dict) else sharing
        return value if isinstance(value, str) else None

    def domain(self, name: str) -> ServedDomain:
        """The served domain; ``UnknownDomain`` (404) listing the known ones otherwise."""
        try:
            return super().domain(name)
        except UnknownDomainError as exc:
            raise UnknownDomain(str(exc)) from None

    @staticmethod
    def preprocess(domain: ServedDomain, data: bytes, max_pixels: int) -> Tensor:
        """decode: image bytes -> uint8 [3, S, S] tensor (the served network normalises whole
        batches); ``BadImage`` or ``ImageTooLarge``."""
        try:
            return domain.preprocess(data, max_pixels)
        except ImageTooLargeError as exc:
            raise ImageTooLarge(str(exc)) from None
        except ImageDecodeError as exc:
            raise BadImage(str(exc)) from None

    def encode(
        self, domain: ServedDomain, probabilities: Tensor, top_k: int, level: int = 0
    ) -> PredictResponse:
        """encode: the answer to one image, computed at ``level``."""
        return PredictResponse.model_validate(self.answer(domain, probabilities, top_k, level))

    def encode_batch(
        self, domain: ServedDomain, rows: Sequence[Answer], top_k: int
    ) -> BatchPredictResponse:
        """encode: the answer to a batch, one entry per image in request order."""
        budgets = domain.budgets
        return BatchPredictResponse(
            model=self.name,
            version=self.version,
            domain=domain.name,
            results=[
                BatchItem.model_validate(
                    {
                        "budget": budgets[row.level],
                        "predictions": domain.top_k(row.probabilities, top_k),
                    }
                )
                for row in rows
            ],
        )

    def level(self, domain: ServedDomain, budget: object) -> int:
        """The level a request names (``?budget=``, ``X-Budget`` or a parameter; ``None``: the
        largest); ``UnknownLevel`` (422) listing the domain's levels otherwise."""
        if budget is None:
            return 0
        value = math.nan
        if isinstance(budget, str):
            with contextlib.suppress(ValueError):
                value = float(budget)
        elif isinstance(budget, int | float) and not isinstance(budget, bool):
            value = float(budget)
        try:
            if not math.isfinite(value):
                raise UnknownLevelError(
                    f"budget {budget!r} is not a number; the levels of domain {domain.name!r} "
                    f"are {domain.level_labels}"
                )
            return domain.level(value)
        except UnknownLevelError as exc:
            raise UnknownLevel(str(exc)) from None

    def requested_level(self, domain: ServedDomain, named: Mapping[str, object]) -> int:
        """The level a request names in any of several places (where -> value, ``None``: not
        given): the largest when none names one; ``UnknownLevel`` (422) when one names no level
        of the domain, or two name different levels."""
        given = {
            where: self.level(domain, value) for where, value in named.items() if value is not None
        }
        if len(set(given.values())) > 1:
            both = " and ".join(f"{where} {named[where]!r}" for where in given)
            raise UnknownLevel(
                f"the request names two different budget levels, {both}; name one level of "
                f"domain {domain.name!r}: {domain.level_labels}"
            )
        return next(iter(given.values()), 0)

    @property
    def budgets(self) -> list[float]:
        """The budget levels every domain serves, largest first."""
        first = next(iter(self.domains.values()))
        return list(first.budgets)

    def summary(self) -> ModelSummary:
        backbone = self.manifest.get("backbone")
        compact = self.manifest.get("compact")
        backbone = backbone if isinstance(backbone, dict) else {}
        compact = compact if isinstance(compact, dict) else {}
        return ModelSummary(
            **self._model_fields(),
            backbone_params=_integer(backbone.get("params")),
            backbone_macs=_integer(backbone.get("macs")),
            compact_params=_integer(compact.get("params")),
            compact_params_fraction=_number(compact.get("params_fraction")),
            channel_group=_integer(self.manifest.get("channel_group")),
            artifact_weight_bytes=self.artifact_weight_bytes,
            resident_weight_bytes=self.resident_weight_bytes(),
            created_at=_text(self.manifest.get("created_at")),
            domains=[self._domain_summary(d.entry) for d in self.domains.values()],
        )

    def detail(self, name: str) -> DomainDetail:
        entry = self.domain(name).entry
        model = {k: v for k, v in self._model_fields().items() if k != "budget"}  # the domain's
        return DomainDetail(
            **self._domain_summary(entry).model_dump(),
            **model,
            labels=list(entry.labels),
            mean=list(entry.mean),
            std=list(entry.std),
            channels_per_block=list(entry.mid_channels),
        )

    def _model_fields(self) -> dict[str, Any]:
        """What both descriptions say about the model."""
        return {
            "model": self.name,
            "version": self.version,
            "budget": self.budget,
            "budget_metric": _text(self.manifest.get("budget_metric")),
            "sharing": self.sharing,
        }

    def _domain_summary(self, entry: DomainEntry) -> DomainSummary:
        info = entry.info
        latency: dict[str, Any] = info["latency"] if isinstance(info.get("latency"), dict) else {}
        return DomainSummary(
            name=entry.name,
            num_classes=entry.num_classes,
            image_size=entry.image_size,
            channels=sum(entry.mid_channels),
            params=_integer(info.get("params")),
            macs=_integer(info.get("macs")),
            params_fraction=_number(info.get("params_fraction")),
            macs_fraction=_number(info.get("macs_fraction")),
            budget=_number(info.get("budget", self.budget)),
            measured_time_fraction=_fractions(latency.get("measured_fraction")),
            predicted_time_fraction=_fractions(latency.get("predicted_fraction")),
            val_accuracy=_number(info.get("val_accuracy")),
            test_accuracy=_number(info.get("test_accuracy")),
            levels=[_level_summary(level) for level in entry.levels],
        )


def _level_summary(level: LevelEntry) -> LevelSummary:
    info = level.info
    latency: dict[str, Any] = info["latency"] if isinstance(info.get("latency"), dict) else {}
    return LevelSummary(
        budget=level.budget,
        channels=sum(level.mid_channels),
        params=_integer(info.get("params")),
        macs=_integer(info.get("macs")),
        params_fraction=_number(info.get("params_fraction")),
        macs_fraction=_number(info.get("macs_fraction")),
        measured_time_fraction=_fractions(latency.get("measured_fraction")),
        test_accuracy=_number(info.get("test_accuracy")),
    )


def load_served_model(
    settings: ServiceSettings, path: Path | None = None
) -> tuple[ServedModel, dict[str, DomainModel]]:
    """Verify and load the artifact at ``path`` (default: the one the settings name); build
    every domain's compact subnetwork once. Raises ``ArtifactError`` naming what is wrong, also
    when ``model_digest`` pins another artifact (the digest is the weights file's sha256, which
    covers the manifest too: the weights record the manifest's digest)."""
    if path is None:
        path = resolve_artifact(settings.model_store, settings.model_name, settings.model_version)
    artifact = load_artifact(path)  # verifies the weights against the manifest's sha256
    digest = artifact.manifest["weights_sha256"]
    if settings.model_digest is not None and digest != settings.model_digest:
        raise ArtifactError(
            f"{path} has digest {digest}, but MDP_MODEL_DIGEST pins {settings.model_digest}: "
            "refusing to serve another artifact"
        )
    model = ServedModel.build(artifact, settings.materialized_domains)
    networks = {
        name: DomainModel(
            domain.network, domain.input_shape, domain.input_dtype, domain.networks[1:]
        )
        for name, domain in model.domains.items()
    }
    return model, networks


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fractions(value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict):
        return None
    numbers = {str(k): _number(v) for k, v in value.items()}
    return {k: v for k, v in numbers.items() if v is not None} or None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
