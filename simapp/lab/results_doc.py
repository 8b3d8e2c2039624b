"""Where a measured run goes: a JSON file, and one row in a docs page's Results table.

`make bench` (docs/benchmarks.md) and `make chaos` (docs/reliability.md) both keep every run's
figures next to the command that produced them.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

RESULTS_HEADING = "## Results"


def root() -> Path:
    """The checkout (the docs live there), or the working directory when installed."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def write_result(result: dict[str, Any], out: str | None, prefix: str = "") -> Path:
    """The result as JSON at `out`, else bench-results/<prefix><timestamp>.json."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(out) if out else root() / "bench-results" / f"{prefix}{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def cell(value: Any) -> str:
    """A markdown table cell: whole floats without '.0', no pipes or newlines."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def row(cells: list[Any]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def command_args(argv: list[str]) -> list[str]:
    """The arguments that shape a run: `--note` (free text for the doc) is left out."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            out.append(arg)
    return out


def append_row(path: Path, line: str, header: str, title: str) -> None:
    """Add `line` at the end of the table under '## Results' (heading, table and page are
    created when absent: `title` is the page's first line, `header` the table's two)."""
    text = path.read_text(encoding="utf-8") if path.exists() else f"{title}\n"
    lines = text.splitlines()
    try:
        start = lines.index(RESULTS_HEADING)
    except ValueError:
        lines += ["", RESULTS_HEADING, "", *header.splitlines(), line]
    else:
        i = start + 1
        while i < len(lines) and not lines[i].startswith("|") and not lines[i].startswith("## "):
            i += 1
        if i < len(lines) and lines[i].startswith("|"):
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            lines.insert(i, line)
        else:
            lines[i:i] = [*header.splitlines(), line, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
