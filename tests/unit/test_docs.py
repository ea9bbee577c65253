"""The documentation states what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import ServiceSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_service_setting_is_documented_with_its_default() -> None:
    text = (DOCS / "operations.md").read_text()
    rows = dict(re.findall(r"^\| `(MDP_[A-Z_]+)` \| `([^`]*)` \|", text, flags=re.MULTILINE))
    for name, field in ServiceSettings.model_fields.items():
        variable = f"MDP_{name.upper()}"
        assert variable in rows, f"{variable} missing from docs/operations.md"
        default = field.default
        documented = rows[variable]
        assert documented == str(default) or float(documented) == float(default), variable
    assert set(rows) == {f"MDP_{n.upper()}" for n in ServiceSettings.model_fields}
