"""File helpers every package may use (no torch): atomic writes, JSON reading, sha256, the
tensor shapes of a safetensors file (its header only).

A write goes to a temporary file beside its target and is renamed into place only when it is
complete, so nothing half-written is ever left under the final name, with the mode a plain
``open`` would have given it under the umask (readable by other users under umask 022).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "apply_umask_mode",
    "atomic_path",
    "current_umask",
    "read_json",
    "safetensors_shapes",
    "sha256_file",
    "write_json",
    "write_text",
]


def current_umask() -> int:
    """The process umask, read from /proc where it exists (``os.umask`` changes it for a moment,
    for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_mode(path: Path) -> None:
    """Give a file or folder the mode a plain ``open`` or ``mkdir`` would have given it: 0666 or
    0777 less the umask (0644 / 0755 under umask 022). ``tempfile`` creates 0600 files and 0700
    folders, and safetensors writes 0600 files: published as they are, a reader running as
    another user (a service beside the trainer) could not open them."""
    full = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, full & ~current_umask())


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only on success, with the
    mode the umask gives (``mkstemp`` creates it 0600)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        apply_umask_mode(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: Path, data: Any) -> None:
    """``data`` as indented JSON with a final newline."""
    write_text(target, json.dumps(data, indent=2) + "\n")


def read_json(path: Path, error: type[Exception] = ValueError) -> Any:
    """The parsed JSON of ``path``; a missing, unreadable or invalid file raises ``error`` with
    a one-line message naming the path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_shapes(path: Path, error: type[Exception] = ValueError) -> dict[str, list[int]]:
    """Every tensor's shape in the safetensors file ``path``, read from its header (no tensor
    data is read, no torch); a missing or invalid file raises ``error`` naming the path."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, SafetensorError) as exc:
        raise error(f"{path}: not a readable safetensors file ({exc})") from None
