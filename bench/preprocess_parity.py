"""Pixels of ``multidomain.preprocess.eval_resize`` vs the torchvision transform it replaces.

The reference is torchvision v2 on the PIL image: ``RGB -> Resize(size, bilinear, antialias)
-> CenterCrop(size)``. Sources: photos from scikit-image's data (PNG pixels and the same photos
through JPEG), images of the embedded benchmark's domains, each resampled to a set of source
sizes (smaller and larger than the input size, portrait and landscape), and strips beyond
``WHOLE_RESIZE_MAX_ASPECT`` that take the crop-region path. Records, per source kind and input
size, the maximum absolute difference (levels of 255) and the fraction of differing values under
``bench/results/preprocess_parity.{json,md}``.

    python bench/preprocess_parity.py
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import skimage.data
import torch
from _results import RESULTS, command, write_results
from PIL import Image
from torchvision.transforms import v2

from multidomain.preprocess import WHOLE_RESIZE_MAX_ASPECT, eval_resize
from training.data import EMBEDDED_DOMAINS, build_embedded_benchmark

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "immunohistochemistry")
NORMAL_SIZES = ((37, 29), (29, 37), (80, 60), (213, 320), (500, 375), (1024, 683), (2048, 1536))
STRIP_SIZES = ((1500, 200), (200, 1500), (4000, 90), (90, 4000), (6000, 25), (13, 5000))


def reference(image_size: int) -> v2.Compose:
    return v2.Compose(
        [v2.RGB(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), v2.ToImage()]
    )


def photos() -> Iterator[tuple[str, Image.Image]]:
    for name in PHOTOS:
        yield name, Image.fromarray(getattr(skimage.data, name)())


def benchmark_images(per_domain: int) -> Iterator[tuple[str, Image.Image]]:
    with tempfile.TemporaryDirectory() as cache:  # the images are read from the cache
        domains = build_embedded_benchmark(Path(cache), image_size=32, seed=0)
        for name in EMBEDDED_DOMAINS:
            images = domains[name].images["test"][:per_domain]
            for i in range(per_domain):
                yield name, Image.fromarray(images[i])


def jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    decoded.load()
    return decoded


def compare(
    kind: str, images: list[Image.Image], image_sizes: tuple[int, ...], rows: list[dict]
) -> None:
    for image_size in image_sizes:
        expected = reference(image_size)
        ours = eval_resize(image_size)
        worst, differing, total = 0, 0, 0
        for image in images:
            a = expected(image).as_subclass(torch.Tensor).to(torch.int16)
            b = ours(image).to(torch.int16)
            diff = (a - b).abs()
            worst = max(worst, int(diff.max()))
            differing += int((diff > 0).sum())
            total += diff.numel()
        rows.append(
            {
                "source": kind,
                "input_size": image_size,
                "images": len(images),
                "max_abs_diff": worst,
                "differing_fraction": differing / total,
            }
        )
        print(json.dumps(rows[-1]), flush=True)


def compare_draft(images: list[Image.Image], image_size: int, factor: int, rows: list[dict]):
    """JPEG reduce-on-load (``draft``, DCT scaling by 1/2, 1/4, 1/8) to at least
    ``factor * image_size`` per side, vs the full decode; both through ``eval_resize``."""
    ours = eval_resize(image_size)
    worst, decoded = 0, set()
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        full = Image.open(io.BytesIO(buffer.getvalue()))
        reduced = Image.open(io.BytesIO(buffer.getvalue()))
        reduced.draft("RGB", (factor * image_size, factor * image_size))
        decoded.add(reduced.size)
        diff = (ours(full).to(torch.int16) - ours(reduced).to(torch.int16)).abs()
        worst = max(worst, int(diff.max()))
    rows.append(
        {
            "draft_at_least": f"{factor} x input",
            "input_size": image_size,
            "images": len(images),
            "decoded_sizes": sorted(decoded),
            "max_abs_diff": worst,
        }
    )
    print(json.dumps(rows[-1]), flush=True)


def resampled(images: Iterator[tuple[str, Image.Image]], sizes: tuple[tuple[int, int], ...]):
    return [
        im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        for _, im in images
        for size in sizes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-sizes", type=int, nargs="+", default=[28, 32, 64, 224])
    parser.add_argument("--per-domain", type=int, default=4, help="benchmark images per domain")
    parser.add_argument("--out", type=Path, default=RESULTS / "preprocess_parity")
    args = parser.parse_args()
    sizes = tuple(args.input_sizes)
    rows: list[dict] = []
    photo_png = resampled(photos(), NORMAL_SIZES)
    compare("photos (PNG pixels)", photo_png, sizes, rows)
    compare("photos through JPEG q90", [jpeg(im) for im in photo_png], sizes, rows)
    compare("photos, greyscale (mode L)", [im.convert("L") for im in photo_png], sizes, rows)
    bench = resampled(benchmark_images(args.per_domain), NORMAL_SIZES)
    compare("embedded benchmark images", bench, sizes, rows)
    strips = resampled(photos(), STRIP_SIZES)
    compare(f"strips, aspect > {WHOLE_RESIZE_MAX_ASPECT} (crop-region path)", strips, sizes, rows)
    draft_rows: list[dict] = []
    large = [im for im in photo_png if im.size == NORMAL_SIZES[-1]]
    for factor in (1, 2, 4):
        for image_size in sizes:
            compare_draft(large, image_size, factor, draft_rows)
    result = {
        "command": command(),
        "reference": "torchvision v2 RGB -> Resize(size, bilinear, antialias) -> CenterCrop(size)",
        "whole_resize_max_aspect": WHOLE_RESIZE_MAX_ASPECT,
        "source_sizes": [list(s) for s in NORMAL_SIZES],
        "strip_sizes": [list(s) for s in STRIP_SIZES],
        "rows": rows,
        "jpeg_draft_rows": draft_rows,
    }
    lines = [
        "# eval_resize vs the torchvision transform it replaces",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Reference: {result['reference']} on the PIL image. Each source is resampled (Lanczos) "
        f"to {', '.join(f'{w}x{h}' for w, h in NORMAL_SIZES)}; strips to "
        f"{', '.join(f'{w}x{h}' for w, h in STRIP_SIZES)}. Differences in levels of 255 over "
        "every output value.",
        "",
        "| source | input size | images | max abs diff | differing values |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['input_size']} | {r['images']} | {r['max_abs_diff']} | "
            f"{100 * r['differing_fraction']:.3f} % |"
        )
    lines += [
        "",
        f"JPEG reduce-on-load (`draft`), considered and not used: the {NORMAL_SIZES[-1][0]}x"
        f"{NORMAL_SIZES[-1][1]} photos as JPEG q90, decoded at the smallest DCT scale that keeps "
        "at least the given multiple of the input size per side, vs the full decode (both "
        "through eval_resize). A full decode is bounded by `MDP_MAX_IMAGE_PIXELS` anyway.",
        "",
        "| draft to at least | input size | images | decoded size | max abs diff |",
        "|---|---|---|---|---|",
    ]
    for r in draft_rows:
        sizes_seen = ", ".join(f"{w}x{h}" for w, h in r["decoded_sizes"])
        lines.append(
            f"| {r['draft_at_least']} | {r['input_size']} | {r['images']} | {sizes_seen} "
            f"| {r['max_abs_diff']} |"
        )
    write_results(args.out, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
