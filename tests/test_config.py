"""Training configs are typed: a wrong key or value stops ``agegender train`` / ``crossval`` with one line naming
the key, the value and what is allowed, before any data is read; every recipe of the repository validates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from agegender.cli import main
from agegender.data.augment import AugmentConfig
from agegender.data.datasets import DataConfig
from agegender.training.config import ConfigError, TrainConfig, load_config, read_raw_config
from agegender.training.losses import LossSpec

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").rglob("*.yaml"))

#: (override, what the message must name: the key and value, and what is allowed)
BAD_VALUES = [
    ("epochs=ten", "epochs = 'ten'", "Input should be a valid integer"),
    ("optimizer.lr=fast", "optimizer.lr = 'fast'", "Input should be a valid number"),
    ("batch_size=-3", "batch_size = -3", "Input should be greater than or equal to 1"),
    # one weight per ordinal output: a short list once passed and crashed after the data was read
    ("loss.ordinal_weights=[1,2]", "loss.ordinal_weights = [1, 2]", "List should have at least 8 items"),
    # no data set but CelebA labels its outputs: it stopped at the first batch, after the data was read
    ("model=resnet34_attributes", "data.dataset = 'utkface'", "resnet34_attributes predicts CelebA's attributes"),
    # nothing would train (a traceback at the first step)
    ("trainable_last=0", "trainable_last = 0", "Input should be greater than or equal to 1"),
    ("unfreeze=[[1,2]]", "unfreeze = [[1, 2]]", "nothing is frozen to unfreeze"),
    # YAML's true read as 1 epoch; a negative distillation weight trained away from the teacher
    ("epochs=true", "epochs = True", "Input should be a valid integer"),
    ("distill.heads={gender_logit: -1}", "distill.heads = {'gender_logit': -1}", "gender_logit: a weight below 0"),
]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A valid config whose data folder does not exist: any attempt to read data fails with another error."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": "vu_multitask", "epochs": 1, "batch_size": 8, "threads": 1,
                                    "data": {"dataset": "utkface", "root": str(tmp_path / "nowhere")}}))
    return path


@pytest.mark.parametrize("command", ["train", "crossval"])
@pytest.mark.parametrize(("override", "named", "allowed"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_bad_value_stops_the_command_before_any_data_is_read(command: str, override: str, named: str,
                                                               allowed: str, config: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert main([command, str(config), "-s", override, "--run-dir", str(run_dir), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"agegender {command}: error: {config}: {named}: {allowed}"), err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert "nowhere" not in err and not run_dir.exists()  # the config error, not a missing-data one


def test_the_installed_command_reports_a_bad_value_in_one_line(config: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "train", str(config), "-s", "epochs=ten",
                             "-s", "batch_size=-3", "--run-dir", str(run_dir)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"agegender train: error: {config}: epochs = 'ten': Input should be a valid integer; batch_size = -3: "
        "Input should be greater than or equal to 1"]
    assert not run_dir.exists()


def test_an_unknown_nested_key_names_the_known_ones(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(config), "-s", "optimizer.momentun=0.9", "-s", "data.augment.flipp=true"]) == 2
    err = capsys.readouterr().err
    assert "unknown key optimizer.momentun = 0.9 (did you mean momentum?): known keys of optimizer: lr, momentum, " \
           "name, weight_decay" in err
    assert "unknown key data.augment.flipp = True (did you mean flip?): known keys of data.augment: " in err
    with pytest.raises(ConfigError, match=r"unknown key optimiser = \{'lr': 1\} \(did you mean optimizer\?\)"):
        load_config(config, ["optimiser.lr=1"])


def test_every_problem_is_one_line_naming_the_file(config: Path) -> None:
    overrides = ["optimizer.name=lion", "schedule.name=linear", "data.dataset=imdb", "data.augment.zoom=2",
                 "loss.label_smoothing=1.5", "distill.runtime=gpu", "select=val_happiness", "unfreeze=[[3]]",
                 "data.filter={gender: woman}", "distill.teacher=5"]
    with pytest.raises(ConfigError) as caught:
        load_config(config, overrides)
    lines = str(caught.value).splitlines()
    assert len(lines) == len(caught.value.problems) == len(overrides)
    assert all(line.startswith(f"{config}: ") for line in lines)
    text = str(caught.value)
    for expected in ("optimizer.name = 'lion': Input should be 'sgd', 'adam', 'adamw' or 'rmsprop'",
                     "schedule.name = 'linear': Input should be 'none', 'step', 'multistep', 'onecycle', 'cosine' "
                     "or 'plateau'",
                     "data.dataset = 'imdb': Input should be 'utkface', 'manifest' or 'celeba'",
                     "data.augment.zoom = 2: Input should be less than 1",
                     "loss.label_smoothing = 1.5: Input should be less than or equal to 1",
                     "distill.runtime = 'gpu': Input should be 'auto', 'torch' or 'onnx'",
                     "select = 'val_happiness': Input should be one of val_loss, val_age_loss",
                     "unfreeze[0] = [3]: List should have at least 2 items",
                     "data.filter = {'gender': 'woman'}: data.filter.gender must be male or female",
                     "distill.teacher = 5: Input should be a valid string or Input should be a valid list"):
        assert expected in text, expected


def test_a_valid_override_loads_typed(config: Path) -> None:
    cfg, raw = load_config(config, ["optimizer.lr=1e-3", "epochs=3", "data.augment.flip=true",
                                     "loss.gender_schedule=[[5, 0.5]]", "select=val_age_mae", "ema=null"])
    assert isinstance(cfg.optimizer.lr, float) and cfg.optimizer.lr == pytest.approx(0.001)  # YAML reads "1e-3"
    assert (cfg.epochs, cfg.data.augment.flip, cfg.select, cfg.ema) == (3, True, "val_age_mae", None)
    assert cfg.loss.gender_weight(4) == 1.0 and cfg.loss.gender_weight(5) == 0.5
    assert raw["optimizer"]["lr"] == "1e-3"  # the raw dict saved beside the run keeps what was written
    assert raw["description"].endswith("Overridden on the command line: optimizer.lr=1e-3, epochs=3, "
                                       "data.augment.flip=true, loss.gender_schedule=[[5, 0.5]], "
                                       "select=val_age_mae, ema=null.")
    # a mapping merges into its section, as a child config's does: it replaced the section, dropping data.dataset
    cfg, _ = load_config(config, ["data={train_limit: 5, dataset: manifest}", "data={root: elsewhere}"])
    assert (cfg.data.dataset, cfg.data.train_limit, cfg.data.root) == ("manifest", 5, "elsewhere")


def test_sections_build_from_python_as_before(tmp_path: Path) -> None:
    data = DataConfig(root=tmp_path, train_limit=5, filter={"age_group": "60+"})  # type: ignore[arg-type]
    assert data.root == str(tmp_path) and data.augment == AugmentConfig()
    cfg = TrainConfig(model="vu_multitask", data=data, loss=LossSpec(gender=0.5),
                      init=tmp_path / "best.pt")  # type: ignore[arg-type]  # a Path is taken as its text
    assert (cfg.optimizer.name, cfg.schedule.name, cfg.loss.gender_weight(0), cfg.init) == \
        ("adamw", "none", 0.5, str(tmp_path / "best.pt"))
    assert AugmentConfig(rotation=10).geometric and not AugmentConfig(flip=True).geometric
    assert hash(AugmentConfig(flip=True)) == hash(AugmentConfig(flip=True))  # frozen, as before
    with pytest.raises(ValidationError):
        AugmentConfig(flip=True).flip = False  # type: ignore[misc]
    for bad in ({"dataset": "imdb"}, {"train_limit": 0}, {"filter": {"race": "asian"}}, {"colour": True}):
        with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
            DataConfig(**bad)
    with pytest.raises(ValueError):
        TrainConfig(model="vu_multitask", epochs=0)


def test_a_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- model: vu_multitask\n")
    with pytest.raises(ConfigError, match="a config is a mapping of keys, not a list"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("model: [vu_multitask\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="a config needs a 'model'"):
        load_config(tmp_path / "empty.yaml")


def test_an_override_into_a_value_is_refused(config: Path) -> None:
    with pytest.raises(ValueError, match="override 'epochs.value=2': epochs is 1, not a section"):
        load_config(config, ["epochs.value=2"])


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_recipe_under_configs_validates(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if "model" not in read_raw_config(path):
        assert path.name.startswith("_"), "only partial bases (_name.yaml) may lack a model"
        return
    cfg, _ = load_config(path)
    assert cfg.model and cfg.epochs >= 1
    assert "is ignored" not in caplog.text  # no recipe sets a loss its model cannot use


def test_a_loss_setting_for_an_output_the_model_lacks_is_said_to_be_ignored(
        config: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Vu's net regresses the age: a weight for group logits, or a label distribution's width, did nothing
    without a word."""
    cfg, _ = load_config(config, ["loss.age_group=2", "loss.sigma=3", "loss.age=0.5"])
    assert cfg.loss.age_group == 2  # still a valid config
    ignored = [r.getMessage() for r in caplog.records if "is ignored" in r.getMessage()]
    assert len(ignored) == 2, ignored
    assert "loss.age_group = 2.0 is ignored: vu_multitask has no age_group_logits output (its outputs: age, " \
           "gender_logit)" in ignored[0] and "loss.sigma = 3.0" in ignored[1]
    caplog.clear()
    load_config(config, ["model=zhu_age_4conv", "loss.label_smoothing=0.3"])  # smooths group and gender terms
    assert "has no age_group_logits or gender_logit output" in caplog.text


def test_settings_this_run_will_not_read_are_said_to_be_ignored(config: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Momentum under adamw, the other schedule's keys, distillation without a teacher and an unfreeze step past
    the last epoch changed nothing without a word."""
    cfg, _ = load_config(config, ["optimizer.momentum=0.5", "schedule.name=onecycle", "schedule.milestones=[3]",
                                  "distill.weight=2", "trainable_last=1", "unfreeze=[[1, 2]]"])
    assert cfg.distill.weight == 2  # still a valid config
    ignored = [r.getMessage() for r in caplog.records if "is ignored" in r.getMessage()]
    assert ignored == [
        f"{config}: optimizer.momentum = 0.5 is ignored: optimizer.name = 'adamw' does not read it (only rmsprop, sgd)",
        f"{config}: schedule.milestones = [3] is ignored: schedule.name = 'onecycle' does not read it (only "
        "multistep)",
        f"{config}: distill.weight = 2.0 is ignored: no distill.teacher or distill.stored",
        f"{config}: unfreeze [1, 2] is ignored: the run's last epoch is 0 (epochs count from 0)"], ignored
    caplog.clear()
    load_config(config, ["optimizer.name=sgd", "optimizer.momentum=0.5", "schedule.name=multistep",
                         "schedule.milestones=[3]", "distill.stored=x.npz", "distill.weight=2"])
    assert "is ignored" not in caplog.text
    load_config(config, ["distill.stored=x.npz", "distill.flip=true"])  # only a teacher model is flipped
    assert "distill.flip = True is ignored: no distill.teacher\n" in caplog.text + "\n"
    caplog.clear()
    # a base may set them for its other configs: a child on another optimizer or schedule is not told about them
    (config.parent / "child.yaml").write_text(yaml.safe_dump({
        "base": config.name, "optimizer": {"name": "adamw"}, "schedule": {"name": "onecycle"}}))
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "optimizer": {
        "name": "sgd", "momentum": 0.5}, "schedule": {"name": "multistep", "milestones": [3]}}))
    assert load_config(config.parent / "child.yaml")[0].optimizer.momentum == 0.5
    assert "is ignored" not in caplog.text


def test_every_reproduction_run_validates_with_its_budget() -> None:
    assert len(RECIPES) > 10  # the recipes above were found
    suite = yaml.safe_load((ROOT / "scripts" / "measure" / "reproduce.yaml").read_text())
    for name, run in suite["runs"].items():
        recipe = [*suite.get("common", []), *run.get("overrides", []), "data.root=/nowhere"]
        budget = [item for item in run.get("budget", []) if not item.startswith("samples=")]
        asked = [int(item.split("=", 1)[1]) for item in run.get("budget", []) if item.startswith("samples=")]
        assert all(n > 0 for n in asked) and len(asked) + len(budget) == len(run.get("budget", [])), name
        for overrides in ([], budget):
            cfg, _ = load_config(ROOT / run["config"], [*recipe, *overrides])
            assert cfg.epochs >= 1, name


def test_an_unknown_model_is_one_line_without_stray_quotes(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(config), "-s", "model=nosuch", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agegender train: error: unknown model 'nosuch'; available: flagship") and '"' not in err


def test_a_selection_the_model_cannot_give_and_a_base_that_is_not_a_path_are_refused(config: Path,
                                                                                     tmp_path: Path) -> None:
    """An age-only net selected by its gender loss kept epoch 1 (always 0) and stopped early; ``base: [a.yaml]``
    was a TypeError traceback."""
    with pytest.raises(ConfigError, match="select = 'val_gender_loss': zhu_age_4conv has no gender output"):
        load_config(config, ["model=zhu_age_4conv", "select=val_gender_loss"])
    with pytest.raises(ConfigError, match="also_select = 'val_group_exact': zhu_gender_4conv has no age output"):
        load_config(config, ["model=zhu_gender_4conv", "also_select=[val_group_exact]"])
    listed = tmp_path / "listed.yaml"
    listed.write_text(f"base: [{config.name}]\nepochs: 2\n")
    with pytest.raises(ConfigError, match=r"base = \['tiny.yaml'\]: give the path of one config file"):
        load_config(listed)


@pytest.mark.parametrize("command", ["train", "crossval"])
def test_a_run_dir_that_cannot_be_a_folder_stops_before_any_data_is_read(
        command: str, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was "[Errno 17] File exists" after the data was read and decoded."""
    taken = tmp_path / "afile"
    taken.write_text("mine")
    assert main([command, str(config), "--run-dir", str(taken), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"--run-dir: cannot write into {taken}: {taken} is a file" in err and "nowhere" not in err
    assert taken.read_text() == "mine"
