"""`agegender models` lists the registry from its static catalog without importing torch; `--params` builds the
networks and counts their parameters; every catalogued model's module registers a builder for the catalog's config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agegender.cli import main
from agegender.models import _catalog, create_model, get_config, list_models, registry

LISTING = """
import sys
from agegender.cli import main
rc = main(["models"])
print("torch imported:", "torch" in sys.modules, "rc:", rc)
"""


def test_listing_names_every_model_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", LISTING], capture_output=True, text=True, timeout=120, check=True)
    *lines, last = result.stdout.splitlines()
    assert last == "torch imported: False rc: 0", result.stdout + result.stderr
    rows = {line.split()[0]: line for line in lines}
    assert sorted(rows) == list_models() and len(rows) == len(lines) == len(_catalog.CONFIGS)
    for name, line in rows.items():
        config = get_config(name)
        paper = f"{config.paper_params / 1e6:.2f}M" if config.paper_params else "-"
        assert f" {paper} " in line and f" {config.input_size}px " in line, line
        assert line.endswith(",".join(config.outputs)), line


@pytest.mark.parametrize(("name", "trainable"), [("vu_multitask", None), ("utk_model_a", None),
                                                 ("utk_vgg16", 1_449_474)])
def test_params_counts_what_building_counts_and_what_trains_at_first(
    name: str, trainable: int | None, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 003 counts VGG-16's trainable parameters while its base is frozen (1,449,474): the listing
    compared the paper's count with all 16.16 M."""
    import agegender.models

    monkeypatch.setattr(agegender.models, "list_models", lambda: [name])
    assert main(["models", "--params"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    count = sum(p.numel() for p in create_model(name).parameters())
    trainable = trainable or count
    assert line.startswith(f"{name:34s} {count / 1e6:7.2f}M params {trainable / 1e6:6.2f}M trainable (paper "), line


def test_params_is_for_the_listing_only(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "flagship-int8", "--params"]) == 2
    assert "give no MODEL" in capsys.readouterr().err


def test_every_catalogued_model_has_a_builder_for_its_config() -> None:
    for name, config in _catalog.CONFIGS.items():
        _, registered = registry._lookup(name)  # imports the builder's module, builds nothing
        assert registered is config and get_config(name) is config


def test_a_catalogued_name_takes_only_the_catalogs_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {})
    config = _catalog.VU
    with pytest.raises(ValueError, match="catalog"):
        registry.register_model(config.replace(input_size=32))(lambda cfg: None)
    registry.register_model(config)(lambda cfg: None)
    with pytest.raises(ValueError, match="twice"):
        registry.register_model(config)(lambda cfg: None)


def test_a_model_outside_the_catalog_is_listed_once_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    config = _catalog.VU.replace(name="tiny_test_model", paper_params=None)
    registry.register_model(config)(lambda cfg, **kwargs: nn.Linear(2, 1))
    assert "tiny_test_model" in list_models() and get_config("tiny_test_model") is config
    assert create_model("tiny_test_model").config.name == "tiny_test_model"
    with pytest.raises(KeyError, match="unknown model"):
        get_config("no_such_model")


@pytest.mark.parametrize("name", ["notes.md", "broken.onnx"])
def test_a_file_that_is_not_onnx_is_one_line(tmp_path: Path, name: str) -> None:
    """OpenVINO's other front ends (TensorFlow's) once printed their own parse errors before a many-line message."""
    path = tmp_path / name
    path.write_text("# not a model\n")
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "models", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"cannot load {path}" in result.stderr


def test_an_export_without_a_resize_is_described_in_words() -> None:
    """A model fed its chip straight at the input size read "the chip resized to None"."""
    from agegender.cli.models import describe_lines
    from agegender.inference.onnx_model import OnnxAgeGender

    info = OnnxAgeGender("flagship").describe()
    assert "the chip resized to 72, centre crop (linear resampling);" in describe_lines(info)[2]
    info["config"] = {**info["config"], "resize": None, "resampling": "area"}
    assert "RGB 64x64: the chip resized to it (area resampling); (x - " in describe_lines(info)[2]


def test_building_a_model_without_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base install has no torch: create_model said only "No module named 'torch'"."""
    import sys

    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.delitem(sys.modules, _catalog.MODULES["vu_multitask"], raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails as where it is not installed
    with pytest.raises(ModuleNotFoundError, match=r"building 'vu_multitask' needs PyTorch.*agegender\[train\]"):
        create_model("vu_multitask")


def test_a_registered_networks_name_describes_its_config(capsys: pytest.CaptureFixture) -> None:
    """`agegender models levi_hassner_age` said "model file not found" for a name the listing shows."""
    assert main(["models", "levi_hassner_age"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("levi_hassner_age: a registered network") and "RGB 227x227" in text
    assert main(["models", "levi_hassner_age", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == ["age_group_logits"]
