"""The ``letters`` domain: letters A-J rendered from matplotlib's fonts, deterministic, the same
image pool for every split seed, distinct images, not in the default benchmark."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.data import (
    EMBEDDED_DOMAINS,
    SPLITS,
    DataError,
    DomainData,
    domain_digest,
    load_domains,
    plan_domains,
)
from training.data.embedded import _package_dir
from training.data.letters import LETTER_FONTS, LETTERS_PER_CLASS, render_letters

FONTS = _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"


@pytest.fixture(scope="module")
def letters(tmp_path_factory: pytest.TempPathFactory) -> DomainData:
    return load_domains(["embedded:letters"], tmp_path_factory.mktemp("cache"), 16, 0)["letters"]


def hashes(domain: DomainData, split: str) -> list[str]:
    return [hashlib.sha256(x.tobytes()).hexdigest() for x in np.asarray(domain.images[split])]


def test_letters_a_to_j_with_balanced_splits(letters: DomainData) -> None:
    assert letters.labels == list("ABCDEFGHIJ")
    assert letters.allow_flip is False and letters.is_colour is False
    counts = letters.counts()
    assert sum(counts.values()) == 10 * LETTERS_PER_CLASS
    for split in SPLITS:
        per_class = np.bincount(letters.targets[split], minlength=10)
        assert per_class.min() == per_class.max()  # stratified
    assert counts["test"] >= 900
    assert "matplotlib" in letters.source and f"{len(LETTER_FONTS)} " in letters.source
    every = [h for split in SPLITS for h in hashes(letters, split)]
    assert len(set(every)) == len(every)  # no image twice, so none in two splits


def test_letters_are_deterministic_and_split_seeds_partition_one_pool(
    letters: DomainData, tmp_path: Path
) -> None:
    again = load_domains(["embedded:letters"], tmp_path / "a", 16, 0)["letters"]
    assert domain_digest(again) == domain_digest(letters)
    other = load_domains(["embedded:letters"], tmp_path / "b", 16, 1)["letters"]
    assert domain_digest(other) != domain_digest(letters)
    pool = sorted(h for split in SPLITS for h in hashes(letters, split))
    assert sorted(h for split in SPLITS for h in hashes(other, split)) == pool


def test_letters_vary_in_font_size_and_position(letters: DomainData) -> None:
    images = np.asarray(letters.images["train"])[..., 0].astype(np.float64)
    a = images[letters.targets["train"] == 0]
    ink = (a > 64).sum(axis=(1, 2))
    assert ink.std() / ink.mean() > 0.15  # stroke and size differ
    rows = np.array([np.nonzero((x > 64).any(axis=1))[0].mean() for x in a])
    assert rows.std() > 0.5  # positions differ (pixels at 16 px)


def test_letters_are_not_in_the_default_benchmark() -> None:
    assert "letters" not in EMBEDDED_DOMAINS
    assert [name for _, name, _ in plan_domains(["embedded"], 32)] == list(EMBEDDED_DOMAINS)
    assert [name for _, name, _ in plan_domains(["embedded:letters"], 32)] == ["letters"]


def test_a_font_without_the_letters_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="font file missing"):
        render_letters(16, tmp_path)
    for name in LETTER_FONTS:  # a font of symbols under every listed name
        shutil.copy(FONTS / "STIXSizOneSymReg.ttf", tmp_path / name)
    with pytest.raises(DataError, match="lacks some of the letters ABCDEFGHIJ"):
        render_letters(16, tmp_path)
