"""The package's folders import one way: each folder only from the folders its `__init__`
docstring names. Checked on the source with `ast`, function-level imports included.

import-linter would do this for `simapp/`, but agents/ and tables/ live at the top of the
repository and are installed as simapp.agents and simapp.tables (pyproject.toml's
package-dir), which grimp, scanning the simapp/ directory, does not see.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = {"config", "observe", "limits", "outbound", "kafka", "llm", "delivery", "simulation"}
# folder -> the folders it may import (itself always); "config" is simapp/config.py
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "observe": {"config"},
    "limits": {"config"},
    "outbound": {"config"},
    "kafka": {"config", "observe"},
    "llm": {"config", "observe", "limits", "outbound"},
    "delivery": {"config", "observe", "limits", "outbound", "kafka"},
    "simulation": {"config", "observe", "limits", "outbound", "kafka", "llm", "delivery"},
    "embedded": {"config", "observe", "kafka"},
    "worker": RUNTIME,
    "tables": {"config", "observe", "worker"},
    "agents": RUNTIME | {"worker", "tables"},
    "web": {"config", "observe", "worker", "tables"},
    "commands": RUNTIME | {"worker", "embedded"},
    "lab": RUNTIME | {"worker", "embedded"},
}


def folder_of_file(path: Path) -> str | None:
    rel = path.relative_to(REPO).parts
    if rel[0] in ("agents", "tables"):
        return rel[0]
    if rel == ("simapp", "__init__.py"):
        return None  # the lazy `simapp.app` attribute
    if rel == ("simapp", "config.py"):
        return "config"
    return rel[1]


def folder_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "simapp" or len(parts) < 2:
        return None
    return parts[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "simapp":
                out += [(node.lineno, f"simapp.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def sources() -> list[Path]:
    return sorted(p for d in ("simapp", "agents", "tables") for p in (REPO / d).rglob("*.py"))


def test_every_folder_has_a_rule_and_says_what_it_holds() -> None:
    folders = {p.parent.name for p in (REPO / "simapp").glob("*/__init__.py")}
    assert folders | {"agents", "tables", "config"} == set(ALLOWED)
    for name in ALLOWED.keys() - {"config"}:
        init = REPO / (name if name in ("agents", "tables") else f"simapp/{name}") / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{init}: say what it holds and what it may import"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layers(path: Path) -> None:
    here = folder_of_file(path)
    if here is None:
        return
    wrong = []
    for line, module in imported_modules(path):
        there = folder_of_module(module)
        if there is None or there == here:
            continue
        if there not in ALLOWED[here]:
            wrong.append(f"line {line}: {here} imports {module} ({there})")
    assert not wrong, "\n".join(wrong)
