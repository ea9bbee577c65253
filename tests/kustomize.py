"""Render a kustomization the way ``kustomize build`` does, for the features deploy/kubernetes
uses and no others: ``resources`` (files and kustomization folders), ``components``,
``namespace``, ``images`` and ``patches`` given by ``path`` (strategic-merge patches, matched to
their target by kind and name). Anything else in a kustomization, or a patch directive, is
refused with ``KustomizeError`` rather than rendered differently from kustomize.

Strategic merge as kustomize does it: maps merge recursively, ``null`` deletes a key, lists of
the fields in ``MERGE_KEYS`` merge element by element on their key (the patch's elements first),
every other list is replaced.
When a real kustomize is installed, tests/unit/test_kubernetes.py checks this renderer against it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILE = "kustomization.yaml"
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "images",
    "patches",
}
#: patchMergeKey of the list fields the manifests patch (Kubernetes' OpenAPI: x-kubernetes-...)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
#: Kinds that have no namespace (kustomize's namespace transformer leaves them alone).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


class KustomizeError(ValueError):
    """A kustomization this renderer does not support, or one that kustomize would refuse."""


def load_documents(path: Path) -> list[Resource]:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    for document in documents:
        if not isinstance(document, dict) or "kind" not in document:
            raise KustomizeError(f"{path}: not a Kubernetes resource: {document!r:.80}")
    return documents


def read_kustomization(folder: Path, expected_kind: str) -> dict[str, Any]:
    path = folder / KUSTOMIZATION_FILE
    if not path.is_file():
        raise KustomizeError(f"{folder}: no {KUSTOMIZATION_FILE}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    unsupported = set(data) - SUPPORTED_FIELDS
    if unsupported:
        raise KustomizeError(f"{path}: fields not supported here: {sorted(unsupported)}")
    if data.get("kind", "Kustomization") != expected_kind:
        raise KustomizeError(f"{path}: kind {data.get('kind')!r}, expected {expected_kind}")
    if expected_kind == "Component" and "namespace" in data:
        raise KustomizeError(f"{path}: a component sets no namespace here")
    return data


def build(folder: Path) -> list[Resource]:
    """The resources ``kustomize build folder`` prints, in kustomize's order of appearance."""
    return _build(Path(folder), "Kustomization")


def _build(folder: Path, kind: str, resources: list[Resource] | None = None) -> list[Resource]:
    data = read_kustomization(folder, kind)
    accumulated = [] if resources is None else resources
    for entry in data.get("resources", []):
        target = folder / entry
        if target.is_dir():
            accumulated.extend(_build(target, "Kustomization"))
        else:
            accumulated.extend(load_documents(target))
        _check_unique(accumulated, folder)
    for entry in data.get("components", []):
        accumulated = _build(folder / entry, "Component", accumulated)
        _check_unique(accumulated, folder)
    for patch in data.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{folder}: only `patches: - path: FILE` is supported: {patch}")
        for document in load_documents(folder / patch["path"]):
            apply_patch(accumulated, document, folder / patch["path"])
    for image in data.get("images", []):
        set_image(accumulated, image)
    if "namespace" in data:
        for resource in accumulated:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = data["namespace"]
    return accumulated


def _check_unique(resources: list[Resource], folder: Path) -> None:
    seen = set()
    for resource in resources:
        key = resource_id(resource)
        if key in seen:
            raise KustomizeError(f"{folder}: resource {key} appears twice")
        seen.add(key)


def resource_id(resource: Resource) -> tuple[str, str, str]:
    group = resource["apiVersion"].rpartition("/")[0]
    return group, resource["kind"], resource["metadata"]["name"]


def apply_patch(resources: list[Resource], patch: Resource, where: Path) -> None:
    targets = [r for r in resources if resource_id(r) == resource_id(patch)]
    if len(targets) != 1:
        raise KustomizeError(f"{where}: patch target {resource_id(patch)} not found once")
    merged = strategic_merge(targets[0], patch)
    targets[0].clear()
    targets[0].update(merged)


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    """``original`` with ``patch`` merged in (neither is modified)."""
    if isinstance(patch, dict):
        if any(isinstance(key, str) and key.startswith("$") for key in patch):
            raise KustomizeError(f"patch directives are not supported: {sorted(patch)}")
        if not isinstance(original, dict):
            return copy.deepcopy(patch)
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(original, list):
        # kustomize's order: the patch's elements (merged with the original's of the same key),
        # then the original's elements the patch does not name
        key = MERGE_KEYS[field]
        named = {item[key] for item in patch}
        by_key = {item.get(key): item for item in original}
        merged_list = [
            strategic_merge(by_key[item[key]], item, field)
            if item[key] in by_key
            else copy.deepcopy(item)
            for item in patch
        ]
        return merged_list + [copy.deepcopy(o) for o in original if o.get(key) not in named]
    return copy.deepcopy(patch)


def set_image(resources: list[Resource], image: dict[str, str]) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizeError(f"images: unsupported fields {sorted(unknown)}")
    for container in iter_containers(resources):
        name, tag = split_image(container["image"])
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{new}@{image['digest']}"
        else:
            new_tag = image.get("newTag", tag)
            container["image"] = f"{new}:{new_tag}" if new_tag else new


def split_image(reference: str) -> tuple[str, str | None]:
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # no tag, or the colon was a registry port
        return reference, None
    return name, tag


def iter_containers(resources: list[Resource]) -> list[dict[str, Any]]:
    found = []
    for resource in resources:
        spec = resource.get("spec", {})
        pod = spec.get("template", {}).get("spec", {}) if "template" in spec else None
        if pod is not None:
            found += pod.get("containers", []) + pod.get("initContainers", [])
    return found
