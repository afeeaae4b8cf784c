"""The training engine on real UTKFace chips: it learns, resumes after a kill to the same weights, and runs
data-parallel with identical replicas."""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from agegender.models import create_model
from agegender.outputs import decode
from agegender.training.checkpoint import load_model
from agegender.training.config import apply_overrides, load_config
from agegender.training.distill import OnnxRunner, Teacher, save_stored_outputs
from agegender.training.engine import Trainer, train
from agegender.training.forward import model_outputs
from agegender.training.losses import distillation_loss
from tests.conftest import two_process_ddp

ROOT = Path(__file__).resolve().parents[1]
FLAGSHIP = ROOT / "configs" / "flagship" / "v02.yaml"


def small(utkface_dir: Path, limit: int, epochs: int, *extra: str) -> list[str]:
    return [f"data.root={utkface_dir}", f"data.train_limit={limit}", f"epochs={epochs}", "batch_size=32",
            "threads=1", *extra]


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def test_overrides_and_unknown_keys_are_reported() -> None:
    raw = apply_overrides({"optimizer": {"lr": 1}}, ["optimizer.lr=0.01", "data.augment.flip=true"])
    assert raw == {"optimizer": {"lr": 0.01}, "data": {"augment": {"flip": True}}}
    with pytest.raises(ValueError, match="unknown key.*optimiser"):
        load_config(FLAGSHIP, ["optimiser.lr=1"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "flagship").glob("*.yaml")), ids=lambda p: p.stem)
def test_flagship_config_loads_and_builds_its_model(path: Path) -> None:
    """Every recipe of configs/ resolves through its ``base:`` chain and builds its network."""
    cfg, _ = load_config(path)
    assert cfg.description and cfg.epochs > 0
    create_model(cfg.model, **cfg.model_args)


def test_two_epochs_on_real_chips_lower_the_validation_loss(utkface_dir: Path, tmp_path: Path) -> None:
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 400, 2, "optimizer.lr=0.003", "schedule.name=none"))
    results = train(cfg, tmp_path / "run", raw_config=raw, progress=False)
    rows = history(tmp_path / "run")
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"])
    for name in ("best.pt", "last.pt", "curves.png", "config.yaml", "summary.yaml", "val_flip/report.md"):
        assert (tmp_path / "run" / name).is_file(), name
    assert set(results) == {"none", "flip"} and results["flip"]["age_mae"] > 0
    assert not (tmp_path / "run" / "test_flip").exists()  # the test split stays sealed


def test_age_heads_can_start_at_the_training_mean_age(utkface_dir: Path, tmp_path: Path) -> None:
    zhu = ROOT / "configs" / "seeds" / "zhu_2016" / "joint.yaml"
    cfg, raw = load_config(zhu, small(utkface_dir, 64, 1))
    assert cfg.start_age_at_mean  # the Zhu recipe's documented deviation
    trainer = Trainer(cfg, tmp_path / "zhu", raw, progress=False)
    mean_age = sum(r.age for r in trainer.data["train"].records) / len(trainer.data["train"].records)
    assert trainer.model.heads.layers["age"].bias.item() == pytest.approx(mean_age, abs=1e-4)
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, "start_age_at_mean=true"))
    with pytest.raises(ValueError, match="no `age` regression head"):
        Trainer(cfg, tmp_path / "flagship", raw, progress=False)


def test_a_killed_run_resumes_to_the_same_weights(utkface_dir: Path, tmp_path: Path) -> None:
    overrides = small(utkface_dir, 192, 3, "ema=0.9")
    cfg, raw = load_config(FLAGSHIP, overrides)
    train(cfg, tmp_path / "straight", raw_config=raw, progress=False)

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "agegender.cli", "train", str(FLAGSHIP), "--run-dir", str(run), "-q",
           *[a for o in overrides for a in ("-s", o)]]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / "history.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # well inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] < 3, "the kill came too late"
    resumed = subprocess.run([*cmd, "--resume"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(run / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["ema"].items():  # the moving average resumes too
        assert torch.equal(value, b["ema"][key]), key
    assert [r["val_loss"] for r in history(tmp_path / "straight")] == [r["val_loss"] for r in history(run)]


def test_ema_weights_are_the_ones_validated_and_kept(utkface_dir: Path, tmp_path: Path) -> None:
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 128, 1, "ema=0.5"))
    train(cfg, tmp_path / "run", raw_config=raw, progress=False)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert last["ema"]["n_averaged"] == 4  # one update per optimizer step: 128 faces in batches of 32
    name = "age_dist.weight"
    assert torch.equal(best["model"][name], last["ema"][f"module.{name}"])
    assert not torch.equal(best["model"][name], last["model"][name])
    for path in ("best.pt", "last.pt"):  # evaluation and export see the averaged weights from either file
        assert torch.equal(load_model(tmp_path / "run" / path).state_dict()[name], best["model"][name])


def test_also_select_keeps_the_epoch_each_further_criterion_chose(utkface_dir: Path, tmp_path: Path) -> None:
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 128, 3, "select=val_age_loss",
                                           "also_select=[val_gender_loss, val_age_mae]"))
    train(cfg, tmp_path / "run", raw_config=raw, progress=False)
    rows = history(tmp_path / "run")
    for key in ("val_age_loss", "val_gender_loss", "val_age_mae"):
        chosen = min(rows, key=lambda row: float(row[key]))
        name = "best.pt" if key == "val_age_loss" else f"best_{key}.pt"
        assert torch.load(tmp_path / "run" / name, weights_only=False)["epoch"] == int(chosen["epoch"]), key
    with pytest.raises(ValueError, match="also_select"):
        load_config(FLAGSHIP, small(utkface_dir, 128, 1, "also_select=[val_nothing]"))


def test_resume_refuses_another_config_and_keeps_the_run_s_own(utkface_dir: Path, tmp_path: Path) -> None:
    """Its checkpoints, schedule and history belong to the config it started with (a longer schedule once failed
    mid-way with "Tried to step 4 times", having rewritten config.yaml first)."""
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1))
    train(cfg, tmp_path / "run", raw_config=raw, progress=False)
    stored = (tmp_path / "run" / "config.yaml").read_text()
    longer, raw_longer = load_config(FLAGSHIP, small(utkface_dir, 64, 2, "optimizer.lr=0.5"))
    with pytest.raises(ValueError, match=r"epochs: 1 -> 2; optimizer.lr: .* -> 0.5"):
        train(longer, tmp_path / "run", resume=True, raw_config=raw_longer, progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == stored
    same, raw_same = load_config(FLAGSHIP, small(utkface_dir, 64, 1, "threads=2"))  # how it runs may change
    train(same, tmp_path / "run", resume=True, raw_config=raw_same, progress=False)
    longer, raw_longer = load_config(FLAGSHIP, small(utkface_dir, 64, 2))  # onecycle spreads over the run
    with pytest.raises(ValueError, match=r"epochs: 1 -> 2; more epochs only under a schedule that does not spread"):
        train(longer, tmp_path / "run", resume=True, raw_config=raw_longer, progress=False)


def test_a_run_on_a_schedule_of_its_own_length_resumes_with_more_epochs(utkface_dir: Path, tmp_path: Path) -> None:
    """Training on past the planned end (a run that was still improving) needs no restart where the rate at an
    epoch does not depend on the run's length."""
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, "schedule.name=step", "schedule.step_size=1"))
    train(cfg, tmp_path / "run", raw_config=raw, progress=False)
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 2, "schedule.name=step", "schedule.step_size=1"))
    train(cfg, tmp_path / "run", resume=True, raw_config=raw, progress=False)
    rows = history(tmp_path / "run")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert float(rows[1]["lr"]) == pytest.approx(float(rows[0]["lr"]) * cfg.schedule.gamma)  # the schedule went on
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == 2
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["epochs"] == 2


def test_a_run_that_stopped_early_resumes_without_training_on(utkface_dir: Path, tmp_path: Path) -> None:
    """Resumed, an early-stopped run trained one more epoch and could replace best.pt; its init source may be gone
    by then (the resumed weights are the run's own), and a selection figure undefined in an epoch (a precision
    when no face is called female) is never the best, where it stopped the run."""
    init = tmp_path / "init"
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1))
    train(cfg, init, raw_config=raw, progress=False)
    overrides = small(utkface_dir, 64, 6, "early_stopping=1", "optimizer.lr=2.0", f"init={init}",
                      "select=val_gender_precision")
    cfg, raw = load_config(FLAGSHIP, overrides)
    train(cfg, tmp_path / "run", raw_config=raw, progress=False)
    stopped = (tmp_path / "run" / "best.pt").read_bytes(), history(tmp_path / "run")
    assert len(stopped[1]) < 6  # stopped early (a learning rate of 2 does not improve)
    shutil.rmtree(init)
    train(cfg, tmp_path / "run", resume=True, raw_config=raw, progress=False)
    assert ((tmp_path / "run" / "best.pt").read_bytes(), history(tmp_path / "run")) == stopped


def test_a_run_whose_faces_changed_is_not_resumed(manifest: Path, tmp_path: Path) -> None:
    """Rows added to a manifest were trained on without a word, and with a one-cycle schedule the resumed run
    failed in its last epoch ("Tried to step 13 times")."""
    faces = tmp_path / "faces.csv"
    faces.write_text(manifest.read_text())
    overrides = ["data.dataset=manifest", f"data.root={faces}", "epochs=1", "batch_size=32", "threads=1"]
    cfg, raw = load_config(FLAGSHIP, overrides)
    train(cfg, tmp_path / "run", raw_config=raw, progress=False)
    faces.write_text("\n".join(manifest.read_text().splitlines()[:-40]) + "\n")  # 40 faces fewer
    with pytest.raises(ValueError, match="its faces changed since it started"):
        train(cfg, tmp_path / "run", resume=True, raw_config=raw, progress=False)


def test_resuming_another_networks_run_is_one_line(utkface_dir: Path, tmp_path: Path) -> None:
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1))
    train(cfg, tmp_path / "run", raw_config=raw, progress=False)
    (tmp_path / "run" / "config.yaml").unlink()  # nothing left to compare the config with
    other, raw_other = load_config(FLAGSHIP, small(utkface_dir, 64, 1, "model_args.blocks=[1,1,1,1]"))
    with pytest.raises(ValueError, match=r"cannot resume .* holds the weights of another network"):
        train(other, tmp_path / "run", resume=True, raw_config=raw_other, progress=False)


def test_an_existing_run_is_not_overwritten_without_resume(utkface_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"precious")
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "train", str(FLAGSHIP), "--run-dir",
                             str(tmp_path / "run"), "-q", "-s", f"data.root={utkface_dir}"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--resume" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "run" / "last.pt").read_bytes() == b"precious"


def test_two_process_ddp_keeps_replicas_identical(utkface_dir: Path, tmp_path: Path) -> None:
    report = two_process_ddp(FLAGSHIP, tmp_path / "run", small(utkface_dir, 128, 1))
    assert report["world"] == 2 and report["max_diff"] == 0.0 and report["norm"] > 0


def constant_teacher(path: Path, age: int, female_logit: float, **model_args: Any) -> Path:
    """A flagship checkpoint that calls every face ``age`` years old with P(female) = sigmoid(female_logit)."""
    teacher = create_model("flagship", **model_args)
    with torch.no_grad():
        for head in (teacher.age_dist, teacher.gender):
            head.weight.zero_()
            head.bias.zero_()
        teacher.age_dist.bias[age] = 6.0
        teacher.gender.bias.fill_(female_logit)
    torch.save({"model": teacher.state_dict(), "model_config": teacher.config.to_dict(), "model_args": model_args},
               path)
    return path


def test_a_student_trained_on_its_teacher_alone_comes_to_agree_with_it(utkface_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    constant_teacher(tmp_path / "teacher.pt", 70, 3.0)  # an opinionated teacher: every face is a 70-year-old woman
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 256, 4, f"distill.teacher={tmp_path / 'teacher.pt'}",
                                           "loss.age_dist=0", "loss.gender=0", "optimizer.lr=0.005", "ema=null",
                                           "schedule.name=none"))
    trainer = Trainer(cfg, tmp_path / "student", raw, progress=False)
    val = trainer.data["val"].images

    def predictions() -> tuple[float, float, float]:
        student, teacher = (model_outputs(m, val, trainer.config) for m in (trainer.model, trainer.teacher.models[0]))
        gap, _ = distillation_loss({k: torch.from_numpy(v) for k, v in student.items()},
                                   {k: torch.from_numpy(v) for k, v in teacher.items()})
        decoded = decode(student)
        return float(gap), float(decoded.age.mean()), float(decoded.female_prob.mean())

    gap, age, female = predictions()
    trainer.fit()
    gap_after, age_after, female_after = predictions()
    assert gap_after < 0.5 * gap
    assert age_after > age and female_after > 0.7 > female
    assert "val_loss" in history(tmp_path / "student")[0]


def test_an_ensemble_teacher_averages_its_models_probabilities(tmp_path: Path) -> None:
    paths = [constant_teacher(tmp_path / "old.pt", 70, 3.0), constant_teacher(tmp_path / "young.pt", 10, -3.0)]
    teacher = Teacher.load([str(p) for p in paths], create_model("flagship").config)
    out = teacher(torch.zeros(2, 3, 64, 64))
    probs = out["age_dist_logits"].softmax(1)
    e6 = math.exp(6.0)
    expected = (e6 + 1) / (2 * (e6 + 100))  # each model: e^6 / (e^6 + 100) on its age, 1 / (e^6 + 100) elsewhere
    assert torch.allclose(probs[:, [10, 70]], torch.full((2, 2), expected), atol=1e-6)
    assert torch.allclose(out["gender_logit"], torch.zeros(2), atol=1e-5)  # mean of sigmoid(3) and sigmoid(-3)


def random_teacher(path: Path) -> Path:
    """A small flagship checkpoint with random weights (off the identity init of its residual bodies), so that
    every layer matters."""
    model = create_model("flagship", blocks=[1, 1, 1, 1])
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    torch.save({"model": model.state_dict(), "model_config": model.config.to_dict(),
                "model_args": {"blocks": [1, 1, 1, 1]}}, path)
    return path


def test_a_teacher_in_onnx_runtime_gives_what_it_gives_in_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths = [random_teacher(tmp_path / f"{name}.pt") for name in ("a", "b")]
    x = torch.randn(5, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    config = create_model("flagship").config
    eager, onnx = (Teacher.load(paths, config, flip=True, runtime=r)(x) for r in ("torch", "onnx"))
    assert set(eager) == set(onnx) and all(torch.allclose(eager[k], onnx[k], atol=1e-4) for k in eager)
    assert isinstance(Teacher.load(paths[:1], config).runners[0], OnnxRunner)  # auto on a CPU: ONNX Runtime
    with pytest.raises(ValueError, match="distill.runtime"):
        Teacher.load(paths, config, runtime="tensorrt")


def test_a_flip_teacher_averages_each_face_with_its_mirror() -> None:
    class LeftMinusRight(torch.nn.Module):  # P(female) from which half of the image is brighter
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            half = x.shape[-1] // 2
            return {"gender_logit": x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3))}

    x = torch.zeros(1, 3, 64, 64)
    x[..., :32] = 2.0
    assert float(Teacher([LeftMinusRight()])(x)["gender_logit"]) == pytest.approx(2.0)
    assert float(Teacher([LeftMinusRight()], flip=True)(x)["gender_logit"]) == pytest.approx(0.0, abs=1e-6)


def test_a_smaller_teacher_sees_the_students_batch_average_pooled(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = random_teacher(tmp_path / "t.pt")
    config = create_model("flagship").config
    teacher = Teacher.load([path], config.replace(input_size=128, resize=144), flip=True)
    assert teacher.scales == [2]
    x = torch.randn(3, 3, 128, 128)
    small = x.reshape(3, 3, 64, 2, 64, 2).mean((3, 5))  # each teacher pixel: the mean of a 2x2 student block
    direct = Teacher.load([path], config, flip=True)(small)
    assert all(torch.allclose(teacher(x)[k], direct[k], atol=1e-4) for k in direct)
    for size, resize in ((128, 136), (96, 108)):  # another field of view; not a whole multiple of 64
        with pytest.raises(ValueError, match="integer fraction of it with the same field of view"):
            Teacher.load([path], config.replace(input_size=size, resize=resize))


def test_stored_teacher_outputs_reach_each_batch_by_record(utkface_dir: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in utkface_dir.glob("*.jpg"))
    ages = [float(name.split("_")[0]) for name in names]  # a stored "logit" that is the face's own age
    stored = save_stored_outputs(tmp_path / "targets.npz", names, {"gender_logit": ages})
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, f"distill.stored={stored}"))
    trainer = Trainer(cfg, tmp_path / "run", raw, progress=False)
    _, targets = next(iter(trainer.batches))
    assert torch.equal(trainer.stored(targets["index"])["gender_logit"], targets["age"])
    trainer.fit()
    assert len(history(tmp_path / "run")) == 1

    save_stored_outputs(tmp_path / "few.npz", names[:10], {"gender_logit": ages[:10]})
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, f"distill.stored={tmp_path / 'few.npz'}"))
    with pytest.raises(ValueError, match="has no outputs for .* training images"):
        Trainer(cfg, tmp_path / "run2", raw, progress=False)
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, f"distill.stored={stored}",
                                           f"distill.teacher={tmp_path / 'run'}"))
    with pytest.raises(ValueError, match="not both"):
        Trainer(cfg, tmp_path / "run3", raw, progress=False)
    with pytest.raises(ValueError, match="not model outputs: age_years"):
        save_stored_outputs(tmp_path / "bad.npz", names[:1], {"age_years": [1.0]})


def test_distilled_heads_are_weighted_by_their_schedule(utkface_dir: Path, tmp_path: Path) -> None:
    student = {"gender_logit": torch.zeros(4, requires_grad=True), "descriptor": torch.zeros(4, 2, requires_grad=True)}
    teacher = {"gender_logit": torch.full((4,), 3.0), "descriptor": torch.ones(4, 2)}
    total, terms = distillation_loss(student, teacher, weights={"descriptor": 0.0})
    total.backward()
    assert not student["descriptor"].grad.any() and student["gender_logit"].grad.abs().min() > 0
    assert terms["kd_descriptor"] == pytest.approx(1.0)  # reported unweighted

    cfg, _ = load_config(FLAGSHIP, ["distill.heads={descriptor: [[0, 1.0], [10, 1.0], [20, 0.0]], gender_logit: 2}"])
    assert cfg.distill.head_weights(15) == {"descriptor": 0.5, "gender_logit": 2.0}
    with pytest.raises(ValueError, match="'eyes' is not a model output"):
        load_config(FLAGSHIP, ["distill.heads={eyes: 1}"])
    with pytest.raises(ValueError, match=r"distill.heads = .*: descriptor: give a number or"):
        load_config(FLAGSHIP, ["distill.heads={descriptor: [1, 2]}"])

    # in training: a stored teacher whose only head weighs 0 leaves the run exactly as without a teacher
    names = sorted(p.name for p in utkface_dir.glob("*.jpg"))
    stored = save_stored_outputs(tmp_path / "targets.npz", names, {"gender_logit": [5.0] * len(names)})
    weights = []
    for name, extra in (("plain", []), ("muted", [f"distill.stored={stored}", "distill.heads={gender_logit: 0}"])):
        cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, "ema=null", *extra))
        trainer = Trainer(cfg, tmp_path / name, raw, progress=False)
        trainer.train_epoch()
        weights.append(trainer.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_init_starts_from_the_weights_of_another_run(utkface_dir: Path, tmp_path: Path) -> None:
    start = constant_teacher(tmp_path / "start.pt", 40, 1.0, blocks=[1, 1, 2, 2])  # FLAGSHIP's shape
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, f"init={start}"))
    trainer = Trainer(cfg, tmp_path / "run", raw, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(),
                                                  load_model(start).state_dict().values(), strict=True))
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, f"init={start}", "model_args.blocks=[1, 1, 1, 1]"))
    with pytest.raises(ValueError, match="another shape"):
        Trainer(cfg, tmp_path / "run2", raw, progress=False)
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, f"init={tmp_path / 'nowhere'}"))
    with pytest.raises(FileNotFoundError, match="init: no checkpoint"):
        Trainer(cfg, tmp_path / "run3", raw, progress=False)


def test_a_teacher_that_sees_other_inputs_is_refused(utkface_dir: Path, tmp_path: Path) -> None:
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1))
    train(cfg, tmp_path / "teacher", raw_config=raw, progress=False)
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, f"distill.teacher={tmp_path / 'teacher'}",
                                           "model_args.input_size=48"))
    with pytest.raises(ValueError, match="input_size=64.*must see the student's batches"):
        Trainer(cfg, tmp_path / "student", raw, progress=False)
    cfg, raw = load_config(FLAGSHIP, small(utkface_dir, 64, 1, f"distill.teacher={tmp_path / 'nowhere'}"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(cfg, tmp_path / "student2", raw, progress=False)


def test_a_one_cycle_warm_up_of_exactly_one_step_is_a_clear_error() -> None:
    """OneCycleLR ends its warm-up at step ``pct_start * steps - 1`` and divides by that: 0.2 of 5 steps is zero
    (a ZeroDivisionError from inside PyTorch before); shorter and longer warm-ups run."""
    from agegender.training.config import ScheduleConfig
    from agegender.training.optim import Schedule

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="exactly one step"):
        Schedule(optimizer, ScheduleConfig(name="onecycle", pct_start=0.2), epochs=1, steps_per_epoch=5)
    for epochs, steps in ((1, 2), (2, 5)):
        Schedule(optimizer, ScheduleConfig(name="onecycle", pct_start=0.2), epochs=epochs, steps_per_epoch=steps)


def test_model_args_a_model_does_not_take_are_one_line_before_any_data() -> None:
    with pytest.raises(ValueError, match=r"model_args of 'flagship' \(foo\): .*'foo'"):
        create_model("flagship", foo=1)
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "train", str(FLAGSHIP), "-s", "model_args.foo=1",
                             "-s", "data.root=/nonexistent", "--run-dir", "/tmp/agegender-never-written"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "keyword argument 'foo'" in result.stderr and "Traceback" not in result.stderr


def test_resume_of_a_folder_without_a_run_says_it_starts_anew(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A mistyped --run-dir with --resume restarted a long run from epoch 1 without a word (the data folder is
    missing here, so that the command stops after saying so)."""
    from agegender.cli import main

    assert main(["train", str(FLAGSHIP), "--run-dir", str(tmp_path / "typo"), "--resume", "-q",
                 "-s", f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert f"--resume: {tmp_path / 'typo'} holds no run to continue (no last.pt)" in capsys.readouterr().err


def test_every_output_names_the_labels_its_loss_reads() -> None:
    from agegender.outputs import OUTPUT_KEYS
    from agegender.training.losses import LOSS_OUTPUTS, OUTPUT_LABELS

    assert set(OUTPUT_LABELS) == set(OUTPUT_KEYS) == {o for outputs in LOSS_OUTPUTS.values() for o in outputs}


def test_a_head_whose_labels_the_data_lacks_is_said_not_to_train(utkface_dir: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A regression head on faces labelled by gender only had a zero loss all run, without a word."""
    manifest = tmp_path / "gender_only.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "gender"])
        for path in sorted(utkface_dir.iterdir())[::100][:96]:
            writer.writerow([path, ("male", "female")[int(path.name.split("_")[1])]])
    cfg, raw = load_config(FLAGSHIP, ["model=vu_multitask", "model_args={}", "data.dataset=manifest",
                                      f"data.root={manifest}", "epochs=1", "batch_size=32", "threads=1"])
    Trainer(cfg, tmp_path / "run", raw, progress=False)
    lines = [r.getMessage() for r in caplog.records if "does not train" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("age: none of the ") and "has age labels" in lines[0], lines
