"""A generated corpus of odd and hostile image files for the service, each with the status a
hardened service answers: extreme aspect ratios within the pixel limit, small files that declare
huge images, decompression bombs, every pixel mode a decoder hands over, multi-frame files,
truncated files and garbage. Shared by ``tests/integration/test_hostile_corpus.py`` and
``bench/hostile_corpus.py``."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

#: The service's default ``MDP_MAX_IMAGE_PIXELS``; every "valid" case stays within it.
MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class HostileCase:
    name: str
    category: str
    data: bytes
    content_type: str
    expected_status: int  # what the service answers; 5xx is never right
    note: str = ""


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def frames(fmt: str, images: list[Image.Image], **options: object) -> bytes:
    return encode(images[0], fmt, save_all=True, append_images=images[1:], **options)


def noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32), "F")
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode in ("RGBA", "LA", "PA"):
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
        base = rgb.convert({"RGBA": "RGB", "LA": "L", "PA": "P"}[mode]).convert(mode)
        base.putalpha(alpha)
        return base
    return rgb.convert(mode)


def solid(mode: str, size: tuple[int, int]) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.full((size[1], size[0]), 40_000, dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(np.full((size[1], size[0]), 0.25, dtype=np.float32), "F")
    return Image.new(mode, size, 1)


# headers that declare other sizes --------------------------------------------------------------


def png_with_header_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_with_header_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_with_sizes(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", *screen)
    descriptor = data.index(b"\x2c", 13)
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", *frame)
    return bytes(data)


def tiff_with_header_size(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("L", (4, 4)), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):  # ImageWidth, ImageLength, rewritten as LONG
            struct.pack_into("<HHII", data, entry, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def webp_with_header_size(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header declares width x height (at most 16384 each)."""
    data = bytearray(encode(Image.new("RGB", (8, 8)), "WEBP", lossless=True))
    start = data.index(b"VP8L") + 9  # chunk id, size, signature byte 0x2f
    bits = struct.unpack_from("<I", data, start)[0] & ~((1 << 28) - 1)
    struct.pack_into("<I", data, start, bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


def png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    """A valid 8x8 PNG with one extra ancillary chunk before IDAT."""
    data = encode(Image.new("RGB", (8, 8), (10, 20, 30)), "PNG")
    chunk = struct.pack(">I", len(payload)) + kind + payload
    chunk += struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    at = data.index(b"IDAT") - 4
    return data[:at] + chunk + data[at:]


# the corpus ------------------------------------------------------------------------------------


def _extreme(name: str, fmt: str, mode: str, size: tuple[int, int], **options: object):
    return lambda: HostileCase(
        name,
        "extreme aspect ratio",
        encode(solid(mode, size), fmt, **options),
        f"image/{fmt.lower()}",
        200,
        f"{size[0]}x{size[1]} {mode}, {size[0] * size[1]} pixels",
    )


def _mode(name: str, fmt: str, image: Callable[[], Image.Image], status: int = 200, **options):
    return lambda: HostileCase(
        name, "pixel mode", encode(image(), fmt, **options), f"image/{fmt.lower()}", status
    )


def _palette_with_alpha_table() -> bytes:
    image = noise("P", (40, 30))
    alphas = np.random.default_rng(1).integers(0, 256, 256, dtype=np.uint8).tobytes()
    return encode(image, "PNG", transparency=alphas)


def _values(mode: str, value: float) -> Image.Image:
    dtype = np.int32 if mode == "I" else np.float32
    pixels = np.full((30, 40), 0.5 if mode == "F" else 1000, dtype=dtype)
    pixels[3, 4] = value
    return Image.fromarray(pixels, mode)


def _gif_animation(count: int) -> bytes:
    images = []
    for i in range(count):
        image = Image.new("P", (32, 32), i % 2)
        image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        images.append(image)
    return frames("GIF", images, duration=10, disposal=2)


def _truncated(fmt: str) -> bytes:
    data = encode(noise("RGB", (64, 48)), fmt)
    return data[: len(data) // 2]


def _corrupt_png() -> bytes:
    data = bytearray(encode(noise("RGB", (64, 48)), "PNG"))
    at = data.index(b"IDAT") + 20
    data[at : at + 16] = bytes(16)
    return bytes(data)


def _garbage(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()


def _builders() -> Iterator[Callable[[], HostileCase]]:
    # extreme aspect ratios within the pixel limit: the old short-side resize made these
    # 224 x (224 * aspect) images, many GB
    yield _extreme("png-1x4000000-L", "PNG", "L", (1, 4_000_000))
    yield _extreme("png-4000000x1-L", "PNG", "L", (4_000_000, 1))
    yield _extreme("png-2x8000000-L", "PNG", "L", (2, 8_000_000))
    yield _extreme("png-8000000x2-RGB", "PNG", "RGB", (8_000_000, 2))
    yield _extreme("png-1x16777216-L", "PNG", "L", (1, MAX_PIXELS))
    yield _extreme("png-2x4000000-RGBA", "PNG", "RGBA", (2, 4_000_000))
    yield _extreme("png-4000000x2-P", "PNG", "P", (4_000_000, 2), transparency=1)
    yield _extreme("tiff-3x5000000-I16", "TIFF", "I;16", (3, 5_000_000), compression="tiff_deflate")
    yield _extreme("tiff-2x8000000-F", "TIFF", "F", (2, 8_000_000), compression="tiff_deflate")
    yield _extreme("gif-65535x200-P", "GIF", "P", (65_535, 200))
    yield _extreme("jpeg-65500x256-RGB", "JPEG", "RGB", (65_500, 256), quality=50)
    yield _extreme("webp-16383x1000-RGB", "WEBP", "RGB", (16_383, 1000), lossless=True)
    # a file inside the limits that decodes to the most pixels allowed
    yield _extreme("png-4096x4096-RGB", "PNG", "RGB", (4096, 4096))
    yield _extreme("jpeg-4096x4096-RGB", "JPEG", "RGB", (4096, 4096))

    # small files declaring huge images: refused from the header
    def huge(name: str, make: Callable[[], bytes], content_type: str, note: str):
        return lambda: HostileCase(name, "declared size", make(), content_type, 422, note)

    yield huge("png-100000x100000", lambda: png_with_header_size(100_000, 100_000), "image/png",
               "IHDR claims 10^10 pixels")  # fmt: skip
    yield huge("png-5000x5000", lambda: png_with_header_size(5000, 5000), "image/png",
               "IHDR claims 25M pixels, just over the limit")  # fmt: skip
    yield huge("jpeg-65000x65000", lambda: jpeg_with_header_size(65_000, 65_000), "image/jpeg",
               "SOF claims 4.2G pixels")  # fmt: skip
    yield huge("gif-screen-65535x65535", lambda: gif_with_sizes((65_535, 65_535), (4, 4)),
               "image/gif", "logical screen 65535x65535")  # fmt: skip
    yield huge("gif-frame-8000x8000", lambda: gif_with_sizes((4, 4), (8000, 8000)),
               "image/gif", "first frame larger than its 4x4 screen")  # fmt: skip
    yield huge("tiff-100000x100000", lambda: tiff_with_header_size(100_000, 100_000),
               "image/tiff", "IFD claims 10^10 pixels")  # fmt: skip
    yield huge("webp-16384x16384", lambda: webp_with_header_size(16_384, 16_384),
               "image/webp", "VP8L header claims 268M pixels")  # fmt: skip

    # decompression bombs in metadata: Pillow's text-chunk limits
    zeros = zlib.compress(bytes(64 << 20), 9)
    yield lambda: HostileCase(
        "png-ztxt-bomb", "bomb", png_with_chunk(b"zTXt", b"comment\0\0" + zeros), "image/png",
        422, "zTXt inflating to 64 MiB",
    )  # fmt: skip
    yield lambda: HostileCase(
        "png-iccp-bomb", "bomb", png_with_chunk(b"iCCP", b"icc\0\0" + zeros), "image/png",
        422, "iCCP profile inflating to 64 MiB",
    )  # fmt: skip

    # every pixel mode, through the formats that store it
    size = (40, 30)
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        yield _mode(f"png-{mode}", "PNG", lambda mode=mode: noise(mode, size))
    yield _mode("png-P-transparent-index", "PNG", lambda: noise("P", size), transparency=3)
    yield lambda: HostileCase(
        "png-P-alpha-table", "pixel mode", _palette_with_alpha_table(), "image/png", 200
    )
    yield _mode("png-L-colour-key", "PNG", lambda: noise("L", size), transparency=7)
    yield _mode("png-RGB-colour-key", "PNG", lambda: noise("RGB", size), transparency=(1, 2, 3))
    yield _mode("png-I16-colour-key", "PNG", lambda: noise("I;16", size), transparency=300)
    for mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "F"):
        yield _mode(f"tiff-{mode}", "TIFF", lambda mode=mode: noise(mode, size))
    yield _mode("tiff-I16B", "TIFF", lambda: Image.fromarray(np.full((30, 40), 999, ">u2")))
    yield _mode("tiff-I-negative", "TIFF", lambda: _values("I", -5), 422)
    yield _mode("tiff-I-over-16-bit", "TIFF", lambda: _values("I", 70_000), 422)
    yield _mode("tiff-F-over-1", "TIFF", lambda: _values("F", 3.5), 422)
    yield _mode("tiff-F-nan", "TIFF", lambda: _values("F", float("nan")), 422)
    for mode in ("L", "RGB", "CMYK"):
        yield _mode(f"jpeg-{mode}", "JPEG", lambda mode=mode: noise(mode, size))
    for mode in ("1", "L", "P", "RGB", "RGBA"):
        yield _mode(f"bmp-{mode}", "BMP", lambda mode=mode: noise(mode, size))
    for mode in ("RGB", "RGBA"):
        yield _mode(f"webp-{mode}", "WEBP", lambda mode=mode: noise(mode, size), lossless=True)
    yield _mode("gif-P", "GIF", lambda: noise("P", size))
    yield _mode("gif-P-transparent", "GIF", lambda: noise("P", size), transparency=5)

    # multi-frame files: the first frame only
    def animation(name: str, make: Callable[[], bytes], content_type: str, note: str):
        return lambda: HostileCase(name, "multi-frame", make(), content_type, 200, note)

    yield animation("gif-2000-frames", lambda: _gif_animation(2000), "image/gif", "2000 frames")
    yield animation(
        "tiff-2-pages",
        lambda: frames(
            "TIFF", [noise("I;16", size), solid("RGB", (4000, 4000))], compression="tiff_deflate"
        ),
        "image/tiff",
        "I;16 page, then a 16M-pixel page",
    )
    yield animation(
        "apng-3-frames",
        lambda: frames("PNG", [noise("RGBA", size, seed=i) for i in range(3)]),
        "image/png",
        "APNG",
    )
    yield animation(
        "webp-3-frames",
        lambda: frames("WEBP", [noise("RGB", size, seed=i) for i in range(3)], lossless=True),
        "image/webp",
        "animated WebP",
    )

    # truncated and corrupt files, garbage
    for fmt in ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP"):
        yield lambda fmt=fmt: HostileCase(
            f"{fmt.lower()}-truncated", "truncated", _truncated(fmt), f"image/{fmt.lower()}", 422
        )
    yield lambda: HostileCase("png-corrupt-idat", "corrupt", _corrupt_png(), "image/png", 422)
    yield lambda: HostileCase("empty", "garbage", b"", "image/png", 422)
    yield lambda: HostileCase(
        "png-signature-only", "garbage", b"\x89PNG\r\n\x1a\n", "image/png", 422
    )
    yield lambda: HostileCase("text", "garbage", b"<svg>not an image</svg>", "image/png", 422)
    yield lambda: HostileCase("random-64KiB", "garbage", _garbage(1 << 16), "image/jpeg", 422)


def hostile_corpus() -> Iterator[HostileCase]:
    """The cases, generated one at a time (the largest file is about 300 KB)."""
    for build in _builders():
        yield build()


# posting the corpus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    name: str
    category: str
    bytes: int
    expected_status: int
    status: int | None  # None: no HTTP answer (connection error)
    error_type: str
    latency_s: float
    rss_before: int
    rss_after: int
    rss_peak: int  # highest resident set while the case was handled
    alive: bool
    note: str


def status_bytes(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, VmSize) in bytes; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def post_corpus(
    url: str, pid: int, domain: str, cases: Iterable[HostileCase], timeout: float = 60
) -> Iterator[CaseResult]:
    """POST each case to ``/v1/domains/<domain>/predict``, one at a time, with the server's
    resident set before, after and at its highest in between (VmHWM, reset before each case
    through /proc/<pid>/clear_refs); stops early once the server process is gone."""
    with httpx.Client(timeout=timeout) as client:
        for case in cases:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            rss_before = status_bytes(pid, "VmRSS")
            start = time.perf_counter()
            status: int | None = None
            error_type = ""
            try:
                response = client.post(
                    f"{url}/v1/domains/{domain}/predict",
                    content=case.data,
                    headers={"content-type": case.content_type},
                )
                status = response.status_code
                if response.headers.get("content-type", "").startswith("application/json"):
                    error_type = response.json().get("error", {}).get("type", "")
            except httpx.HTTPError as exc:
                error_type = type(exc).__name__
            latency = time.perf_counter() - start
            alive = _alive(pid)
            yield CaseResult(
                case.name, case.category, len(case.data), case.expected_status, status,
                error_type, latency, rss_before, status_bytes(pid, "VmRSS"),
                status_bytes(pid, "VmHWM"), alive, case.note,
            )  # fmt: skip
            if not alive:
                return


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
