"""Peak memory of decoding + preprocessing stays a small multiple of the decoded image, whatever
its aspect ratio and mode. Each file is measured in a fresh fork of a clean process
(``tests.peak_memory``: peak resident set, under an address-space limit so that a regression
fails with MemoryError instead of taking the machine's memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile_images import solid

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 224  # the largest usual model input; the old resize made it 224 x 900 million
MAX_PIXELS = 4096 * 4096  # the service's default limit
MIB = 1 << 20
# Bytes per pixel of the mode that is resized: Pillow keeps L in one byte, I;16 in two, every
# other mode in four (palette and bilevel images are converted to RGB(A) first); plus one
# pointer per row.
WORKING_BYTES_PER_PIXEL = {"L": 1, "I;16": 2}


def working_bytes(mode: str, width: int, height: int) -> int:
    return WORKING_BYTES_PER_PIXEL.get(mode, 4) * width * height + 8 * height


def bound(mode: str, width: int, height: int) -> int:
    """3x the decoded image in its working mode (the decoder's row buffers, a converted copy,
    an alpha mask) plus 8 MiB for the model input and interpreter noise."""
    return 3 * working_bytes(mode, width, height) + 8 * MIB


CASES = {
    # name: (mode, width, height, format, save options)
    "tall 1x4M L": ("L", 1, 4_000_000, "PNG", {}),
    "wide 4Mx1 L": ("L", 4_000_000, 1, "PNG", {}),
    "tall 2x8M L": ("L", 2, 8_000_000, "PNG", {}),
    "wide 8Mx2 RGB": ("RGB", 8_000_000, 2, "PNG", {}),
    "tall 2x4M RGBA": ("RGBA", 2, 4_000_000, "PNG", {}),
    "tall 3x5M I;16": ("I;16", 3, 5_000_000, "PNG", {}),
    "wide 4Mx2 P transparency": ("P", 4_000_000, 2, "PNG", {"transparency": 0}),
    "square 4096 RGB": ("RGB", 4096, 4096, "PNG", {}),
    "square 4096 RGBA": ("RGBA", 4096, 4096, "PNG", {}),
    "square 4096 P transparency": ("P", 4096, 4096, "PNG", {"transparency": 0}),
    "square 4096 F": ("F", 4096, 4096, "TIFF", {"compression": "tiff_deflate"}),
}


@pytest.fixture(scope="module")
def peaks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("extreme")
    paths = {}
    for i, (name, (mode, width, height, fmt, options)) in enumerate(CASES.items()):
        path = folder / f"{i}.{fmt.lower()}"
        paths[str(path)] = name
        solid(mode, (width, height)).save(path, fmt, **options)
    command = [sys.executable, "-m", "tests.peak_memory", str(IMAGE_SIZE), str(MAX_PIXELS)]
    done = subprocess.run(
        [*command, *paths], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    results = [json.loads(line) for line in done.stdout.splitlines()]
    return {paths[r["file"]]: r for r in results}


@pytest.mark.parametrize("name", list(CASES))
def test_peak_memory_bounded_by_decoded_image(name: str, peaks: dict[str, dict]) -> None:
    mode, width, height, _, _ = CASES[name]
    assert width * height <= MAX_PIXELS
    result = peaks[name]
    assert result["outcome"] == "ok", result
    assert 0 < result["peak_bytes"] <= bound(mode, width, height), (
        f"{name}: peak {result['peak_bytes'] / MIB:.1f} MiB, bound "
        f"{bound(mode, width, height) / MIB:.1f} MiB"
    )
