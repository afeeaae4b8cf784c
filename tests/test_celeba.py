"""CelebA in its authors' file format (a fixture made of UTKFace chips), the 40-attribute head and its loss, seed
001's pre-train -> fine-tune flow through ``agegender train``, and torchvision weights from a local file."""

from __future__ import annotations

import csv
import hashlib
import logging
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models._api import Weights

from agegender.cli import main
from agegender.data.celeba import read_celeba
from agegender.data.datasets import DataConfig, dataset_splits
from agegender.data.splits import SPLITS, check_no_leakage
from agegender.data.utkface import parse_utkface_name
from agegender.labels import FEMALE, MALE
from agegender.model_config import IMAGENET_MEAN, IMAGENET_STD
from agegender.models import create_model
from agegender.models.options import torchvision_net, verify_weights_file
from agegender.outputs import ATTRIBUTES, MALE_ATTRIBUTE, decode
from agegender.training.batches import record_targets
from agegender.training.checkpoint import init_from, load_model
from agegender.training.losses import LossSpec, multitask_loss

REPO = Path(__file__).resolve().parents[1]
CHEN_CAO = REPO / "configs" / "seeds" / "chen_cao"
N = 40  # images: 20 identities of 2; identities 1-14 train, 15-17 val, 18-20 test
TINY = ["-s", "epochs=1", "-s", "batch_size=8", "-s", "threads=1", "-s", "model_args.input_size=64", "-q"]

torch.set_num_threads(1)


def write_celeba(root: Path, chips: list[Path], release_layout: bool = False, header: tuple[str, ...] = ATTRIBUTES,
                 partition: bool = True) -> dict[str, tuple[int, ...]]:
    """CelebA's files for ``chips`` (as ``000001.jpg`` ...): Male follows UTKFace's gender, the other 39
    attributes are random. ``release_layout`` puts them in Img/, Anno/ and Eval/ as the authors' download does.
    Returns each file's attributes as 1/0 in ATTRIBUTES order."""
    images = root / ("Img" if release_layout else "") / "img_align_celeba"
    anno, evaluation = (root / "Anno", root / "Eval") if release_layout else (root, root)
    for folder in (images, anno, evaluation):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, parts, ids, truth = [], [], [], {}
    for i, chip in enumerate(chips, start=1):
        name = f"{i:06d}.jpg"
        shutil.copyfile(chip, images / name)
        labels = parse_utkface_name(chip.name)
        assert labels is not None
        values = dict(zip(ATTRIBUTES, rng.choice([-1, 1], size=len(ATTRIBUTES)).tolist(), strict=True))
        values["Male"] = 1 if labels[1] == MALE else -1
        truth[name] = tuple(int(values[a] == 1) for a in ATTRIBUTES)
        rows.append(f"{name} " + " ".join(f"{values[a]:2d}" for a in header))
        identity = (i - 1) // 2 + 1
        parts.append(f"{name} {0 if identity <= 14 else 1 if identity <= 17 else 2}")
        ids.append(f"{name} {identity}")
    rows.append("000999.jpg " + " ".join(["-1"] * len(header)))  # listed, but its image is not there
    (anno / "list_attr_celeba.txt").write_text(f"{len(rows)}\n{' '.join(header)} \n" + "\n".join(rows) + "\n")
    if partition:
        (evaluation / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    (anno / "identity_CelebA.txt").write_text("\n".join(ids) + "\n")
    return truth


@pytest.fixture(scope="module")
def utkface_chips(utkface_dir: Path) -> list[Path]:
    """48 UTKFace chips spread over the ages (the folder sorts by age); their hash split leaves faces in each of
    train, val and test."""
    return sorted(utkface_dir.glob("*.jpg"))[::400][:48]


@pytest.fixture(scope="module")
def chips(utkface_chips: list[Path]) -> list[Path]:
    """The chips that become the CelebA fixture."""
    return utkface_chips[:N]


@pytest.fixture(scope="module")
def celeba_dir(tmp_path_factory: pytest.TempPathFactory, chips: list[Path]) -> Path:
    root = tmp_path_factory.mktemp("celeba")
    write_celeba(root, chips)
    return root


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory, celeba_dir: Path) -> Path:
    """Seed 001 §4.1's pre-training, 1 epoch on the fixture at 64 px, through ``agegender train``."""
    run = tmp_path_factory.mktemp("runs") / "pretrain"
    assert main(["train", str(CHEN_CAO / "celeba_pretrain_resnet34.yaml"), "--run-dir", str(run),
                 "-s", f"data.root={celeba_dir}", *TINY]) == 0
    return run


def test_reader_reads_the_published_layout(tmp_path: Path, chips: list[Path]) -> None:
    truth = write_celeba(tmp_path / "flat", chips)
    splits, report = read_celeba(tmp_path / "flat")
    assert [len(splits[s]) for s in SPLITS] == [28, 6, 6] and report.read == N
    assert report.skipped == {"image missing": ["000999.jpg"]}
    check_no_leakage(splits)  # identities are the groups: the partition keeps each person on one side
    for record in (r for s in SPLITS for r in splits[s]):
        name = Path(record.path).name
        assert record.attributes == truth[name] and record.age is None and record.age_group is None
        assert record.gender == (MALE if truth[name][MALE_ATTRIBUTE] else FEMALE)
        assert record.group_id == f"celeba:{(int(name[:6]) - 1) // 2 + 1}"
    # the authors' download (Img/, Anno/, Eval/), with the header in another order, reads the same
    write_celeba(tmp_path / "release", chips, release_layout=True, header=tuple(reversed(ATTRIBUTES)))
    again, _ = read_celeba(tmp_path / "release")
    assert [[(Path(r.path).name, r.attributes, r.gender) for r in again[s]] for s in SPLITS] == \
        [[(Path(r.path).name, r.attributes, r.gender) for r in splits[s]] for s in SPLITS]
    # without the partition file: an identity-exclusive hash split
    write_celeba(tmp_path / "nopart", chips, partition=False)
    hashed, _ = read_celeba(tmp_path / "nopart")
    check_no_leakage(hashed)
    assert sum(len(hashed[s]) for s in SPLITS) == N
    with pytest.raises(FileNotFoundError, match="not a CelebA folder: no list_attr_celeba.txt"):
        read_celeba(tmp_path / "release" / "Img")
    (tmp_path / "flat" / "list_attr_celeba.txt").write_text("1\nMale Smiling\n000001.jpg 1 -1\n")
    with pytest.raises(ValueError, match="does not name CelebA's 40 attributes"):
        read_celeba(tmp_path / "flat")


def test_partition_that_splits_a_person_is_kept_and_reported(tmp_path: Path, chips: list[Path],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    write_celeba(tmp_path, chips[:4])
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 2\n000003.jpg 1\n000004.jpg 1\n")
    with caplog.at_level(logging.WARNING):
        splits, _ = read_celeba(tmp_path)
    assert [len(splits[s]) for s in SPLITS] == [1, 2, 1]
    assert "puts 1 identities in more than one split" in caplog.text


def test_data_config_gives_the_official_partition_and_attribute_targets(celeba_dir: Path) -> None:
    splits = dataset_splits(DataConfig(dataset="celeba", root=str(celeba_dir)), progress=False)
    assert [len(splits[s]) for s in SPLITS] == [28, 6, 6]
    targets = record_targets(splits["train"])
    assert targets["attributes"].shape == (28, 40) and set(np.unique(targets["attributes"])) == {0.0, 1.0}
    assert (targets["gender"] == 1 - targets["attributes"][:, MALE_ATTRIBUTE]).all()
    assert np.isnan(targets["age"]).all() and (targets["group"] == -1).all()
    mixed = record_targets([splits["train"][0], splits["train"][0].__class__("x.jpg", 30.0, 4, 0)])
    assert mixed["attributes"][1].tolist() == [-1.0] * 40  # a face without attributes: every label unknown
    assert "attributes" not in record_targets([splits["train"][0].__class__("x.jpg", 30.0, 4, 0)])
    with pytest.raises(ValueError, match="data.root is needed for the celeba data set"):
        dataset_splits(DataConfig(dataset="celeba"), progress=False)


def test_attribute_head_and_its_masked_loss() -> None:
    torch.manual_seed(0)
    model = create_model("resnet34_attributes", input_size=64)
    outputs = model(torch.randn(3, 3, 64, 64))
    assert set(outputs) == {"attributes"} and outputs["attributes"].shape == (3, 40)
    labels = torch.randint(0, 2, (3, 40)).float()
    labels[0] = -1  # the first face's attributes are unknown
    targets = {"age": torch.full((3,), float("nan")), "group": torch.full((3,), -1),
               "gender": 1 - labels[:, MALE_ATTRIBUTE].clamp(min=0).long(), "attributes": labels}
    total, terms = multitask_loss(outputs, targets, LossSpec(attributes=2.0))
    assert set(terms) == {"attributes"} and float(total.detach()) == pytest.approx(2 * terms["attributes"])
    logits = outputs["attributes"].detach().requires_grad_(True)
    multitask_loss({"attributes": logits}, targets, LossSpec())[0].backward()
    assert not logits.grad[0].any() and logits.grad[1:].abs().min() > 0  # masked labels pass no gradient
    with pytest.raises(ValueError, match="attributes are labelled in the celeba data set only"):
        multitask_loss({"attributes": logits}, {k: v for k, v in targets.items() if k != "attributes"}, LossSpec())
    decoded = decode({"attributes": outputs["attributes"].detach().numpy()})  # gender from the Male column
    assert decoded.age is None
    assert np.allclose(decoded.female_prob, torch.sigmoid(-outputs["attributes"][:, MALE_ATTRIBUTE]).detach())


def test_pretrain_on_celeba_then_fine_tune_with_init_and_frozen_layers(pretrained_run: Path,
                                                                       utkface_chips: list[Path],
                                                                       tmp_path: Path) -> None:
    """Seed 001 §4: ResNet-34 on CelebA's attributes, then model 12 (SE block, ordinal age, gender weight
    schedule) from its trunk with the last 12 layers trainable, each 1 epoch through ``agegender train``."""
    pre, tuned = pretrained_run, tmp_path / "model12"
    source = load_model(pre / "best.pt")
    assert source.config.outputs == ("attributes",) and (pre / "summary.yaml").is_file()
    manifest = tmp_path / "faces.csv"  # an age-and-gender data set for the fine-tuning: the same chips
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "age", "gender"])
        for chip in utkface_chips:
            age, gender, _ = parse_utkface_name(chip.name)  # type: ignore[misc]
            writer.writerow([chip, age, gender])
    assert main(["train", str(CHEN_CAO / "resnet_model12_celeba.yaml"), "--run-dir", str(tuned),
                 "-s", "data.dataset=manifest", "-s", f"data.root={manifest}", "-s", f"init={pre}", *TINY]) == 0
    before, after = source.state_dict(), load_model(tuned / "best.pt").state_dict()
    assert torch.equal(before["backbone.0.weight"], after["backbone.0.weight"])  # conv1: frozen
    assert not torch.equal(before["backbone.7.2.conv2.weight"], after["backbone.7.2.conv2.weight"])  # trained
    assert "backbone.8.gate.2.weight" in after and "heads.layers.attributes.weight" not in after  # SE and heads new


def test_init_refuses_a_network_whose_trunk_does_not_fit(pretrained_run: Path) -> None:
    run = pretrained_run
    with pytest.raises(ValueError, match="trained on other inputs.*input_size 64 vs 224"):
        init_from(create_model("resnet34_multitask"), run)
    other = create_model("flagship", input_size=64, resize=None, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ValueError, match="holds a resnet34_attributes, not a flagship, and its trunk does not fit"):
        init_from(other, run)


# --- torchvision weights from a local file -------------------------------------------------------------------

def test_a_weights_file_with_another_hash_is_refused_by_name(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    fake = tmp_path / "resnet34-b627a593.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=r"is not torchvision's ResNet34_Weights.IMAGENET1K_V1 weights, "
                                         r"resnet34-b627a593.pth \(sha256 starting b627a593\), from "
                                         r"https://download.pytorch.org/models/resnet34-b627a593.pth"):
        create_model("resnet34_multitask", weights=str(fake))
    with pytest.raises(FileNotFoundError, match="no file at .*nowhere.pth; expected torchvision's VGG16"):
        create_model("utk_vgg16", weights=str(tmp_path / "nowhere.pth"))
    # through a config: one line, exit 2, before any data is read
    assert main(["train", str(CHEN_CAO / "resnet_model9.yaml"), "-s", f"model_args.weights={fake}",
                 "--run-dir", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "error: model_args.weights:" in err and "resnet34-b627a593.pth" in err and len(err.splitlines()) == 1


def test_a_weights_file_with_the_published_hash_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "saved.pth"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]

    class TinyWeights(WeightsEnum):
        V1 = Weights(url=f"https://example.invalid/tiny-{prefix}.pth", transforms=None, meta={})

    assert verify_weights_file(path, TinyWeights.V1) is TinyWeights.V1
    net = torchvision_net(lambda weights: nn.Linear(3, 2), str(path), False, TinyWeights.V1)
    assert torch.equal(net.weight, torch.load(path)["weight"])


def test_an_offline_download_says_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match=r"could not download .*resnet34-b627a593.pth .*no network.*"
                                                r"Offline: copy that file into .*checkpoints, or give its path"):
        create_model("resnet34_multitask", pretrained=True)


def test_a_checkpoint_loads_without_the_weights_it_started_from(pretrained_run: Path, tmp_path: Path) -> None:
    """Its own weights replace them: no download, and no local weights file is read."""
    state = torch.load(pretrained_run / "best.pt", weights_only=False)
    gone = str(tmp_path / "moved" / "resnet34-b627a593.pth")
    state["model_args"] = {**state["model_args"], "weights": gone, "pretrained": True}
    torch.save(state, tmp_path / "best.pt")
    model = load_model(tmp_path / "best.pt")
    assert model.config.extra["weights"] == gone and model.config.extra["pretrained"] is True  # as recorded
    assert torch.equal(model.state_dict()["backbone.0.weight"], state["model"]["backbone.0.weight"])
