"""The demo installs only what the exporter runs on; pyproject names the same packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TOOLS = {"pytest", "ruff", "asyncua"}  # asyncua: the third-party OPC UA client of the tests


def _names(lines: list[str]) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            out.add(re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0].lower())
    return out


def test_demo_requirements_hold_no_test_tools() -> None:
    demo = _names((HERE / "requirements.txt").read_text().splitlines())
    assert demo and not demo & TOOLS, demo & TOOLS
    dev = _names((HERE / "requirements-dev.txt").read_text().splitlines())
    assert dev == TOOLS


def test_pyproject_declares_what_requirements_pin() -> None:
    project = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
    assert _names(project["dependencies"]) == _names(
        (HERE / "requirements.txt").read_text().splitlines()
    )
    extras = project["optional-dependencies"]
    assert _names(extras["dev"]) == TOOLS
    torch = _names((HERE / "requirements-torch.txt").read_text().splitlines())
    assert _names(extras["torch"]) == torch
