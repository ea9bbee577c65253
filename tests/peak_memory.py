"""Peak memory of decoding and preprocessing image files, each in a fresh fork of a clean
process so that no earlier allocation hides or inflates the figure.

    python -m tests.peak_memory IMAGE_SIZE MAX_PIXELS FILE...

prints one JSON line per file: ``{"file", "outcome", "peak_bytes"}`` where ``outcome`` is
``"ok"`` or the exception's type and message, and ``peak_bytes`` is the growth of the peak
resident set (VmHWM, reset through /proc/self/clear_refs) over the resident set before the
file was read. The child runs under an address-space limit of its current size plus
``--headroom-mib`` (default 2048), so that a runaway allocation fails with MemoryError instead
of taking the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure_child(path: Path, image_size: int, max_pixels: int, headroom: int) -> dict:
    from PIL import Image

    from multidomain.preprocess import decode_to_input, eval_resize

    transform = eval_resize(image_size)
    transform(Image.new("RGB", (3, 2)))  # torch's first operation after a fork costs ~25 MiB
    limit = status_bytes("VmSize") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_bytes("VmRSS")
    try:
        tensor = decode_to_input(path.read_bytes(), max_pixels, transform)
        outcome = "ok" if tuple(tensor.shape) == (3, image_size, image_size) else "bad shape"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return {"file": str(path), "outcome": outcome, "peak_bytes": status_bytes("VmHWM") - before}


def measure(path: Path, image_size: int, max_pixels: int, headroom: int) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            result = measure_child(path, image_size, max_pixels, headroom)
            os.write(write_end, json.dumps(result).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        return {
            "file": str(path),
            "outcome": f"child died (wait status {status})",
            "peak_bytes": -1,
        }
    return dict(json.loads(payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_size", type=int)
    parser.add_argument("max_pixels", type=int)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--headroom-mib", type=int, default=2048)
    args = parser.parse_args()
    # Import once in the parent, so that children measure the image alone.
    from PIL import Image

    import multidomain.preprocess  # noqa: F401

    Image.init()  # every format plugin
    for path in args.files:
        result = measure(path, args.image_size, args.max_pixels, args.headroom_mib << 20)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
