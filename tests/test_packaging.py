"""The promise of the package: installed from its wheel, away from this source tree, it predicts with the weights
it carries (no download) through the Python API and the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agegender import images
from tests.conftest import shared_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources, installed (without dependencies) into a folder of its own."""
    pytest.importorskip("setuptools", reason="building the wheel without network needs setuptools in the venv")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    # without the extension built in place: the wheel builds its own
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(work / "dist")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next((work / "dist").glob("agegender-*.whl"))
    site = work / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    return site


def run_installed(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python args`` with the installed copy first on the path, from a folder outside the source tree, with a
    cache of its own (so that nothing cached by earlier runs can stand in for the package's own files)."""
    env = {**os.environ, "PYTHONPATH": str(site), "AGEGENDER_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_the_wheel_carries_its_weights_and_predicts(installed: Path, utkface_dir: Path, yunet_path: Path,
                                                    tmp_path: Path) -> None:
    chip = next(utkface_dir.glob("70_1_*.jpg"))
    script = ("import json, agegender\nfrom agegender import Predictor\n"
              f"faces = Predictor(detector=None).predict({str(chip)!r})\n"
              "print(json.dumps({'module': agegender.__file__, 'face': faces[0].to_dict()}))")
    result = run_installed(installed, ["-c", script], tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert Path(out["module"]).is_relative_to(installed)  # the installed copy, not the source tree
    if images._jpeg_region is not None:  # libjpeg's headers are here, so the wheel has the window decoder too
        assert list((installed / "agegender").glob("_jpeg_region*.so")), "the wheel lacks agegender._jpeg_region"
    assert out["face"]["gender"] == "female" and out["face"]["age"] > 45

    photo = shared_path("photos", "mowshon_test-image.jpg")
    result = run_installed(installed, ["-m", "agegender", "predict", str(photo), "--detector", str(yunet_path),
                                       "--json"], tmp_path)  # python -m agegender (only agegender.cli ran)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout.splitlines()[0])["faces"]) == 5
    version = run_installed(installed, ["-m", "agegender", "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.strip().startswith("agegender "), version


def test_every_subcommand_has_help_without_stray_escapes(capsys: pytest.CaptureFixture) -> None:
    """argparse formats option help with %, not descriptions: calibrate's description showed "80%%"."""
    from agegender.cli import COMMANDS, main

    for command in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        text = capsys.readouterr().out
        assert stop.value.code == 0 and text.startswith(f"usage: agegender {command}"), command
        assert "%%" not in text and "%(" not in text, command
