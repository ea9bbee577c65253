"""The service never imports the offline training code (imports go training -> multidomain <-
service). Checked in a fresh interpreter, since the test session itself imports ``training``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = (
    "import service, service.app, service.server, sys; "
    "loaded = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')); "
    "assert not loaded, loaded"
)


def test_service_does_not_import_training() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
