"""The package's floors: every import points down, and the runtime never needs torch (import-linter's contracts
in pyproject.toml); the code type-checks (mypy) and lints (ruff) clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    """The dev extra's ``name`` executable, beside this Python or on the PATH."""
    exe = Path(sys.executable).with_name(name)
    if exe.is_file():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return found


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_import_contracts_are_kept() -> None:
    result = _run(_tool("lint-imports"), "--config", str(ROOT / "pyproject.toml"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_package_type_checks() -> None:
    result = _run(_tool("mypy"), "src")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_code_lints_clean() -> None:
    result = _run(_tool("ruff"), "check", "src", "tests", "scripts")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
