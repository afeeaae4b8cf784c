"""Shared test set-up: the ``--runslow`` switch, shared assets, a model file, and a running server."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agegender import paths
from agegender.data.utkface import parse_utkface_name
from agegender.serving import launch

SHARED = paths.shared_dir().resolve()


# --- slow tests: opt in with --runslow -------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (fuzzing, load)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# --- shared assets and a model ---------------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Split manifests and decoded arrays go to one per-session folder, never the user's cache."""
    path = tmp_path_factory.mktemp("agegender-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("AGEGENDER_CACHE", str(path))
    yield path
    mp.undo()


def shared_path(*parts: str) -> Path:
    """A path under the shared assets folder; skips the calling test when it does not exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset not found: {path}")
    return path


@pytest.fixture(scope="session")
def utkface_dir() -> Path:
    """The UTKFace chips folder in the shared assets."""
    return shared_path("data", "UTKFace")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared assets folder (photos, YuNet weights), next to the repository."""
    if not SHARED.is_dir():
        pytest.skip(f"shared assets folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def yunet_path(shared_dir: Path) -> Path:
    """YuNet weights from the shared folder (never downloaded by tests)."""
    path = shared_dir / "models" / "yunet" / "yunet_s_640_640.onnx"
    if not path.is_file():
        pytest.skip(f"YuNet weights not found at {path}")
    return path


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    """Sample face photos from the shared folder."""
    return shared_path("photos")


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model if it exists, else a real flagship export with random weights (needs torch).

    Random weights make valid files for API and robustness tests; do not assert on predicted ages with them.
    """
    from agegender.inference.onnx_model import ModelError, shipped_model_path

    try:
        return shipped_model_path()
    except ModelError:
        pass
    pytest.importorskip("torch", reason="no shipped model, and exporting a stand-in needs torch")
    from agegender.export import export_onnx
    from agegender.models import create_model

    return export_onnx(create_model("flagship"), tmp_path_factory.mktemp("model") / "flagship-random.onnx")


# --- a server in a subprocess ----------------------------------------------------------------------------

@contextmanager
def running_server(args: list[str], log_path: Path, startup_s: float = 90.0) -> Iterator[str]:
    """Run ``agegender serve ARGS`` on a free loopback port (one thread per process unless OMP_NUM_THREADS says
    otherwise); yields its base URL once /healthz answers, fails the test with its log if it does not."""
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        with launch.running_server(args, log_path, startup_s, env) as (url, _):
            yield url
    except launch.ServerStartError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def server_args(model_path: Path, yunet_path: Path) -> list[str]:
    """``agegender serve`` arguments for the test model and the shared detector."""
    return ["--model", str(model_path), "--detector", str(yunet_path)]


@pytest.fixture(scope="session")
def server_url(server_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with default settings, shared by the API and browser tests."""
    pytest.importorskip("fastapi_offline", reason="the serve extra is not installed")
    pytest.importorskip("httpx", reason="httpx (dev extra) is needed to talk to the server")
    with running_server(server_args, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def manifest(tmp_path_factory: pytest.TempPathFactory, utkface_dir: Path) -> Path:
    """300 real UTKFace faces (every 70th file) as a CSV manifest: small splits and caches of their own."""
    return write_manifest(tmp_path_factory.mktemp("data") / "faces.csv", utkface_dir)


def write_manifest(path: Path, utkface_dir: Path, start: int = 0) -> Path:
    """A CSV manifest of 300 real UTKFace faces: every 70th file from the ``start``-th."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age", "gender", "race"])
        for file in sorted(utkface_dir.iterdir())[start::70][:300]:
            labels = parse_utkface_name(file.name)
            assert labels is not None, file
            age, gender, race = labels
            writer.writerow([file, age, gender, "" if race is None else race])
    return path


@pytest.fixture(scope="session")
def collection_dir(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> Path:
    """A photo collection: the shared photos, and in a sub-folder a file without an ending and a truncated JPEG;
    a HEIC (a format we cannot decode) and a text file."""
    root = tmp_path_factory.mktemp("collection")
    (root / "sub").mkdir()
    for photo in sorted(photos_dir.glob("*.jpg")):
        shutil.copy(photo, root / photo.name)
    shutil.copy(photos_dir / "smahesh29_kid1.jpg", root / "sub" / "kid_no_ending")
    data = (photos_dir / "mowshon_test-image.jpg").read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (root / "notes.txt").write_text("not a photo")
    return root


def two_process_ddp(config: Path, run_dir: Path, overrides: list[str]) -> dict:
    """Train ``config`` with torchrun on two processes (``tests/ddp_worker.py``, one thread each) and return the
    worker's report: ``world``, ``max_diff`` between the replicas' weights, ``norm``."""
    out = run_dir.parent / f"{run_dir.name}_replicas.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).parent / "ddp_worker.py"), str(config), str(run_dir), str(out), *overrides]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())
