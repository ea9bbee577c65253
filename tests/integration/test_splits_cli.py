"""Splits that cannot leak, through the real console script on embedded domains: no image of
the backbone's training split is in a test split the backbone or an artifact trained on it is
evaluated with (whatever the training --seed), a run on other splits is refused, and the
held-out protocol trains domains the backbone never saw."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data import SPLITS, DomainData, domain_digest, load_domains

pytestmark = pytest.mark.integration

MDPRUNE = [sys.executable, "-m", "mdprune.cli"]
SOURCES = ["embedded:digits", "embedded:faces"]
SIZE = 16


def mdprune(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MDPRUNE, *map(str, args)], capture_output=True, text=True, timeout=600, check=False
    )


def image_hashes(domain: DomainData, split: str) -> set[str]:
    images = np.asarray(domain.images[split])
    return {hashlib.sha256(image.tobytes()).hexdigest() for image in images}


def splits_of(record: dict, specs: list[str], cache: Path) -> dict[str, DomainData]:
    """The domains loaded with a record's split seed, checked to be the very splits the record
    names (the same data digest)."""
    loaded = load_domains(specs, cache, SIZE, record["split_seed"])
    for name, domain in loaded.items():
        assert domain_digest(domain) == record["domains"][name]
    return loaded


def leaked(backbone: dict[str, DomainData], evaluated: dict[str, DomainData]) -> dict[str, int]:
    """Per shared domain: how many test images of ``evaluated`` the backbone trained on."""
    return {
        name: len(image_hashes(backbone[name], "train") & image_hashes(evaluated[name], "test"))
        for name in backbone.keys() & evaluated.keys()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backbone pre-trained (split seed 0, the default) on digits and faces."""
    root = tmp_path_factory.mktemp("splits")
    done = mdprune(
        "pretrain", "-d", SOURCES[0], "-d", SOURCES[1], "--steps", "2", "--batch-size", "8",
        "--width-mult", "0.125", "--image-size", SIZE, "--cache-dir", root / "cache",
        "--run-dir", root / "backbone", "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return root


def train(root: Path, version: str, *args: str) -> subprocess.CompletedProcess[str]:
    return mdprune(
        "train", "--backbone", root / "backbone", "--steps", "2",
        "--channel-group", "4", "--finetune-steps", "1", "--batch-size", "8",
        "--cache-dir", root / "cache", "--model-store", root / "store",
        "--model-version", version, "--device", "cpu", *args,
    )  # fmt: skip


def test_no_backbone_training_image_is_in_a_test_split_it_is_evaluated_on(run: Path) -> None:
    record = json.loads((run / "backbone" / "backbone.json").read_text())
    backbone = splits_of(record["data"], SOURCES, run / "cache")
    for name, domain in backbone.items():  # the splits are disjoint, image by image
        hashes = {split: image_hashes(domain, split) for split in SPLITS}
        assert len(hashes["train"]) > 0 and len(hashes["test"]) > 0
        assert not hashes["train"] & hashes["test"], name
        assert not hashes["train"] & hashes["val"], name
    assert leaked(backbone, backbone) == {"digits": 0, "faces": 0}

    # another training seed: other initialisation and batches, the same splits
    done = train(run, "seed1", "-d", SOURCES[0], "-d", SOURCES[1], "--seed", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((run / "store" / "default" / "seed1" / "manifest.json").read_text())
    assert manifest["training"]["config"]["seed"] == 1
    assert manifest["data"]["split_seed"] == 0
    assert manifest["backbone"]["data"] == record["data"]
    assert manifest["protocol"] == "same-domain"
    evaluated = splits_of(manifest["data"], SOURCES, run / "cache")
    assert leaked(backbone, evaluated) == {"digits": 0, "faces": 0}


def test_other_splits_are_refused_naming_both_digests(run: Path) -> None:
    record = json.loads((run / "backbone" / "backbone.json").read_text())
    done = train(run, "split1", "-d", SOURCES[0], "-d", SOURCES[1], "--split-seed", "1")
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: domain 'digits' (and 1 more: faces)")
    resplit = load_domains(SOURCES, run / "cache", SIZE, 1)
    assert record["data"]["domains"]["digits"] in error
    assert domain_digest(resplit["digits"]) in error
    assert "--split-seed 1 here but 0 for the backbone" in error
    assert not (run / "store" / "default" / "split1").exists()
    # what the refusal prevents: those test splits hold many of the backbone's training images
    backbone = splits_of(record["data"], SOURCES, run / "cache")
    assert min(leaked(backbone, resplit).values()) > 0


def test_the_held_out_protocol_trains_domains_the_backbone_never_saw(run: Path) -> None:
    done = train(run, "held", "-d", "embedded:letters", "-d", "embedded:mnist")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((run / "store" / "default" / "held" / "manifest.json").read_text())
    assert manifest["protocol"] == "held-out"
    assert manifest["backbone"]["domains"] == ["digits", "faces"]
    letters = manifest["domains"][0]
    assert letters["name"] == "letters" and letters["labels"] == list("ABCDEFGHIJ")
    assert letters["seen_by_backbone"] is False
    assert letters["budget_costs"]["params"] <= 0.5
    history = manifest["training"]["history"]
    assert history["step"] == [1, 2]
    assert set(history["cost"]["macs"]) == {"letters", "mnist"}
