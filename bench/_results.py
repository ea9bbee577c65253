"""The one way a benchmark records its figures: ``<out>.json`` and ``<out>.md`` under
``bench/results/`` (atomically), with the command that produced them, and the markdown printed."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multidomain.files import write_json, write_text

__all__ = ["RESULTS", "command", "write_results"]

RESULTS = Path(__file__).resolve().parent / "results"


def command() -> str:
    """The command line that ran this benchmark, as ``python bench/<script>.py ...``."""
    return shlex.join(["python", *sys.argv])


def write_results(out: Path, result: Mapping[str, Any], markdown: str) -> None:
    write_json(out.with_suffix(".json"), result)
    write_text(out.with_suffix(".md"), markdown)
    print(markdown)
