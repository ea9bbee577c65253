import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from multidomain.artifact import (
    ArtifactError,
    load_artifact,
    manifest_digest,
    sha256_file,
)
from multidomain.preprocess import normalize_batch
from multidomain.store import resolve_artifact
from tests.artifacts import TINY_DOMAINS, make_tiny_model, write_tiny_artifact


def test_compact_subnets_equal_masked_model(tmp_path: Path) -> None:
    artifact = load_artifact(write_tiny_artifact(tmp_path))
    model, masks = make_tiny_model()
    x = torch.randn(8, 3, 16, 16)
    for entry in artifact.domains:
        subnet = artifact.subnet(entry.name)
        assert entry.mid_channels == [int(m[entry.index].sum()) for m in masks]
        own = [m[entry.index].float() for m in masks]
        with torch.no_grad():
            assert torch.allclose(subnet(x), model(x, entry.index, own), atol=1e-5)


def test_served_network_normalises_pixels_and_equals_the_subnet(tmp_path: Path) -> None:
    artifact = load_artifact(write_tiny_artifact(tmp_path))
    pixels = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    for entry in artifact.domains:
        served = artifact.served_network(entry.name)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in served.modules())
        with torch.inference_mode():
            expected = artifact.subnet(entry.name)(normalize_batch(pixels, entry.mean, entry.std))
            assert torch.allclose(served(pixels), expected, atol=1e-5)


def test_compact_union_drops_unused_channels(tmp_path: Path) -> None:
    artifact = load_artifact(write_tiny_artifact(tmp_path))
    _, masks = make_tiny_model()
    assert artifact.manifest["compact_mid_channels"] == [int(m.any(0).sum()) for m in masks]
    assert artifact.shared["blocks.0.conv1.weight"].shape[0] == int(masks[0].any(0).sum())


def test_unknown_domain_lists_known(tmp_path: Path) -> None:
    artifact = load_artifact(write_tiny_artifact(tmp_path))
    with pytest.raises(KeyError, match="known domains: " + ", ".join(TINY_DOMAINS)):
        artifact.subnet("nope")


def test_modified_weights_are_refused(tmp_path: Path) -> None:
    path = write_tiny_artifact(tmp_path)
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"sha256 .* does not match"):
        load_artifact(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("domains"), "missing field domains"),
        (lambda m: m.update(format_version=99), "format_version 99 is not supported"),
        (lambda m: m["domains"][0].update(channels=[[0]]), r"channels has 1 blocks"),
        (lambda m: m["domains"][1]["channels"][0].append(999), r"channels\[0\] must be sorted"),
        (lambda m: m["architecture"].update(width_mult=0.25), "has shape"),
        (lambda m: m["domains"][2]["labels"].reverse(), "manifest was modified after export"),
        (lambda m: m["domains"][0].update(name="../etc"), "invalid domain name"),
    ],
)
def test_mismatched_manifest_is_refused(tmp_path: Path, edit, message: str) -> None:
    path = write_tiny_artifact(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    if "modified" not in message:  # re-sign so that the structural check is what fails
        weights = path / "weights.safetensors"
        tensors = load_file(str(weights))
        save_file(tensors, str(weights), metadata={"manifest_sha256": manifest_digest(manifest)})
        manifest["weights_sha256"] = sha256_file(weights)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(path)


def test_resolve_latest_and_missing(tmp_path: Path) -> None:
    write_tiny_artifact(tmp_path, version="20260101-000000")
    newest = write_tiny_artifact(tmp_path, version="20260102-000000")
    assert resolve_artifact(tmp_path, "tiny") == newest  # same created_at: the name decides
    with pytest.raises(ArtifactError, match="no artifact versions"):
        resolve_artifact(tmp_path, "other")
    with pytest.raises(ArtifactError, match="no artifact at"):
        resolve_artifact(tmp_path, "tiny", "v9")


def test_latest_is_the_newest_by_creation_time_not_by_name(tmp_path: Path) -> None:
    # as text "v10" < "v9" < "zeta"; by creation time (zones differ) v10 is the newest
    write_tiny_artifact(tmp_path, version="v9", created_at="2026-03-01T12:00:00+00:00")
    newest = write_tiny_artifact(tmp_path, version="v10", created_at="2026-03-01T13:30:00+01:00")
    write_tiny_artifact(tmp_path, version="zeta", created_at="2026-03-01T11:00:00")
    assert resolve_artifact(tmp_path, "tiny") == newest
    broken = tmp_path / "tiny" / "zz-broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    assert resolve_artifact(tmp_path, "tiny") == newest


def test_existing_artifact_is_not_overwritten(tmp_path: Path) -> None:
    write_tiny_artifact(tmp_path)
    with pytest.raises(ArtifactError, match="already exists"):
        write_tiny_artifact(tmp_path)
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")]


def test_widths_must_be_multiples_of_the_channel_group(tmp_path: Path) -> None:
    artifact = load_artifact(write_tiny_artifact(tmp_path / "a", group=4))
    assert artifact.manifest["channel_group"] == 4
    assert all(u % 4 == 0 for u in artifact.manifest["compact_mid_channels"])
    assert all(m % 4 == 0 for entry in artifact.domains for m in entry.mid_channels)
    with pytest.raises(ArtifactError, match="not multiples of the channel group 4"):
        write_tiny_artifact(tmp_path / "b", group=1, manifest_group=4)
    assert not (tmp_path / "b" / "tiny" / "v1").exists()
