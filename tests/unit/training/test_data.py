"""Tests for training.data: embedded benchmark, the cache, ImageFolder, bad inputs, batches.
The Decathlon format has its own file (test_decathlon.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from training.data import (
    EMBEDDED_DOMAINS,
    SPLITS,
    DataError,
    DomainData,
    ImageShard,
    RestrictedUnpickler,
    StepSampler,
    benchmark_digest,
    build_embedded_benchmark,
    embedded_cache_dir,
    iterate_eval,
    load_domains,
    load_imagefolder_domain,
    print_summary,
    restricted_pickle_load,
    train_augment,
)
from training.data.domain import distinct_images
from training.data.embedded import EMBEDDED_BUILDER_VERSION

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _assert_same(a: dict[str, DomainData], b: dict[str, DomainData]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].labels == b[name].labels
        assert a[name].mean == b[name].mean and a[name].std == b[name].std
        for split in SPLITS:
            assert a[name].images[split][:].tobytes() == b[name].images[split][:].tobytes()
            assert a[name].targets[split].tobytes() == b[name].targets[split].tobytes()


# ---------------------------------------------------------------------------- embedded


def test_embedded_domains_shape_and_content(embedded_domains: dict[str, DomainData]) -> None:
    assert len(embedded_domains) >= 5
    assert set(EMBEDDED_DOMAINS) <= set(embedded_domains)
    for name, d in embedded_domains.items():
        d.validate()
        assert d.name == name
        assert d.num_classes >= 2 and len(set(d.labels)) == d.num_classes
        assert set(d.images) == set(SPLITS) and set(d.targets) == set(SPLITS)
        assert all(n > 0 for n in d.counts().values())
        for split in SPLITS:
            assert d.images[split].shape[1:] == (32, 32, 3)
            assert d.images[split].dtype == np.uint8 and d.targets[split].dtype == np.int64
            # stratified: every class appears in every split
            assert set(np.unique(d.targets[split])) == set(range(d.num_classes))
    # each domain has its own label set (mnist and digits share the digit names)
    assert len({tuple(d.labels) for d in embedded_domains.values()}) >= 4
    assert embedded_domains["animals"].labels[:2] == ["bear", "bird"]
    assert embedded_domains["faces"].labels == ["face", "non_face"]
    assert embedded_domains["mnist"].counts() == {"train": 3500, "val": 750, "test": 750}
    assert not embedded_domains["mnist"].allow_flip and not embedded_domains["digits"].allow_flip
    colour = [n for n, d in embedded_domains.items() if d.is_colour]
    assert "textures" in colour
    x = embedded_domains["textures"].images["train"][:].astype(np.int16)
    assert np.abs(x[..., 0] - x[..., 1]).mean() > 5


def test_mean_std_from_train_split_only(embedded_domains: dict[str, DomainData]) -> None:
    for d in embedded_domains.values():
        train = d.images["train"][:].reshape(-1, 3).astype(np.float64) / 255.0
        np.testing.assert_allclose(d.mean, train.mean(axis=0), rtol=0, atol=1e-9)
        np.testing.assert_allclose(d.std, np.maximum(train.std(axis=0), 1e-3), rtol=0, atol=1e-9)
    d = embedded_domains["digits"]
    everything = np.concatenate([d.images[s][:] for s in SPLITS]).reshape(-1, 3) / 255.0
    assert abs(everything.mean(axis=0)[0] - d.mean[0]) > 1e-6


def test_cache_files_and_reload(
    embedded_domains: dict[str, DomainData], embedded_cache_root: Path
) -> None:
    folder = embedded_cache_dir(embedded_cache_root, 32, 0)
    assert folder.name == "embedded-s32-seed0"
    for name, domain in embedded_domains.items():
        meta = json.loads((folder / name / "cache.json").read_text())
        assert meta["labels"] == domain.labels
        assert meta["key"] == {
            "kind": "embedded",
            "name": name,
            "image_size": 32,
            "seed": 0,
            "builder": EMBEDDED_BUILDER_VERSION,
        }
        for split in SPLITS:  # the images stay on disk, read when needed
            assert isinstance(domain.images[split], ImageShard)
            assert domain.images[split].path == folder / name / f"{split}.images.npy"
            assert np.load(folder / name / f"{split}.targets.npy").tolist() == (
                domain.targets[split].tolist()
            )
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]
    again = build_embedded_benchmark(embedded_cache_root, 32, 0)
    _assert_same(embedded_domains, again)
    assert benchmark_digest(again) == benchmark_digest(embedded_domains)


def test_no_image_is_in_two_splits(embedded_domains: dict[str, DomainData]) -> None:
    """Each distinct image once: animal_mnist ships 284 pairs of identical silhouettes, which
    would otherwise put some test images into training."""
    for name, domain in embedded_domains.items():
        seen: set[bytes] = set()
        for split in SPLITS:
            images = np.asarray(domain.images[split])
            hashes = {hashlib.sha256(x.tobytes()).digest() for x in images}
            assert len(hashes) == len(images), (name, split)
            assert not hashes & seen, (name, split)
            seen |= hashes


def test_distinct_images_keeps_first_occurrences() -> None:
    images = np.zeros((5, 2, 2, 3), dtype=np.uint8)
    images[1, 0, 0, 0] = 1
    images[3, 0, 0, 0] = 1  # a copy of image 1
    images[4, 1, 1, 2] = 9
    assert distinct_images(images).tolist() == [0, 1, 4]


def test_same_seed_other_cache_dir_identical(
    embedded_domains: dict[str, DomainData], tmp_path: Path
) -> None:
    other = build_embedded_benchmark(tmp_path, 32, 0)
    _assert_same(embedded_domains, other)
    assert benchmark_digest(other) == benchmark_digest(embedded_domains)


def test_other_seed_changes_digest(embedded_domains: dict[str, DomainData], tmp_path: Path) -> None:
    subset = ["embedded:faces", "embedded:digits"]
    seed1 = load_domains(subset, tmp_path, 32, 1)
    seed0 = {n: embedded_domains[n] for n in ("faces", "digits")}
    assert benchmark_digest(seed1) != benchmark_digest(seed0)
    assert (tmp_path / "embedded-s32-seed1" / "faces" / "cache.json").is_file()


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "sidecar"])
def test_corrupt_cache_is_rebuilt(
    embedded_domains: dict[str, DomainData],
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    load_domains(["embedded:faces"], tmp_path, 32, 0)
    folder = tmp_path / "embedded-s32-seed0" / "faces"
    shard = folder / "val.images.npy"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "overwrite":  # same size; the modification time tells
        time.sleep(0.05)  # past the file system's timestamp granularity
        shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    else:  # a cache of another image size under this name
        meta = json.loads((folder / "cache.json").read_text())
        meta["key"]["image_size"] = 16
        (folder / "cache.json").write_text(json.dumps(meta))
    again = load_domains(["embedded:faces"], tmp_path, 32, 0)
    _assert_same({"faces": embedded_domains["faces"]}, again)
    assert "rebuilding" in caplog.text


def test_print_summary(embedded_domains: dict[str, DomainData]) -> None:
    buf = io.StringIO()
    digest = benchmark_digest(embedded_domains)
    print_summary(embedded_domains, digest, Console(file=buf, width=200))
    text = buf.getvalue()
    assert digest in text
    for name in EMBEDDED_DOMAINS:
        assert name in text


# ---------------------------------------------------------------------------- unpickler


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_globals() -> None:
    evil = pickle.dumps(_Evil())  # dumping runs nothing; never load this with pickle.loads
    with pytest.raises(pickle.UnpicklingError, match="forbidden"):
        RestrictedUnpickler(io.BytesIO(evil)).load()
    with pytest.raises(pickle.UnpicklingError):
        restricted_pickle_load(pickle.dumps(print))
    with pytest.raises(pickle.UnpicklingError):
        restricted_pickle_load(pickle.dumps({"a": 1}))


def test_restricted_unpickler_loads_arrays() -> None:
    arr = np.arange(12, dtype=np.int64).reshape(3, 4)
    for protocol in (3, 4):
        out = restricted_pickle_load(pickle.dumps(arr, protocol=protocol))
        assert out.dtype == arr.dtype and np.array_equal(out, arr)
    for protocol in (2, 5):  # need _codecs.encode / numpy's _frombuffer: not admitted
        with pytest.raises(pickle.UnpicklingError):
            restricted_pickle_load(pickle.dumps(arr, protocol=protocol))


# ---------------------------------------------------------------------------- user formats


def _save(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}
    Image.new("RGB", size, colour).save(path, format=fmt[path.suffix.lower()])
    return path


def _flat_tree(root: Path, per_class: int = 10) -> None:
    for c, name in enumerate(["cat", "ant", "bee"]):  # sorted: ant, bee, cat
        for i in range(per_class):
            ext = [".png", ".jpg", ".JPEG", ".bmp"][i % 4]
            _save(root / name / f"img{i}{ext}", COLOURS[c])
    (root / "cat" / "notes.txt").write_text("not an image")


def _colour_of(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1, 3).mean(axis=1)


def test_imagefolder_flat_layout(tmp_path: Path) -> None:
    _flat_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    d = load_imagefolder_domain(tmp_path / "tree", "shapes", 16, cache, seed=3)
    assert d.labels == ["ant", "bee", "cat"]
    assert d.counts() == {"train": 18, "val": 6, "test": 6}
    for split in SPLITS:
        assert d.images[split].shape[1:] == (16, 16, 3)
        expected = np.asarray([COLOURS[[1, 2, 0][t]] for t in d.targets[split]], dtype=float)
        np.testing.assert_allclose(_colour_of(d.images[split][:]), expected, atol=3)
    again = load_imagefolder_domain(tmp_path / "tree", "shapes", 16, cache, seed=3)
    assert benchmark_digest({"s": again}) == benchmark_digest({"s": d})
    other = load_imagefolder_domain(tmp_path / "tree", "shapes", 16, cache, seed=4)
    assert benchmark_digest({"s": other}) != benchmark_digest({"s": d})
    assert len(list((cache / "imagefolder").iterdir())) == 2
    # an image added to the tree: another source list, another cache
    _save(tmp_path / "tree" / "ant" / "extra.png", COLOURS[1])
    more = load_imagefolder_domain(tmp_path / "tree", "shapes", 16, cache, seed=3)
    assert sum(more.counts().values()) == 31
    assert len(list((cache / "imagefolder").iterdir())) == 3


def test_imagefolder_split_layout(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for c, name in enumerate(["red", "green"]):
            for i in range(n):
                _save(root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}", COLOURS[c])
    d = load_imagefolder_domain(root, "rg", 8, tmp_path / "cache")
    assert d.labels == ["green", "red"]
    assert d.counts() == {"train": 6, "val": 4, "test": 2}
    assert list(d.targets["test"]) == [0, 1]
    assert d.is_colour


def test_load_domains_mixed_spec(tmp_path: Path) -> None:
    _flat_tree(tmp_path / "tree", per_class=4)
    spec = [f"imagefolder:mine={tmp_path / 'tree'}", "embedded:faces"]
    out = load_domains(spec, tmp_path / "cache", 16, 0, workers=2)
    assert list(out) == ["mine", "faces"]
    assert out["faces"].image_size == 16 and out["mine"].image_size == 16
    single = load_domains(spec, tmp_path / "other", 16, 0, workers=0)
    assert benchmark_digest(single) == benchmark_digest(out)  # worker processes change nothing


# ---------------------------------------------------------------------------- bad inputs


def _one_line_error(excinfo: pytest.ExceptionInfo[DataError], *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_imagefolder_domain(tmp_path / "nope", "x", 16, tmp_path)
    _one_line_error(e, str(tmp_path / "nope"))
    with pytest.raises(DataError) as e:
        load_domains([f"decathlon:x={tmp_path / 'gone'}"], tmp_path, 16, 0)
    _one_line_error(e, str(tmp_path / "gone"))


def test_single_class_folder(tmp_path: Path) -> None:
    for i in range(5):
        _save(tmp_path / "only" / f"{i}.png", COLOURS[0])
    with pytest.raises(DataError) as e:
        load_imagefolder_domain(tmp_path, "x", 16, tmp_path / "cache")
    _one_line_error(e, str(tmp_path), "2 class")


def test_truncated_png_names_file(tmp_path: Path) -> None:
    _flat_tree(tmp_path / "tree", per_class=4)
    bad = tmp_path / "tree" / "bee" / "img0.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        load_imagefolder_domain(tmp_path / "tree", "x", 16, tmp_path / "cache")
    _one_line_error(e, str(bad))


def test_garbage_jpg_names_file(tmp_path: Path) -> None:
    _flat_tree(tmp_path / "tree", per_class=4)
    bad = tmp_path / "tree" / "ant" / "zzz.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(DataError) as e:
        load_imagefolder_domain(tmp_path / "tree", "x", 16, tmp_path / "cache")
    _one_line_error(e, str(bad))


def test_empty_split(tmp_path: Path) -> None:
    for c, name in enumerate(["a", "b"]):
        _save(tmp_path / name / "0.png", COLOURS[c])
    with pytest.raises(DataError) as e:
        load_imagefolder_domain(tmp_path, "x", 16, tmp_path / "cache")
    _one_line_error(e, "empty")


@pytest.mark.parametrize(
    "spec",
    [["bogus"], ["embedded:nope"], ["imagefolder:noequals"], ["embedded", "embedded:faces"]],
)
def test_bad_specs(spec: list[str], tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_domains(spec, tmp_path, 16, 0)
    _one_line_error(e)


# ---------------------------------------------------------------------------- torch helpers


def _tiny_domain(n: int = 10, size: int = 8) -> DomainData:
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for s in SPLITS}
    targets = {s: np.arange(n, dtype=np.int64) % 2 for s in SPLITS}
    return DomainData("tiny", ["a", "b"], images, targets, (0.5,) * 3, (0.25,) * 3, True, "test")


def test_step_sampler_epochs_shares_and_determinism() -> None:
    sampler = StepSampler({0: 10, 1: 3}, 5, {0: 1, 1: 2})
    steps = iter(sampler)
    first, second = next(steps), next(steps)
    assert sorted([*first[0], *second[0]]) == list(range(10))  # one epoch of domain 0
    assert all(len(plan[1]) == 5 for plan in (first, second))  # domain 1 crosses epochs
    assert sorted(first[1][:3].tolist()) == [0, 1, 2]
    again = next(iter(sampler))  # every iteration starts from the seeds
    assert all(np.array_equal(again[k], first[k]) for k in (0, 1))
    halves = [next(iter(StepSampler({0: 10, 1: 3}, 5, {0: 1, 1: 2}, r, 2))) for r in (0, 1)]
    for k in (0, 1):  # rank shares are contiguous parts of the same global batch
        assert np.array_equal(np.concatenate([h[k] for h in halves]), first[k])
        assert [len(h[k]) for h in halves] == [2, 3]


def test_iterate_eval_in_order() -> None:
    d = _tiny_domain(10)
    parts = list(iterate_eval(d, "val", 4))
    assert [len(y) for _, y in parts] == [4, 4, 2]
    x = torch.cat([x for x, _ in parts]).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(x, d.images["val"])
    assert np.array_equal(torch.cat([y for _, y in parts]).numpy(), d.targets["val"])


def test_train_augment_shape_dtype_determinism() -> None:
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    a = train_augment(images, True, torch.Generator().manual_seed(7))
    b = train_augment(images, True, torch.Generator().manual_seed(7))
    c = train_augment(images, True, torch.Generator().manual_seed(8))
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    flat = torch.full((4, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(train_augment(flat, True, torch.Generator().manual_seed(0)), flat)
    floats = images[:4].float()
    assert train_augment(floats, False, torch.Generator()).dtype == torch.float32


def test_train_augment_flip_only_when_allowed() -> None:
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    images[..., 16:] = 255  # dark left half, bright right half
    no_flip = train_augment(images, False, torch.Generator().manual_seed(0)).float()
    assert bool((no_flip[..., :4].mean((1, 2, 3)) < no_flip[..., -4:].mean((1, 2, 3))).all())
    flipped = train_augment(images, True, torch.Generator().manual_seed(0)).float()
    reversed_ = flipped[..., :4].mean((1, 2, 3)) > flipped[..., -4:].mean((1, 2, 3))
    assert 10 < int(reversed_.sum()) < 54
