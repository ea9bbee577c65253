"""Artifacts, backbones and cached files are published with the modes the umask gives, so that a
service running as another user than the trainer can read them (temporary files and folders are
created 0600 / 0700)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from multidomain.artifact import MANIFEST_FILE, WEIGHTS_FILE, load_artifact
from multidomain.files import atomic_path, current_umask
from tests.artifacts import write_tiny_artifact
from tests.unit.training.synthetic import ARCH, synthetic_domain
from training.pretrain import PretrainConfig, pretrain_backbone


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def expected(path: Path, umask: int) -> int:
    return (0o777 if path.is_dir() else 0o666) & ~umask


def test_current_umask_reads_the_process_umask(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask  # reading it does not change it


def test_artifact_follows_the_umask(tmp_path: Path, umask: int) -> None:
    folder = write_tiny_artifact(tmp_path / "store")
    for path in (folder, folder / WEIGHTS_FILE, folder / MANIFEST_FILE):
        assert mode(path) == expected(path, umask), f"{path.name}: {oct(mode(path))}"
    if umask == 0o022:
        assert mode(folder) == 0o755 and mode(folder / WEIGHTS_FILE) == 0o644
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temp left"
    load_artifact(folder)


def test_backbone_follows_the_umask(tmp_path: Path, umask: int) -> None:
    domains = [synthetic_domain("alpha", 3, 0), synthetic_domain("beta", 4, 1)]
    run = tmp_path / "backbone"
    pretrain_backbone(domains, ARCH, PretrainConfig(steps=2, batch_size=8), run)
    written = sorted(run.iterdir())
    assert any(p.suffix == ".safetensors" for p in written), written
    for path in [run, *written]:
        assert mode(path) == expected(path, umask), f"{path.name}: {oct(mode(path))}"


def test_atomic_path_follows_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "cache" / "digits.npz"
    with atomic_path(target) as tmp:
        assert mode(tmp) == 0o600  # as tempfile creates it: not readable by others yet
        tmp.write_bytes(b"data")
    assert mode(target) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["digits.npz"]
