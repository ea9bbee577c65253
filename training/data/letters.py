"""The ``letters`` domain: notMNIST-style letters A-J rendered from the fonts matplotlib ships
(``mpl-data/fonts/ttf``: DejaVu, STIX, Computer Modern), each image with seeded random size,
stroke width, brightness and an affine jitter (rotation, shear, scale, shift).

The image pool does not depend on the split seed: it is drawn from a fixed stream, so every
split seed partitions the same images. Rendering is deterministic for a given matplotlib
(fonts) and Pillow (FreeType rasteriser); the split digests record the result.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training.data.domain import DataError, domain_rng

__all__ = ["LETTERS", "LETTERS_PER_CLASS", "LETTER_FONTS", "letters_source", "render_letters"]

LETTERS = "ABCDEFGHIJ"
#: Images per letter (so that a test split holds ~97 per class).
LETTERS_PER_CLASS = 650
#: Font files of matplotlib's ``mpl-data/fonts/ttf`` with Latin capitals; every letter uses
#: each face about equally often.
LETTER_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
)
_CANVAS = 96  # rendering side; each image is then resized to the image size
_EM_PX = (56, 84)  # font size range on the canvas
_MAX_STROKE = 2
_ROTATION_DEG = 12.0
_SHEAR = 0.25
_SCALE = (0.85, 1.1)
_SHIFT = 0.08  # of the canvas side


@functools.lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, size)
    except OSError as exc:
        raise DataError(f"cannot read font {path}: {exc}") from None


def _glyph(font: ImageFont.FreeTypeFont, text: str) -> bytes:
    image = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(image).text((8, 8), text, fill=255, font=font)
    return image.tobytes()


def _font_files(folder: Path) -> list[Path]:
    """Every listed font in ``folder``, checked to draw ten distinct letters, none of them its
    missing-glyph box."""
    paths = []
    for name in LETTER_FONTS:
        path = folder / name
        if not path.is_file():
            raise DataError(f"font file missing: {path} (the letters domain renders from it)")
        font = _font(str(path), 48)
        missing = _glyph(font, "\uffff")
        glyphs = {_glyph(font, letter) for letter in LETTERS}
        if len(glyphs) != len(LETTERS) or missing in glyphs:
            raise DataError(f"font {path} lacks some of the letters {LETTERS}")
        paths.append(path)
    return paths


def _jitter(rng: np.random.Generator) -> tuple[float, ...]:
    """PIL's inverse affine coefficients (output -> input) of a random rotation, shear, scale
    and shift about the canvas centre."""
    angle = np.deg2rad(rng.uniform(-_ROTATION_DEG, _ROTATION_DEG))
    shear, scale = rng.uniform(-_SHEAR, _SHEAR), rng.uniform(*_SCALE)
    shift = rng.uniform(-_SHIFT, _SHIFT, 2) * _CANVAS
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotate @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inverse = np.linalg.inv(forward)
    centre = np.full(2, _CANVAS / 2)
    offset = centre - inverse @ (centre + shift)
    return (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])


def _render(path: Path, letter: str, size: int, rng: np.random.Generator) -> np.ndarray:
    font = _font(str(path), int(rng.integers(_EM_PX[0], _EM_PX[1] + 1)))
    stroke = int(rng.integers(0, _MAX_STROKE + 1))
    fill = int(rng.integers(170, 256))
    image = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font, stroke_width=stroke)
    origin = ((_CANVAS - (right - left)) / 2 - left, (_CANVAS - (bottom - top)) / 2 - top)
    draw.text(origin, letter, fill=fill, font=font, stroke_width=stroke, stroke_fill=fill)
    image = image.transform(
        image.size, Image.Transform.AFFINE, _jitter(rng), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def render_letters(size: int, font_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``LETTERS_PER_CLASS`` grey images ``[N, size, size]`` per letter and their targets, drawn
    with the fonts of ``font_dir`` (matplotlib's ``mpl-data/fonts/ttf``) from a fixed random
    stream: the same pool for every split seed."""
    fonts = _font_files(font_dir)
    rng = domain_rng(0, "letters/render")
    images, targets = [], []
    for label, letter in enumerate(LETTERS):
        for i in range(LETTERS_PER_CLASS):
            images.append(_render(fonts[i % len(fonts)], letter, size, rng))
            targets.append(label)
    return np.stack(images), np.asarray(targets, dtype=np.int64)


def letters_source() -> str:
    version = importlib.metadata.version("matplotlib")
    return (
        f"letters A-J rendered from matplotlib {version}'s {len(LETTER_FONTS)} DejaVu/STIX/"
        f"Computer Modern fonts, {LETTERS_PER_CLASS}/class, seeded jitter"
    )
