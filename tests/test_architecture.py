"""The package's floors: every import points down, and the runtime never needs torch (import-linter's contracts
in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.is_file():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.fail("import-linter is not installed: pip install -e '.[dev]'")
        exe = Path(found)
    result = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
