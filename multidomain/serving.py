"""The serving core both servers share, free of any web framework: the FastAPI service
(``service``) and the TorchServe handler (``torchserving``, shipped inside the ``.mar`` with a
copy of this package) answer with the same bodies and read the same settings.

* settings: :class:`ServingSettings`, the model-side knobs with their one set of defaults, each
  read from ``MDP_<NAME>`` (:func:`env_name`);
* serving an artifact: :meth:`ServedArtifact.build` turns a verified ``Artifact`` into one
  :class:`~multidomain.compact.CompactBackbone` (the shared weights once) and every domain's
  :class:`ServedDomain` (its network on that backbone + preprocessing);
* the three steps of a request: decode (:meth:`ServedDomain.preprocess`), predict
  (:func:`class_probabilities`) and encode (:meth:`ServedDomain.top_k`,
  :meth:`ServedArtifact.answer`);
* the one error body: :func:`error_body`.

Only torch, numpy, PIL, safetensors and ``multidomain`` may be imported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypedDict, TypeVar

import torch
from PIL import Image
from torch import Tensor, nn

from multidomain.artifact import Artifact, DomainEntry
from multidomain.compact import CompactBackbone, DomainNetwork, storage_bytes
from multidomain.preprocess import decode_to_input, eval_resize

__all__ = [
    "ALL_DOMAINS",
    "DEFAULTS",
    "ENV_PREFIX",
    "MAX_BODY_BYTES",
    "RankedClass",
    "ServedArtifact",
    "ServedDomain",
    "ServingSettings",
    "UnknownDomainError",
    "UnknownLevelError",
    "class_probabilities",
    "env_name",
    "error_body",
    "level_label",
]

#: Prefix of every environment variable the servers read.
ENV_PREFIX = "MDP_"
#: Largest request body both servers accept by default (the service's ``MDP_MAX_BODY_BYTES``,
#: TorchServe's ``max_request_size`` in the local runner).
MAX_BODY_BYTES = 8 * 1024 * 1024

_Settings = TypeVar("_Settings", bound="ServingSettings")
_Served = TypeVar("_Served", bound="ServedArtifact")


def env_name(name: str) -> str:
    """The environment variable of a setting: ``torch_threads`` -> ``MDP_TORCH_THREADS``."""
    return f"{ENV_PREFIX}{name.upper()}"


#: ``materialized_domains`` value that keeps every domain's folded network (``all``).
ALL_DOMAINS = 1_000_000


@dataclass(frozen=True)
class ServingSettings:
    """Settings of the model side, with their defaults. The TorchServe handler reads them all
    with :meth:`load`; the service declares them all among its pydantic settings with these
    defaults. Every value is an integer >= 1, but ``materialized_domains``: >= 0 or ``all``
    (:data:`ALL_DOMAINS`)."""

    torch_threads: int = 1  # intra-op threads of a forward pass
    max_image_pixels: int = 4096 * 4096  # largest width*height, checked before decoding
    default_top_k: int = 5  # classes answered when the request names no top_k
    # folded networks kept between batches (LRU); 0: fold every batch from the shared weights
    materialized_domains: int = 0

    #: Name of the configuration section ``load`` reads, used in error messages.
    SECTION: ClassVar[str] = "settings"

    @classmethod
    def load(
        cls: type[_Settings],
        section: Mapping[str, Any] | None,
        environ: Mapping[str, str] | None = None,
    ) -> _Settings:
        """From a configuration section, ``MDP_<NAME>`` variables overriding it, defaults for
        what neither sets. Raises ``ValueError`` naming the variable or ``<SECTION>.<name>``."""
        environ = os.environ if environ is None else environ
        section = section or {}
        values: dict[str, int] = {}
        for field in fields(cls):
            variable = env_name(field.name)
            raw: Any = environ.get(variable, section.get(field.name, field.default))
            where = variable if variable in environ else f"{cls.SECTION}.{field.name}"
            values[field.name] = _setting_value(field.name, raw, where)
        return cls(**values)


def _setting_value(name: str, raw: Any, where: str) -> int:
    lowest = 0 if name == "materialized_domains" else 1
    expected = f"an integer >= {lowest}" + (" or 'all'" if lowest == 0 else "")
    if lowest == 0 and isinstance(raw, str) and raw.strip().lower() == "all":
        return ALL_DOMAINS
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {expected}, got {raw!r}") from None
    if isinstance(raw, bool) or value < lowest or str(value) != str(raw).strip():
        raise ValueError(f"{where}: expected {expected}, got {raw!r}")
    return value


#: The defaults, for the service's settings and the ``.mar`` export.
DEFAULTS = ServingSettings()


def error_body(status: int, type_: str, message: str) -> dict[str, dict[str, Any]]:
    """The one error body of both servers: ``{"error": {"code", "type", "message"}}`` with the
    HTTP status, a short snake_case type and a sentence."""
    return {"error": {"code": status, "type": type_, "message": message}}


class UnknownDomainError(LookupError):
    """The model serves no domain of that name; the message lists the ones it serves."""


class RankedClass(TypedDict):
    """One class of a top-k answer, most probable first."""

    label: str
    index: int
    probability: float


def class_probabilities(network: nn.Module, images: Tensor) -> Tensor:
    """predict: a served network's softmax over classes for a uint8 batch [N, 3, S, S]."""
    with torch.inference_mode():
        return torch.softmax(network(images), dim=1)


class UnknownLevelError(LookupError):
    """The model serves no such budget level; the message lists the ones it serves."""


def level_label(budget: float) -> str:
    """A budget level as a label, a header value and a response field: ``0.5``, ``1``."""
    return f"{budget:g}"


@dataclass(frozen=True)
class ServedDomain:
    r"""One domain as served: its manifest entry, its served network at every budget level
    (uint8 pixels in, logits out: :class:`~multidomain.compact.DomainNetwork`\ s on one
    backbone, the largest level first; one level unless the artifact is nested) and its
    preprocessing."""

    entry: DomainEntry
    networks: tuple[nn.Module, ...]
    transform: Callable[[Image.Image], Tensor]

    #: dtype of the network's input: preprocessing hands over pixels, the network normalises.
    input_dtype: ClassVar[torch.dtype] = torch.uint8

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def network(self) -> nn.Module:
        """The largest level's network."""
        return self.networks[0]

    @property
    def budgets(self) -> tuple[float, ...]:
        """The budget levels served, largest first."""
        return tuple(level.budget for level in self.entry.levels)

    def level(self, budget: float | None) -> int:
        """The index of the level of ``budget`` (``None``: the largest, 0);
        ``UnknownLevelError`` listing the levels otherwise."""
        if budget is None:
            return 0
        for index, served in enumerate(self.budgets):
            if abs(served - budget) < 1e-9:
                return index
        raise UnknownLevelError(
            f"domain {self.name!r} serves no budget level {budget:g}; "
            f"its levels are {self.level_labels}"
        )

    @property
    def level_labels(self) -> str:
        """The budget levels served, largest first, as text: ``1, 0.5, 0.25``."""
        return ", ".join(level_label(b) for b in self.budgets)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self.entry.image_size
        return (3, size, size)

    def preprocess(self, data: bytes, max_pixels: int) -> Tensor:
        """decode: image bytes -> uint8 [3, S, S]. Raises ``ImageDecodeError`` or
        ``ImageTooLargeError`` (``multidomain.preprocess``)."""
        return decode_to_input(data, max_pixels, self.transform)

    def top_k(self, probabilities: Tensor, k: int) -> list[RankedClass]:
        """The ``k`` most probable classes of one image's probabilities (every class when
        ``k`` exceeds their number)."""
        labels = self.entry.labels
        values, indices = torch.topk(probabilities, min(k, len(labels)))
        return [
            RankedClass(label=labels[i], index=i, probability=p)
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]


@dataclass(frozen=True)
class ServedArtifact:
    """An artifact as served: where it was loaded from, its name, version and manifest, the
    one :class:`~multidomain.compact.CompactBackbone` holding the weights, and every domain's
    :class:`ServedDomain` on it. The artifact's own tensors are not kept."""

    path: Path
    name: str
    version: str
    manifest: Mapping[str, Any]
    domains: Mapping[str, ServedDomain]
    backbone: CompactBackbone
    artifact_weight_bytes: int

    @classmethod
    def build(
        cls: type[_Served],
        artifact: Artifact,
        materialized_domains: int = DEFAULTS.materialized_domains,
    ) -> _Served:
        """The shared weights once, ``materialized_domains`` domains' folded networks cached,
        every domain's network (eval mode) and preprocessing."""
        backbone = artifact.compact_backbone(materialized_domains)
        domains = {
            entry.name: ServedDomain(
                entry,
                tuple(
                    DomainNetwork(backbone, artifact.slot(entry.index, level))
                    for level in range(len(entry.levels))
                ),
                eval_resize(entry.image_size),
            )
            for entry in artifact.domains
        }
        return cls(
            artifact.path,
            artifact.name,
            artifact.version,
            dict(artifact.manifest),
            domains,
            backbone,
            storage_bytes(artifact.tensors()),
        )

    def resident_weight_bytes(self) -> int:
        """Bytes of the weights held between batches (``CompactBackbone.resident_bytes``)."""
        return self.backbone.resident_bytes()

    def domain(self, name: str) -> ServedDomain:
        """The served domain; ``UnknownDomainError`` listing the known ones otherwise."""
        try:
            return self.domains[name]
        except KeyError:
            known = ", ".join(sorted(self.domains))
            raise UnknownDomainError(f"unknown domain {name!r}; known domains: {known}") from None

    def answer(
        self, domain: ServedDomain, probabilities: Tensor, k: int, level: int = 0
    ) -> dict[str, Any]:
        """encode: the answer to one image, ``{"model", "version", "domain", "budget",
        "predictions"}`` (the service's ``PredictResponse``); ``budget`` is the level that
        answered."""
        return {
            "model": self.name,
            "version": self.version,
            "domain": domain.name,
            "budget": domain.budgets[level],
            "predictions": domain.top_k(probabilities, k),
        }
