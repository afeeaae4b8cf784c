"""The one table of artifacts: every shipped file is installed and is the file the table names."""

from __future__ import annotations

import pytest

from agegender.artifacts import ARTIFACTS, DEFAULT_MODEL, SHIPPED_MODELS, RemoteFile, ShippedFile, sha256_of
from agegender.inference.factory import load_model


@pytest.mark.parametrize("name", [n for n, a in ARTIFACTS.items() if isinstance(a, ShippedFile)])
def test_shipped_files_match_the_table(name: str) -> None:
    entry = ARTIFACTS[name]
    assert sha256_of(entry.locate()) == entry.sha256, f"{entry.filename} changed: update its sha256 in ARTIFACTS"


def test_remote_files_are_pinned() -> None:
    for entry in ARTIFACTS.values():
        if isinstance(entry, RemoteFile):
            assert entry.url.startswith("https://") and len(entry.sha256) == 64


def test_factory_builds_every_shipped_model() -> None:
    assert DEFAULT_MODEL in SHIPPED_MODELS
    for name in SHIPPED_MODELS:
        model = load_model(name, threads=1)
        assert model.path == ARTIFACTS[name].locate()
    with pytest.raises(ValueError, match="accurate"):
        load_model(descriptor_weights="x.dat")
