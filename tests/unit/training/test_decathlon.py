"""The Visual Decathlon layout as released: train and val labelled, the test set stripped; the
held-out labelled test split; bad input named in one line; the stripped test set for
prediction."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from devtools.decathlon_layout import DecathlonLayout, write_decathlon_domain
from training.data import (
    HELDOUT_FRACTION,
    DataError,
    ImageShard,
    decathlon_categories,
    load_decathlon_domain,
    load_decathlon_test,
    load_domains,
)
from training.data.decathlon import heldout_split
from training.data.domain import domain_rng


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DecathlonLayout:
    root = tmp_path_factory.mktemp("decathlon")
    return write_decathlon_domain(
        root, "toy", 4, 3, {"train": 20, "val": 4}, test_images=7, short_side=24
    )


def _error(excinfo: pytest.ExceptionInfo[DataError], *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_official_layout_loads_with_a_held_out_test_split(
    layout: DecathlonLayout, tmp_path: Path
) -> None:
    d = load_decathlon_domain(layout.root, "toy", 16, tmp_path / "cache", seed=0)
    assert d.labels == ["toy-class001", "toy-class002", "toy-class003"]
    # 20 train images per class: 2 (10%) held out as the labelled test split
    assert d.counts() == {"train": 54, "val": 12, "test": 6}
    assert sorted(np.bincount(d.targets["test"]).tolist()) == [2, 2, 2]
    assert d.images["train"].shape == (54, 16, 16, 3) and isinstance(d.images["train"], ImageShard)
    val_labels = [layout.category_ids.index(c) for c in layout.labels["val"]]
    order = np.argsort(layout.image_ids["val"])  # splits are stored in image-id order
    assert d.targets["val"].tolist() == [val_labels[i] for i in order]
    test_split = d.provenance["test_split"]
    assert test_split["held_out_from"] == "toy_train.json" and test_split["images"] == 6
    assert test_split["fraction"] == HELDOUT_FRACTION and test_split["seed"] == 0


def test_held_out_split_is_deterministic_and_its_digest_names_it(
    layout: DecathlonLayout, tmp_path: Path
) -> None:
    a = load_decathlon_domain(layout.root, "toy", 16, tmp_path / "a", seed=0)
    b = load_decathlon_domain(layout.root, "toy", 16, tmp_path / "b", seed=0)
    other = load_decathlon_domain(layout.root, "toy", 16, tmp_path / "a", seed=1)
    assert a.provenance == b.provenance
    assert a.digests == b.digests and a.images["test"][:].tobytes() == b.images["test"][:].tobytes()
    assert (
        other.provenance["test_split"]["image_ids_sha256"]
        != a.provenance["test_split"]["image_ids_sha256"]
    )
    # the digest is the sha256 of the held-out image ids: recompute it from the train file
    train_ids = np.asarray(sorted(layout.image_ids["train"]))
    by_id = dict(zip(layout.image_ids["train"], layout.labels["train"], strict=True))
    targets = np.asarray([layout.category_ids.index(by_id[i]) for i in train_ids])
    _, held = heldout_split(targets, HELDOUT_FRACTION, domain_rng(0, "toy"))
    expected = hashlib.sha256(json.dumps(train_ids[held].tolist()).encode()).hexdigest()
    assert a.provenance["test_split"]["image_ids_sha256"] == expected


def test_heldout_split_keeps_every_class_in_train() -> None:
    targets = np.asarray([0] * 25 + [1] * 2 + [2])
    kept, held = heldout_split(targets, 0.1, np.random.default_rng(0))
    assert np.bincount(targets[held], minlength=3).tolist() == [3, 1, 0]  # 2.5 rounds up
    assert np.bincount(targets[kept], minlength=3).tolist() == [22, 1, 1]
    assert sorted([*kept, *held]) == list(range(len(targets)))


def test_load_domains_reads_the_decathlon_spec(layout: DecathlonLayout, tmp_path: Path) -> None:
    out = load_domains([f"decathlon:toy={layout.root}", "embedded:faces"], tmp_path, 16, 0)
    assert list(out) == ["toy", "faces"] and out["toy"].counts()["test"] == 6


def test_stripped_test_set_loads_in_id_order(layout: DecathlonLayout, tmp_path: Path) -> None:
    test = load_decathlon_test(layout.root, "toy", 16, tmp_path)
    assert test.ids.tolist() == sorted(layout.image_ids["test_stripped"])
    assert test.images.shape == (7, 16, 16, 3)
    assert decathlon_categories(layout.root, "toy")[0] == (4 * 10**7 + 1, "toy-class001")


# ---------------------------------------------------------------------------- bad input


def _copy_layout(layout: DecathlonLayout, target: Path) -> Path:
    import shutil

    shutil.copytree(layout.root, target)
    return target


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_labelled_annotation(layout: DecathlonLayout, tmp_path: Path, split: str) -> None:
    root = _copy_layout(layout, tmp_path / "root")
    (root / "annotations" / f"toy_{split}.json").unlink()
    with pytest.raises(DataError) as e:
        load_decathlon_domain(root, "toy", 16, tmp_path / "cache")
    _error(e, f"toy_{split}.json", "not found")
    assert not (tmp_path / "cache").exists()


def test_stripped_file_as_training_data(layout: DecathlonLayout, tmp_path: Path) -> None:
    root = _copy_layout(layout, tmp_path / "root")
    stripped = root / "annotations" / "toy_test_stripped.json"
    (root / "annotations" / "toy_train.json").write_bytes(stripped.read_bytes())
    with pytest.raises(DataError) as e:
        load_decathlon_domain(root, "toy", 16, tmp_path / "cache")
    _error(e, "toy_train.json", "no annotations", "stripped")
    with pytest.raises(DataError) as e:
        load_decathlon_domain(root, "toy_test_stripped", 16, tmp_path / "cache")
    _error(e, "stripped test file", "'toy'")
    with pytest.raises(DataError) as e:
        load_decathlon_domain(stripped, "toy", 16, tmp_path / "cache")
    _error(e, "annotation file", "root folder")
    assert not [p for p in (tmp_path / "cache").rglob("cache.json")]


def test_images_listed_but_missing(layout: DecathlonLayout, tmp_path: Path) -> None:
    root = _copy_layout(layout, tmp_path / "root")
    gone = sorted((root / "data" / "toy" / "val").iterdir())[:2]
    for path in gone:
        path.unlink()
    with pytest.raises(DataError) as e:
        load_decathlon_domain(root, "toy", 16, tmp_path / "cache")
    _error(e, "toy_val.json", "2 of 12 listed images are missing", "first: ")
    # nothing half-built is left that looks complete
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name == "cache.json"]


def test_annotation_for_unknown_image(layout: DecathlonLayout, tmp_path: Path) -> None:
    root = _copy_layout(layout, tmp_path / "root")
    path = root / "annotations" / "toy_val.json"
    obj = json.loads(path.read_text())
    obj["annotations"].append({"id": 999, "image_id": 12345, "category_id": 40000001})
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError) as e:
        load_decathlon_domain(root, "toy", 16, tmp_path / "cache")
    _error(e, str(path), "12345")


def test_changed_annotations_make_a_new_cache(layout: DecathlonLayout, tmp_path: Path) -> None:
    root = _copy_layout(layout, tmp_path / "root")
    first = load_decathlon_domain(root, "toy", 16, tmp_path / "cache")
    path = root / "annotations" / "toy_val.json"
    obj = json.loads(path.read_text())
    annotation = obj["annotations"][0]
    annotation["category_id"] = next(
        c for c in layout.category_ids if c != annotation["category_id"]
    )
    path.write_text(json.dumps(obj))
    second = load_decathlon_domain(root, "toy", 16, tmp_path / "cache")
    assert first.digests["val"] != second.digests["val"]
    assert len(list((tmp_path / "cache" / "decathlon").iterdir())) == 2
