"""Where an artifact is found: ``resolve_artifact`` (``<store>/<name>/<version>``, ``latest``
the newest complete version by manifest ``created_at``) for the service, ``find_artifact`` for
the path a command is given."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from multidomain.artifact import MANIFEST_FILE, ArtifactError, check_name

__all__ = ["find_artifact", "resolve_artifact"]


def resolve_artifact(model_store: Path, model_name: str, version: str = "latest") -> Path:
    """``model_store/<name>/<version>``; ``latest`` is the complete version folder whose
    manifest's ``created_at`` is newest (folder name breaking ties; a manifest without a
    readable ``created_at`` counts as oldest, one that is not valid JSON is skipped)."""
    check_name("model name", model_name)
    root = Path(model_store) / model_name
    if version != "latest":
        check_name("version", version)
        target = root / version
        if not (target / MANIFEST_FILE).is_file():
            raise ArtifactError(f"no artifact at {target}")
        return target
    candidates = []
    for folder in root.glob("*"):
        if folder.name.startswith(".") or not (folder / MANIFEST_FILE).is_file():
            continue
        created = _created_at(folder / MANIFEST_FILE)
        if created is not None:
            candidates.append((created, folder.name, folder))
    if not candidates:
        raise ArtifactError(f"no artifact versions under {root}")
    return max(candidates)[2]


_OLDEST = datetime.min.replace(tzinfo=UTC)


def _created_at(manifest_path: Path) -> datetime | None:
    """The manifest's ``created_at`` (UTC when it names no zone), ``_OLDEST`` when it has none
    that parses, None when the manifest is not a JSON object."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict):
        return None
    try:
        created = datetime.fromisoformat(str(manifest["created_at"]))
    except (KeyError, ValueError):
        return _OLDEST
    return created if created.tzinfo is not None else created.replace(tzinfo=UTC)


def find_artifact(path: Path) -> Path:
    """The artifact a command-line path names, the same for every command: an artifact folder
    (``<store>/<name>/<version>``, holding ``manifest.json``), ``<store>/<name>/latest`` or a
    model folder ``<store>/<name>`` (its newest version, as ``resolve_artifact`` chooses it)."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    if path.name == "latest" and not path.exists():
        return resolve_artifact(path.parent.parent, path.parent.name)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such artifact folder")
    if not any(path.glob(f"*/{MANIFEST_FILE}")):
        models = sorted({p.parent.parent.name for p in path.glob(f"*/*/{MANIFEST_FILE}")})
        if models:
            raise ArtifactError(
                f"{path} is a model store: name a model in it, e.g. {path / models[0]}"
            )
        raise ArtifactError(
            f"{path}: no {MANIFEST_FILE} here nor in a version folder beneath it "
            "(expected <store>/<name> or <store>/<name>/<version>)"
        )
    folder = path if path.name not in ("", "..") else path.resolve()  # "." or ".." by name
    return resolve_artifact(folder.parent, folder.name)
