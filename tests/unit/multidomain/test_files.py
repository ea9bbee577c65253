"""Atomic writes, JSON reading and hashing (``multidomain.files``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from multidomain.files import atomic_path, read_json, sha256_file, write_json, write_text


def test_atomic_path_publishes_only_a_finished_file(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file left behind
    write_text(target, "first")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("second")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"  # the old content survives a failed rewrite


def test_write_json_and_read_it_back(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    write_json(target, {"a": [1, 2.5], "b": None})
    assert target.read_text().endswith("}\n")
    assert read_json(target) == {"a": [1, 2.5], "b": None}


class CustomError(ValueError):
    pass


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"{nope", "not valid JSON"), (b"\xff", "cannot read")],
)
def test_read_json_raises_the_callers_error_naming_the_path(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "in.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CustomError, match=message) as excinfo:
        read_json(path, CustomError)
    assert str(path) in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = json.dumps(list(range(100_000))).encode()
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
