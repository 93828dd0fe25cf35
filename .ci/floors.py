"""Print the lowest versions that pyproject.toml declares, as pip constraints (``name==floor``).

Every ``>=`` floor of the dependencies and of the ``test`` extra becomes an exact pin, so that
the suite can run on exactly those versions and prove them.  ``click`` is not a dependency of
this project, but typer releases before 0.26 depend on it: it is pinned to the lowest version
that the floor of typer accepts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

TRANSITIVE = {"click": "8.0.0"}


def floors(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    pins: dict[str, str] = {}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(>=|==)\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
        if match is None:
            sys.exit(f"floors.py: cannot read a floor from {requirement!r}")
        pins[match.group(1)] = match.group(3)
    return {**pins, **TRANSITIVE}


if __name__ == "__main__":
    for name, version in floors(Path(__file__).resolve().parents[1] / "pyproject.toml").items():
        print(f"{name}=={version}")
