"""The artifact that training hands to serving: ``weights.safetensors`` + ``manifest.json``.

Tensor names in the weights file:

* shared, compact convolutions: the ``ResNet26`` names of every conv weight, with the union of
  all domains' mid channels only (``blocks.<i>.conv1.weight`` is ``[union_i, in, 3, 3]``);
* per domain ``k`` (its position in ``manifest["domains"]``): ``domains.<k>.<name>`` for every
  BatchNorm tensor and the head, where ``<name>`` is the ``ResNet26`` name without the BN-set
  index (``domains.0.blocks.3.bn1.weight``); ``bn1`` holds the domain's own channels only.

* nested levels (``manifest["budgets"]``, largest first): level ``j >= 1`` of domain ``k`` has
  its own BatchNorm tensors ``levels.<j>.<k>.<name>`` (``bn1`` with the level's channels only)
  and, when ``manifest["level_state"]`` is ``"private"``, its own head (``levels.<j>.<k>.head.*``;
  otherwise it shares the domain's); level 0 is the domain's own tensors.

Each domain lists, per block, the indices (into the compact union) of the mid channels it uses;
a nested artifact's domain also lists every level's (``levels[j]["channels"]``), each level's
channels within the level above's.
Loading verifies the manifest schema, the weights' sha256 and every tensor's shape, and refuses
anything else with an ``ArtifactError`` that names what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor

from multidomain.arch import ArchitectureError, ArchSpec
from multidomain.compact import CompactBackbone
from multidomain.files import apply_umask_mode, sha256_file
from multidomain.fold import DomainFold, FoldedNetwork, channels_last_weights, fold_weights
from multidomain.network import ResNet26, split_state_dict

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LEVEL_STATES",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "Artifact",
    "ArtifactError",
    "DomainEntry",
    "LevelEntry",
    "LevelState",
    "check_name",
    "load_artifact",
    "manifest_digest",
    "sha256_file",
    "split_state_dict",
    "subnet_state_dict",
    "write_artifact",
]

FORMAT_NAME = "multidomain-pruning-artifact"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
#: a nested artifact's ``level_state``: its lower levels hold their own heads (private) or share
#: the domain's (shared, also an artifact that records none)
LevelState = Literal["private", "shared"]
LEVEL_STATES: tuple[LevelState, ...] = ("private", "shared")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


class ArtifactError(ValueError):
    """A missing, corrupt or mismatched artifact."""


def check_name(kind: str, value: str) -> str:
    if not _NAME_PATTERN.match(value):
        raise ArtifactError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '_', '-', '.' "
            "starting with a letter or digit"
        )
    return value


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a manifest without its ``weights_sha256`` field; it is
    stored inside the weights file, so the weights' hash covers the manifest too."""
    body = {k: v for k, v in manifest.items() if k != "weights_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def subnet_state_dict(
    domain_tensors: Mapping[str, Tensor],
    shared: Mapping[str, Tensor],
    channels: Sequence[Sequence[int]],
) -> dict[str, Tensor]:
    """State dict of a one-domain ``ResNet26`` holding only the domain's mid channels."""
    state: dict[str, Tensor] = {}
    for name, tensor in shared.items():
        match = re.match(r"^blocks\.(\d+)\.conv([12])\.weight$", name)
        if match:
            index = torch.as_tensor(channels[int(match[1])], dtype=torch.long)
            dim = 0 if match[2] == "1" else 1
            tensor = tensor.index_select(dim, index)
        state[name] = tensor.contiguous()
    for name, tensor in domain_tensors.items():
        if name.startswith("head."):
            state[f"heads.0.{name.removeprefix('head.')}"] = tensor
        else:
            prefix, leaf = name.rsplit(".", 1)
            state[f"{prefix}.0.{leaf}"] = tensor
            if leaf == "running_var":
                state[f"{prefix}.0.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return state


@dataclass(frozen=True)
class LevelEntry:
    """One budget level of a domain: its budget, its channels (indices into the compact
    union) and what the manifest records about it."""

    budget: float
    channels: list[list[int]]
    info: dict[str, Any]

    @property
    def mid_channels(self) -> list[int]:
        return [len(c) for c in self.channels]


@dataclass(frozen=True)
class DomainEntry:
    index: int
    name: str
    labels: list[str]
    channels: list[list[int]]
    image_size: int
    mean: list[float]
    std: list[float]
    info: dict[str, Any]
    #: largest budget first; one level (the domain's budget) unless the artifact is nested
    levels: tuple[LevelEntry, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def mid_channels(self) -> list[int]:
        return [len(c) for c in self.channels]


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]
    arch: ArchSpec
    domains: list[DomainEntry]
    shared: dict[str, Tensor]
    domain_tensors: list[dict[str, Tensor]]
    #: ``level_tensors[j - 1][k]``: the BatchNorm tensors of level ``j >= 1`` of domain ``k``
    level_tensors: list[list[dict[str, Tensor]]] = field(default_factory=list)

    @property
    def budgets(self) -> list[float]:
        """The served budget levels, largest first (one unless the artifact is nested)."""
        return [level.budget for level in self.domains[0].levels]

    @property
    def name(self) -> str:
        return str(self.manifest["model_name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def domain(self, name: str) -> DomainEntry:
        for entry in self.domains:
            if entry.name == name:
                return entry
        known = ", ".join(d.name for d in self.domains)
        raise KeyError(f"unknown domain {name!r}; known domains: {known}")

    def subnet(self, name: str) -> ResNet26:
        """The domain's compact subnetwork: only its own channels, gathered once, eval mode."""
        entry = self.domain(name)
        net = ResNet26(self.arch, [entry.num_classes], entry.mid_channels)
        state = subnet_state_dict(self.domain_tensors[entry.index], self.shared, entry.channels)
        net.load_state_dict(state, strict=True)
        return net.eval()

    def level_domain_tensors(self, name: str, level: int = 0) -> dict[str, Tensor]:
        """A domain's BatchNorm and head tensors at one level (``0``: the largest)."""
        entry = self.domain(name)
        tensors = self.domain_tensors[entry.index]
        if level == 0:
            return tensors
        return {**tensors, **self.level_tensors[level - 1][entry.index]}

    def level_subnet(self, name: str, level: int) -> ResNet26:
        """The domain's compact subnetwork at one level (``subnet`` at level 0)."""
        entry = self.domain(name)
        channels = entry.levels[level].channels
        net = ResNet26(self.arch, [entry.num_classes], [len(c) for c in channels])
        tensors = self.level_domain_tensors(name, level)
        net.load_state_dict(subnet_state_dict(tensors, self.shared, channels), strict=True)
        return net.eval()

    def fold(self, name: str, level: int = 0) -> DomainFold:
        """What the domain (at one level, ``0`` the largest) adds to the shared convolutions,
        ready to fold (``multidomain.fold``)."""
        entry = self.domain(name)
        tensors = self.level_domain_tensors(name, level)
        channels = entry.levels[level].channels
        return DomainFold.from_tensors(self.arch, tensors, channels, entry.mean, entry.std)

    def served_network(self, name: str, level: int = 0) -> FoldedNetwork:
        """What serving runs for a domain, as a dense network of its own (uint8 pixels in,
        logits out): its channels of the shared weights with its BatchNorm folded in."""
        return fold_weights(self.arch, channels_last_weights(self.shared), self.fold(name, level))

    def slot(self, domain: int, level: int) -> int:
        """The position of a domain's level among ``compact_backbone``'s folds."""
        return domain * len(self.budgets) + level

    def compact_backbone(self, materialized_domains: int) -> CompactBackbone:
        """Every domain at every level served from one copy of the shared weights
        (``multidomain.compact``; the fold of domain ``k``, level ``j`` at ``slot(k, j)``),
        ``materialized_domains`` folded networks cached."""
        folds = [
            self.fold(entry.name, level)
            for entry in self.domains
            for level in range(len(entry.levels))
        ]
        return CompactBackbone(self.arch, self.shared, folds, materialized_domains)

    def tensors(self) -> list[Tensor]:
        """Every tensor of the weights file."""
        levels = [t for level in self.level_tensors for d in level for t in d.values()]
        return [
            *self.shared.values(),
            *(t for d in self.domain_tensors for t in d.values()),
            *levels,
        ]


def write_artifact(
    out_dir: Path,
    manifest: dict[str, Any],
    shared: Mapping[str, Tensor],
    domain_tensors: Sequence[Mapping[str, Tensor]],
    level_tensors: Sequence[Sequence[Mapping[str, Tensor]]] = (),
) -> Path:
    """Write atomically: a temporary folder beside ``out_dir`` renamed into place at the end,
    with the modes the umask gives (readable by other users under umask 022).
    ``level_tensors[j - 1][k]``: BatchNorm tensors of nested level ``j`` of domain ``k``."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ArtifactError(f"artifact folder already exists: {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in shared.items()}
    for k, named in enumerate(domain_tensors):
        tensors.update(
            {f"domains.{k}.{n}": t.detach().cpu().contiguous() for n, t in named.items()}
        )
    for j, level in enumerate(level_tensors, start=1):
        for k, named in enumerate(level):
            tensors.update(
                {f"levels.{j}.{k}.{n}": t.detach().cpu().contiguous() for n, t in named.items()}
            )
    body = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest}
    body["weights_file"] = WEIGHTS_FILE
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        metadata = {"format": FORMAT_NAME, "manifest_sha256": manifest_digest(body)}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
        full = {**body, "weights_sha256": sha256_file(tmp / WEIGHTS_FILE)}
        (tmp / MANIFEST_FILE).write_text(json.dumps(full, indent=2) + "\n")
        load_artifact(tmp)  # refuse to publish anything that does not load back
        for path in (tmp / WEIGHTS_FILE, tmp / MANIFEST_FILE, tmp):
            apply_umask_mode(path)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ArtifactError(f"manifest: missing field {where}{key}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ArtifactError(f"manifest: field {where}{key} has the wrong type")
    return value


def _parse_domain(
    k: int,
    raw: Any,
    arch: ArchSpec,
    union: list[int],
    budgets: list[float] | None,
    default_budget: float,
) -> DomainEntry:
    if not isinstance(raw, dict):
        raise ArtifactError(f"manifest: domains[{k}] is not an object")
    where = f"domains[{k}]."
    name = check_name("domain name", _require(raw, "name", str, where))
    labels = _require(raw, "labels", list, where)
    if len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f"manifest: {where}labels must be >= 2 strings")
    channels = _require(raw, "channels", list, where)
    if len(channels) != len(union):
        raise ArtifactError(
            f"manifest: {where}channels has {len(channels)} blocks, expected {len(union)}"
        )
    _check_channels(channels, union, where)
    mean = _require(raw, "mean", list, where)
    std = _require(raw, "std", list, where)
    if len(mean) != arch.in_channels or len(std) != arch.in_channels or min(std) <= 0:
        raise ArtifactError(
            f"manifest: {where}mean/std must be {arch.in_channels} numbers, std > 0"
        )
    image_size = _require(raw, "image_size", int, where)
    info = {
        key: value
        for key, value in raw.items()
        if key not in {"name", "labels", "channels", "mean", "std", "image_size", "levels"}
    }
    if budgets is None:
        budget = info.get("budget")
        if isinstance(budget, bool) or not isinstance(budget, int | float):
            budget = default_budget
        levels: tuple[LevelEntry, ...] = (LevelEntry(float(budget), channels, info),)
    else:
        levels = _parse_levels(raw, where, budgets, channels, union)
    return DomainEntry(
        k,
        name,
        labels,
        channels,
        image_size,
        [float(m) for m in mean],
        [float(s) for s in std],
        info,
        levels,
    )


def _check_channels(channels: Any, union: list[int], where: str) -> None:
    for b, (idx, width) in enumerate(zip(channels, union, strict=True)):
        ok = isinstance(idx, list) and idx and all(isinstance(i, int) for i in idx)
        if not ok or idx != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= width:
            raise ArtifactError(
                f"manifest: {where}channels[{b}] must be sorted unique indices in [0, {width})"
            )


def _parse_budgets(manifest: Mapping[str, Any]) -> list[float] | None:
    """The nested levels' budgets, largest first; ``None`` for an artifact of one budget."""
    if "budgets" not in manifest:
        return None
    budgets = manifest["budgets"]
    ok = isinstance(budgets, list) and len(budgets) >= 2
    ok = ok and all(isinstance(b, int | float) and not isinstance(b, bool) for b in budgets)
    if not ok or any(not 0 < b <= 1 for b in budgets) or budgets != sorted(set(budgets))[::-1]:
        raise ArtifactError(
            "manifest: budgets must be >= 2 different numbers in (0, 1], largest first"
        )
    return [float(b) for b in budgets]


def _parse_levels(
    raw: Mapping[str, Any],
    where: str,
    budgets: list[float],
    channels: list[list[int]],
    union: list[int],
) -> tuple[LevelEntry, ...]:
    """A nested domain's levels: one per budget, the first with the domain's channels, each
    within the one above (nesting)."""
    levels = _require(raw, "levels", list, where)
    if len(levels) != len(budgets):
        raise ArtifactError(
            f"manifest: {where}levels has {len(levels)} entries, expected {len(budgets)}"
        )
    parsed: list[LevelEntry] = []
    for j, (level, budget) in enumerate(zip(levels, budgets, strict=True)):
        at = f"{where}levels[{j}]."
        if not isinstance(level, dict) or level.get("budget") != budget:
            raise ArtifactError(f"manifest: {at}budget must be {budget:g}")
        own = _require(level, "channels", list, at)
        if len(own) != len(union):
            raise ArtifactError(
                f"manifest: {at}channels has {len(own)} blocks, expected {len(union)}"
            )
        _check_channels(own, union, at)
        above = channels if j == 0 else parsed[-1].channels
        if j == 0 and own != channels:
            raise ArtifactError(f"manifest: {at}channels must be the domain's channels")
        for b, (mine, theirs) in enumerate(zip(own, above, strict=True)):
            if not set(mine) <= set(theirs):
                raise ArtifactError(
                    f"manifest: {at}channels[{b}] is not within the level above's (not nested)"
                )
        info = {key: value for key, value in level.items() if key not in {"budget", "channels"}}
        parsed.append(LevelEntry(budget, own, info))
    return tuple(parsed)


def _expected_shapes(
    arch: ArchSpec, union: list[int], domains: list[DomainEntry], level_heads: bool
) -> dict[str, tuple[int, ...]]:
    template = ResNet26(arch, [d.num_classes for d in domains] or [2], union)
    shared, _ = split_state_dict(template.state_dict())
    shapes = {name: tuple(t.shape) for name, t in shared.items()}
    for entry in domains:
        one = ResNet26(arch, [entry.num_classes], entry.mid_channels)
        _, (named,) = split_state_dict(one.state_dict())
        shapes.update({f"domains.{entry.index}.{n}": tuple(t.shape) for n, t in named.items()})
        for j, level in enumerate(entry.levels[1:], start=1):
            one = ResNet26(arch, [entry.num_classes], level.mid_channels)
            _, (named,) = split_state_dict(one.state_dict())
            shapes.update(
                {
                    f"levels.{j}.{entry.index}.{n}": tuple(t.shape)
                    for n, t in named.items()
                    if level_heads or not n.startswith("head.")
                }
            )
    return shapes


def load_artifact(path: Path) -> Artifact:
    """Load and verify an artifact folder; raises ``ArtifactError`` naming the problem."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"no {MANIFEST_FILE} in {path}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this code reads {FORMAT_VERSION})"
        )
    for key in ("model_name", "version"):
        check_name(key, _require(manifest, key, str, ""))
    try:
        arch = ArchSpec.from_dict(_require(manifest, "architecture", dict, ""))
    except (ArchitectureError, TypeError) as exc:
        raise ArtifactError(f"manifest: architecture: {exc}") from None
    union = _require(manifest, "compact_mid_channels", list, "")
    if len(union) != len(arch.blocks()) or not all(
        isinstance(u, int) and 1 <= u <= full
        for u, full in zip(union, arch.full_mid_channels(), strict=True)
    ):
        raise ArtifactError("manifest: compact_mid_channels does not fit the architecture")
    group = manifest.get("channel_group", 1)
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise ArtifactError("manifest: channel_group must be an integer >= 1")
    if any(u % group for u in union):
        raise ArtifactError(
            f"manifest: compact_mid_channels {union} are not multiples of the channel group {group}"
        )
    raw_domains = _require(manifest, "domains", list, "")
    if not raw_domains:
        raise ArtifactError("manifest: no domains")
    budgets = _parse_budgets(manifest)
    default_budget = manifest.get("budget")
    if isinstance(default_budget, bool) or not isinstance(default_budget, int | float):
        default_budget = 1.0  # an artifact that records no budget: served as one level of 1
    domains = [
        _parse_domain(k, raw, arch, union, budgets, float(default_budget))
        for k, raw in enumerate(raw_domains)
    ]
    for entry in domains:
        if any(m % group for level in entry.levels for m in level.mid_channels):
            raise ArtifactError(
                f"manifest: domain {entry.name!r} keeps {entry.mid_channels} mid channels, not "
                f"multiples of the channel group {group}"
            )
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ArtifactError(f"manifest: duplicate domain names in {names}")

    weights_path = path / _require(manifest, "weights_file", str, "")
    if weights_path.name != WEIGHTS_FILE or not weights_path.is_file():
        raise ArtifactError(f"weights file missing: {weights_path}")
    expected_hash = _require(manifest, "weights_sha256", str, "")
    data = weights_path.read_bytes()  # hash and load the same bytes: one read, no race
    actual_hash = hashlib.sha256(data).hexdigest()
    if actual_hash != expected_hash:
        raise ArtifactError(
            f"{weights_path}: sha256 {actual_hash[:12]}... does not match the manifest's "
            f"{expected_hash[:12]}... (corrupt or modified weights)"
        )
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            stored_digest = (handle.metadata() or {}).get("manifest_sha256")
        tensors = load_safetensors(data)
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{weights_path}: unreadable safetensors file ({exc})") from None
    if stored_digest != manifest_digest(manifest):
        raise ArtifactError(
            f"{manifest_path}: the manifest was modified after export (its digest does not match "
            "the one recorded in the weights file)"
        )

    level_state = manifest.get("level_state", "shared")
    if budgets is not None and level_state not in LEVEL_STATES:
        raise ArtifactError(
            f"manifest: level_state must be one of {', '.join(LEVEL_STATES)}, got {level_state!r}"
        )
    expected = _expected_shapes(arch, union, domains, level_state == "private")
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ArtifactError(
            f"weights do not match the manifest: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ArtifactError(
                f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape}"
            )

    shared = {n: t for n, t in tensors.items() if not n.startswith(("domains.", "levels."))}
    per_domain: list[dict[str, Tensor]] = [{} for _ in domains]
    per_level: list[list[dict[str, Tensor]]] = [
        [{} for _ in domains] for _ in range(len(budgets or [0]) - 1)
    ]
    for n, t in tensors.items():
        if n.startswith("domains."):
            _, k, rest = n.split(".", 2)
            per_domain[int(k)][rest] = t
        elif n.startswith("levels."):
            _, j, k, rest = n.split(".", 3)
            per_level[int(j) - 1][int(k)][rest] = t
    return Artifact(path, manifest, arch, domains, shared, per_domain, per_level)
