"""The documentation states what the code does."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import typer

from mdprune.cli import app
from multidomain.serving import ServingSettings, env_name
from service.settings import ServiceSettings
from tests.dashboard import iter_panels, load_dashboard

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_every_service_setting_is_documented_with_its_default() -> None:
    text = (DOCS / "operations.md").read_text()
    rows = dict(re.findall(r"^\| `(MDP_[A-Z_]+)` \| `([^`]*)` \|", text, flags=re.MULTILINE))
    for name, field in ServiceSettings.model_fields.items():
        variable = f"MDP_{name.upper()}"
        assert variable in rows, f"{variable} missing from docs/operations.md"
        default = field.get_default(call_default_factory=True)
        documented = rows[variable]
        if default is None or default == []:
            assert documented == "none", variable
        elif isinstance(default, bool):
            assert documented == str(default).lower(), variable
        else:
            assert documented == str(default) or float(documented) == float(default), variable
    assert set(rows) == {f"MDP_{n.upper()}" for n in ServiceSettings.model_fields}


def test_every_torchserve_handler_setting_is_documented() -> None:
    text = (DOCS / "operations.md").read_text()
    for field in fields(ServingSettings):
        assert f"`handler.{field.name}`, env `{env_name(field.name)}`" in text, field.name


def test_readme_lists_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    listed = set(re.findall(r"^mdprune ([a-z-]+)", block, flags=re.MULTILINE))
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    assert listed == set(group.commands)


def test_the_dashboard_panels_operations_md_names_exist() -> None:
    text = (DOCS / "operations.md").read_text()
    section = text[text.index("## Reading the dashboard") : text.index("## Service settings")]
    named = set(re.findall(r"\*\*([^*]+)\*\*", " ".join(section.split())))
    titles = {panel["title"] for panel in iter_panels(load_dashboard()["panels"])}
    assert named, "no panel named"
    assert named <= titles, sorted(named - titles)
    assert titles <= named, f"panels the docs do not explain: {sorted(titles - named)}"
