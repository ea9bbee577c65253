"""Print the requirements an image installs from PyPI: the core dependencies of pyproject.toml
plus the named extras, one per line, without torch and torchvision (each Dockerfile installs
those first, from its TORCH_INDEX_URL build argument). ``EXTRA:NAME,NAME`` takes only the named
projects of an extra.

    python docker/requirements.py pyproject.toml service > requirements.txt
    python docker/requirements.py pyproject.toml training torchserve:torch-model-archiver,pyyaml

Standard library only: it runs in the image's build stage before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

TORCH_BUILDS = frozenset({"torch", "torchvision"})


def project_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match[1]).lower()


def image_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    requirements = list(project["dependencies"])
    for spec in extras:
        extra, _, names = spec.partition(":")
        if extra not in optional:
            raise ValueError(f"unknown extra {extra!r}; pyproject.toml has {sorted(optional)}")
        chosen = optional[extra]
        if names:
            wanted = {project_name(name) for name in names.split(",")}
            chosen = [r for r in chosen if project_name(r) in wanted]
            missing = wanted - {project_name(r) for r in chosen}
            if missing:
                raise ValueError(f"extra {extra!r} has no {sorted(missing)}")
        requirements += chosen
    return [r for r in dict.fromkeys(requirements) if project_name(r) not in TORCH_BUILDS]


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print("usage: requirements.py PYPROJECT [EXTRA ...]", file=sys.stderr)
        return 2
    try:
        lines = image_requirements(Path(argv[0]), argv[1:])
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
