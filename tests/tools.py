"""Helpers for tests that need tools from outside the venv (promtool, chromium, ...).

Locally a missing tool skips the test with the reason; CI sets SIMAPP_REQUIRE_TOOLS=1
(.ci/run), where a missing tool fails the test instead, so nothing is silently not tested.
`make tools` installs them with apt when it can.
"""

from __future__ import annotations

import os
import shutil

import pytest

# Debian package that provides each tool (what `make tools` installs).
DEBIAN_PACKAGES = {
    "promtool": "prometheus",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "stunnel4": "stunnel4",
}


def tools_required() -> bool:
    """True when SIMAPP_REQUIRE_TOOLS asks for missing tools to fail, not skip."""
    return os.environ.get("SIMAPP_REQUIRE_TOOLS", "").strip().lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """The path of executable `name`; skips the test if it is missing (fails under CI)."""
    path = shutil.which(name)
    if path:
        return path
    package = DEBIAN_PACKAGES.get(name)
    hint = f" (Debian package {package}; `make tools` installs it)" if package else ""
    reason = f"{name} not found on PATH{hint}"
    if tools_required():
        pytest.fail(f"{reason}, and SIMAPP_REQUIRE_TOOLS=1 requires it", pytrace=False)
    pytest.skip(reason)
