"""The main job end to end: the shipped model on real held-out chips, the Predictor on photos, the CLI on a
folder with a bad file, the JSON schema, and video tracking."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from agegender import Predictor
from agegender.cli import main
from agegender.data.splits import load_or_make_splits
from agegender.data.utkface import read_utkface
from agegender.images import load_image
from agegender.inference.onnx_model import OnnxAgeGender, shipped_model_path
from agegender.inference.video import predict_video
from agegender.labels import AGE_GROUPS
from agegender.paths import default_cache_dir
from tests.conftest import shared_path

REPO = Path(__file__).resolve().parents[1]
FACE_KEYS = {"box", "score", "age", "age_range", "age_group", "age_group_confidence", "gender",
             "gender_confidence", "landmarks"}


@pytest.fixture(scope="module")
def predictor(yunet_path: Path) -> Predictor:
    return Predictor(detector=yunet_path)


def test_shipped_model_on_held_out_utkface_chips(utkface_dir: Path) -> None:
    """Stated bound: on 400 test-split chips the shipped default (flagship v18 int8: test MAE 4.94, gender 92.4% on
    all 2,092, flip-averaged as ``Predictor`` does by default) stays within MAE 6.0 and gender accuracy 89%."""
    records, _ = read_utkface(utkface_dir)
    test = load_or_make_splits(records, default_cache_dir() / "splits", progress=False)[0]["test"][::5][:400]
    chips = Predictor(detector=None)
    faces = [f[0] for f in chips.predict_batch([r.path for r in test])]
    mae = np.mean([abs(f.age - r.age) for f, r in zip(faces, test, strict=True)])
    gender = np.mean([(f.gender == "female") == (r.gender == 1) for f, r in zip(faces, test, strict=True)])
    assert mae < 6.0 and gender > 0.89, (mae, gender)
    assert shipped_model_path().stat().st_size < 8e6


def test_predictor_finds_every_face_in_a_group_photo(predictor: Predictor) -> None:
    faces = predictor.predict(shared_path("photos", "mowshon_test-image.jpg"))
    assert len(faces) == 5
    for face in faces:
        assert face.age_range[0] <= face.age <= face.age_range[1]
        assert face.age_group in AGE_GROUPS and face.gender in ("male", "female")
        assert 0.5 <= face.gender_confidence <= 1 and face.landmarks.shape == (5, 2)
    kid = predictor.predict(shared_path("photos", "smahesh29_kid1.jpg"))
    assert len(kid) == 1 and kid[0].age < 15  # a toddler
    image = load_image(shared_path("photos", "mowshon_test-image.jpg"))
    assert predictor.plot(image, faces).shape == image.shape


def test_the_model_session_sleeps_between_runs_and_the_benchmark_compares_it_with_spinning(
        predictor: Predictor) -> None:
    """A spinning ONNX Runtime pool slowed the detection of the next photo (scripts/measure/ort_spinning.py)."""
    spec = importlib.util.spec_from_file_location("ort_spinning", REPO / "scripts" / "measure" / "ort_spinning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    key = "session.intra_op.allow_spinning"
    # On a CPU with AVX-512 VNNI or AMX, `auto` runs the model on OpenVINO: ask for ONNX Runtime by name.
    ort = OnnxAgeGender(predictor.model.path, backend="onnxruntime")
    assert ort.session.session.get_session_options().get_session_config_entry(key) == "0"
    spinning = bench.spinning_session(predictor.model.path)
    assert spinning.get_session_options().get_session_config_entry(key) == "1"


def test_cli_on_a_folder_with_one_bad_file(tmp_path: Path, yunet_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    photo = shared_path("photos", "smahesh29_man1.jpg")
    (folder / "sub" / "man.jpg").write_bytes(photo.read_bytes())
    (folder / "broken.jpg").write_bytes(photo.read_bytes()[:2000])
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "predict", str(folder), "--json",
                             "--detector", str(yunet_path), "--save-dir", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_file = {Path(line["file"]).name: line for line in lines}
    assert "error" in by_file["broken.jpg"] and "Traceback" not in result.stderr
    faces = by_file["man.jpg"]["faces"]
    assert len(faces) == 1 and set(faces[0]) == FACE_KEYS
    assert len(faces[0]["box"]) == 4 and len(faces[0]["age_range"]) == 2
    assert set(faces[0]["landmarks"]) == {"right_eye", "left_eye", "nose_tip", "right_mouth", "left_mouth"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"man_annotated.jpg", "man_face0.jpg"}


def test_save_dir_keeps_the_outputs_of_photos_that_share_a_name(tmp_path: Path, yunet_path: Path) -> None:
    """Camera file names repeat across folders: each photo's annotated image and crops must survive."""
    for year, name in (("2023", "smahesh29_man1.jpg"), ("2024", "dlib_2007_007763.jpg")):
        (tmp_path / "cam" / year).mkdir(parents=True)
        (tmp_path / "cam" / year / "IMG_0001.jpg").write_bytes(shared_path("photos", name).read_bytes())
    assert main(["predict", str(tmp_path / "cam"), "--detector", str(yunet_path), "--save-dir",
                 str(tmp_path / "out")]) == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"2023_IMG_0001_annotated.jpg", "2023_IMG_0001_face0.jpg", "2024_IMG_0001_annotated.jpg",
            "2024_IMG_0001_face6.jpg"} <= names and len(names) == 2 + 1 + 7


def test_save_dir_does_not_change_the_predictions_and_saves_at_full_size(
        tmp_path: Path, yunet_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A large JPEG is predicted from a reduced decode with or without --save-dir (a face once read 73 without it and
    77 with it); the annotated image is still the photo's full size."""
    image = load_image(shared_path("photos", "dlib_2007_007763.jpg"))
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), cv2.resize(image, (4000, 3000), interpolation=cv2.INTER_CUBIC))
    printed = []
    for extra in ([], ["--save-dir", str(tmp_path / "out")]):
        assert main(["predict", str(big), "--json", "--detector", str(yunet_path), *extra]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and len(json.loads(printed[0])["faces"]) == 7
    assert cv2.imread(str(tmp_path / "out" / "big_annotated.jpg")).shape == (3000, 4000, 3)
    assert cv2.imread(str(tmp_path / "out" / "big_face6.jpg")) is not None


def test_save_dir_decodes_again_under_the_runs_max_pixels(tmp_path: Path, yunet_path: Path) -> None:
    """A photo over 50 MP predicted with --max-pixels raised: --save-dir decoded it again under the default limit
    and stopped the run."""
    huge = tmp_path / "huge.jpg"
    cv2.imwrite(str(huge), np.full((7000, 7200, 3), 128, np.uint8))  # 50.4 MP
    command = ["predict", str(huge), "--detector", str(yunet_path), "--save-dir", str(tmp_path / "out")]
    assert main([*command, "--max-pixels", "60000000"]) == 0
    assert (tmp_path / "out" / "huge_annotated.jpg").is_file()


def test_no_detect_takes_chips_and_csv_output(utkface_dir: Path) -> None:
    chip = next(utkface_dir.glob("*.jpg"))
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "predict", str(chip), "--no-detect", "--csv"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.startswith("file,frame,track,face,x,y,w,h") and row.startswith(str(chip))


def test_output_into_a_closed_pipe_ends_without_a_traceback(utkface_dir: Path) -> None:
    """`agegender predict ... | head` : the reader goes away before the JSON is written."""
    chip = next(utkface_dir.glob("*.jpg"))
    proc = subprocess.Popen([sys.executable, "-m", "agegender.cli", "predict", str(chip), "--no-detect", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 1 and err == "", err


def test_the_shipped_model_describes_itself(capsys: pytest.CaptureFixture) -> None:
    """`agegender models flagship-int8` needs no torch: what the file holds, and how its metrics were measured."""
    assert main(["models", "flagship-int8"]) == 0
    text = capsys.readouterr().out
    assert "static int8" in text and "an age a above" in text and "the test split" in text and "Faces" in text
    assert "flagship v18" in text and "linear resampling" in text  # the version the README and the card name


def test_video_faces_keep_their_track(predictor: Predictor, tmp_path: Path) -> None:
    image = load_image(shared_path("photos", "mowshon_test-image-2.jpg"))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, image.shape[1::-1])
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for shift in range(4):
        writer.write(np.roll(image, 2 * shift, axis=1))
    writer.release()
    frames = list(predict_video(predictor, str(video)))
    assert len(frames) == 4
    ids = [sorted(t for t, _ in tracked) for _, _, tracked in frames]
    assert len(ids[0]) == 6 and all(i == ids[0] for i in ids)


def _clip(tmp_path: Path, frames: int = 4) -> Path:
    image = load_image(shared_path("photos", "mowshon_test-image-2.jpg"))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, image.shape[1::-1])
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for shift in range(frames):
        writer.write(np.roll(image, 2 * shift, axis=1))
    writer.release()
    return video


def test_a_tracked_face_reads_the_group_of_its_smoothed_age(predictor: Predictor, tmp_path: Path) -> None:
    from agegender.labels import AGE_GROUPS, age_to_group

    for _, _, tracked in predict_video(predictor, str(_clip(tmp_path))):
        for _, face in tracked:
            assert face.age_group == AGE_GROUPS[age_to_group(face.age)]
            assert sum(face.age_group_probabilities) == pytest.approx(1.0, abs=1e-3)
            assert face.age_group_confidence == face.age_group_probabilities[AGE_GROUPS.index(face.age_group)]


def test_a_tracked_face_reads_its_groups_smoothed_probability() -> None:
    """Where smoothing moves the age into another group than the frame's, the confidence is that group's smoothed
    probability (it was 0.0)."""
    from dataclasses import replace

    from agegender.inference.results import Face
    from agegender.inference.video import FaceTracker

    probabilities = [(0, 0, 0, 0, 0.2, 0.7, 0.1, 0), (0, 0, 0, 0, 0, 0.1, 0.3, 0.6)]
    frames = [Face(box=(10.0, 10.0, 50.0, 50.0), score=0.9, age=age, age_range=(age - 5, age + 5), age_group=group,
                   age_group_confidence=max(p), gender="male", gender_confidence=0.9, age_group_probabilities=p)
              for age, group, p in ((40.0, "38-43", probabilities[0]), (64.0, "60+", probabilities[1]))]
    tracker = FaceTracker(alpha=0.5)
    tracker.update([frames[0]])
    ((_, face),) = tracker.update([frames[1]])
    smoothed = 0.5 * (np.array(probabilities[0]) + np.array(probabilities[1]))
    assert face.age == 52.0 and face.age_group == "48-53"  # a group neither frame called
    assert face.age_group_confidence == pytest.approx(smoothed[6]) == 0.2
    assert face.age_group_probabilities == pytest.approx(tuple(smoothed))
    ((_, alone),) = FaceTracker().update([replace(frames[1], age_group_probabilities=None)])
    assert alone.age_group_confidence == 0.6  # a face without its probabilities keeps the frame's


def test_a_point_age_model_reports_no_interval_and_no_group_confidence(
        tmp_path: Path, yunet_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Vu's net regresses one age: it has no distribution, so its faces carry no 80% interval and no group
    probability (they read ``[21.4, 21.4]`` and 1.0), in Python, JSON, rows, text, a plot's label and a video."""
    from dataclasses import replace

    from agegender.inference.video import FaceTracker
    from agegender.labels import age_to_group

    pytest.importorskip("torch", reason="exporting Vu's net needs torch")
    from agegender.export import export_onnx
    from agegender.models import create_model

    model = export_onnx(create_model("vu_multitask").eval(), tmp_path / "vu.onnx")
    photo = shared_path("photos", "mowshon_test-image.jpg")
    result = Predictor(model=model, detector=yunet_path).predict(photo)
    assert len(result) == 5
    for face in result:
        assert face.age_range is None and face.age_group_confidence is None
        assert face.age_group_probabilities is None and face.age_group == AGE_GROUPS[age_to_group(face.age)]
        assert "(" not in face.label
        entry = face.to_dict()
        assert entry["age_range"] is None and entry["age_group_confidence"] is None
    for row in result.rows():
        assert row["age_low"] is None and row["age_high"] is None and row["age_group_confidence"] is None
    assert json.loads(result.to_json())["faces"][0]["age_range"] is None
    assert result.plot().shape[:2] == (result.height, result.width)
    ((_, tracked),) = FaceTracker().update([replace(result[0], age=result[0].age + 30)])
    assert tracked.age_range is None and tracked.age_group_confidence is None

    assert main(["predict", str(photo), "--model", str(model), "--detector", str(yunet_path)]) == 0
    text = capsys.readouterr().out
    assert "face 4: " in text and "[" not in text.split("face 0: ")[1].split(", box")[0]


def test_an_age_only_and_a_gender_only_export_run_on_photos_as_a_pair(
        tmp_path: Path, yunet_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Zhu's single-task nets (and Levi & Hassner's two networks) could not run on photos: the Predictor needs age
    and gender, and each export has one."""
    pytest.importorskip("torch", reason="exporting the networks needs torch")
    from agegender.export import export_onnx
    from agegender.inference.factory import load_model
    from agegender.inference.onnx_model import ModelError
    from agegender.models import create_model

    age, gender = (export_onnx(create_model(name).eval(), tmp_path / f"{name}.onnx")
                   for name in ("zhu_age_4conv", "levi_hassner_gender"))
    photo = shared_path("photos", "mowshon_test-image.jpg")
    pair = load_model(age, gender_model=gender)
    assert pair.config.name == "zhu_age_4conv+levi_hassner_gender" and "levi_hassner_gender" in pair.version_label
    assert pair.input_side == 256  # faces decoded finely enough for the gender network's 256 px, not 64
    assert pair.describe()["gender_model"]["file"] == gender.name and "path" not in pair.describe()["gender_model"]
    faces = Predictor(pair, detector=yunet_path).predict(photo)
    alone = OnnxAgeGender(gender).predict(faces.crops())
    assert len(faces) == 5 and [f.gender_confidence for f in faces] == pytest.approx(
        [max(p, 1 - p) for p in alone.female_prob], abs=1e-6)  # the gender network's own answer
    with pytest.raises(ModelError, match="as the age model of a pair it must predict age alone"):
        load_model(gender, gender_model=age)
    command = ["predict", str(photo), "--detector", str(yunet_path), "--json"]
    assert main([*command, "--model", str(age), "--gender-model", str(gender)]) == 0
    assert len(json.loads(capsys.readouterr().out)["faces"]) == 5
    for extra in ([], ["--accurate"], ["--output", str(tmp_path / "rows.parquet"), "--ray"]):  # before any work
        assert main([*command, "--gender-model", str(gender), *extra]) == 2
        assert "--gender-model pairs an age-only --model" in capsys.readouterr().err
    assert not (tmp_path / "rows.parquet").exists()


def test_a_cut_to_another_shot_starts_new_tracks(predictor: Predictor, tmp_path: Path) -> None:
    """After a cut, a face that stands where another stood is someone else: it once took over that track's age and
    gender (a man of about 59 went on as "49, male" for a woman of about 20)."""
    first = load_image(shared_path("photos", "dlib_2007_007763.jpg"))
    second = cv2.resize(load_image(shared_path("photos", "mowshon_test-image-2.jpg")), first.shape[1::-1])
    video = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, first.shape[1::-1])
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for image in (first, first, first, second, second):
        writer.write(image)
    writer.release()
    ids = [{t for t, _ in tracked} for _, _, tracked in predict_video(predictor, str(video))]
    assert ids[0] == ids[1] == ids[2] and ids[3] == ids[4] and not ids[2] & ids[3]


def test_a_video_without_frames_is_a_failed_input(tmp_path: Path, yunet_path: Path) -> None:
    """It opens, but holds no frame: once a silent exit 0 with no output at all."""
    video = _clip(tmp_path, frames=0)
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "predict", str(video), "--json",
                             "--detector", str(yunet_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "holds no frame" in result.stdout + result.stderr, result.stderr


def test_save_dir_on_a_video_writes_one_annotated_video(tmp_path: Path, yunet_path: Path) -> None:
    video = _clip(tmp_path, frames=6)
    out = tmp_path / "out"
    assert main(["predict", str(video), "--save-dir", str(out), "--detector", str(yunet_path), "--json"]) == 0
    assert [p.name for p in out.iterdir()] == ["clip_annotated.mp4"]
    capture = cv2.VideoCapture(str(out / "clip_annotated.mp4"))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = capture.read()
    capture.release()
    assert ok and count == 6 and frame.shape[:2] == (434, 634)  # the MJPG clip's writer kept an even height


def test_an_annotated_video_of_odd_sides_keeps_every_pixel(tmp_path: Path) -> None:
    """mp4v needs even sides: the encoder dropped an odd frame's last row and column; they are now padded."""
    from agegender.inference.video import AnnotatedVideo

    frame = np.zeros((75, 101, 3), np.uint8)
    frame[-1], frame[:, -1] = 255, 255  # a white last row and column
    out = AnnotatedVideo(str(tmp_path / "odd.mp4"), 10.0)
    for _ in range(3):
        out.write(frame)
    out.close()
    capture = cv2.VideoCapture(str(tmp_path / "odd.mp4"))
    ok, read = capture.read()
    capture.release()
    assert ok and read.shape[:2] == (76, 102)
    assert read[-2:, :90].mean() > 200 and read[:60, -2:].mean() > 200  # the white last row and column, and their pads
    assert read[:60, :90].mean() < 30


def test_a_save_dir_that_cannot_be_written_stops_photo_and_video_runs_alike(
        tmp_path: Path, yunet_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every input would fail the same way: the run stops with one message (a video's once failed the input only and
    went on)."""
    video, photo = _clip(tmp_path), shared_path("photos", "mowshon_test-image-2.jpg")
    out = tmp_path / "out"
    for name in ("clip_annotated.mp4", "mowshon_test-image-2_annotated.jpg"):
        (out / name).mkdir(parents=True)  # a folder where the file should go
    for source in (video, photo):
        assert main(["predict", str(source), str(video), "--save-dir", str(out), "--detector", str(yunet_path),
                     "--json"]) == 2
        err = capsys.readouterr().err
        assert "--save-dir: " in err and "failed" not in err, err


def test_a_photo_named_by_digits_is_a_file_not_a_webcam(tmp_path: Path, yunet_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "7").write_bytes(shared_path("photos", "smahesh29_man1.jpg").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "7", "--json", "--detector", str(yunet_path)]) == 0
    assert len(json.loads(capsys.readouterr().out)["faces"]) == 1


def test_predict_video_takes_a_path_checks_its_numbers_and_names_a_truncated_file(
        predictor: Predictor, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = _clip(tmp_path, frames=30)
    assert len(list(predict_video(predictor, video, every=10))) == 3  # a Path, not only a str
    for every, max_frames in ((0, None), (-1, None), (1, -1)):
        with pytest.raises(ValueError, match="every must be at least 1"):
            next(predict_video(predictor, video, every, max_frames))
    assert not caplog.records
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(ValueError, match=r"^empty video file \(0 bytes\): "):
        next(predict_video(predictor, tmp_path / "empty.mp4"))
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[:video.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="agegender.inference.video"):
        frames = len(list(predict_video(predictor, cut, every=5)))
    assert 0 < frames < 6
    (record,) = caplog.records
    assert record.getMessage().startswith(f"{cut}: the video ended after ")
    assert record.getMessage().endswith(" of the 30 frames its header announces (truncated or damaged?)")


def test_phone_and_camera_video_formats_in_a_folder_are_predicted(tmp_path: Path, yunet_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """.3gp (phones), .wmv, .flv, .mts/.m2ts (camcorders) were skipped as "not an image"."""
    image = load_image(shared_path("photos", "smahesh29_man1.jpg"))
    for suffix, codec in ((".3gp", "mp4v"), (".wmv", "WMV2"), (".flv", "FLV1"), (".mts", "MPEG"), (".m2ts", "MPEG")):
        writer = cv2.VideoWriter(str(tmp_path / f"clip{suffix}"), cv2.VideoWriter_fourcc(*codec), 10,
                                 image.shape[1::-1])
        if not writer.isOpened():
            pytest.skip(f"this OpenCV build cannot write {suffix}")
        for _ in range(2):
            writer.write(image)
        writer.release()
    assert main(["predict", str(tmp_path), "--json", "--detector", str(yunet_path)]) == 0
    frames = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted({Path(f["file"]).suffix for f in frames}) == [".3gp", ".flv", ".m2ts", ".mts", ".wmv"]
    assert len(frames) == 10 and all(len(f["faces"]) == 1 for f in frames)


def test_a_closed_pipe_during_a_video_ends_quietly(tmp_path: Path, yunet_path: Path) -> None:
    video = _clip(tmp_path, frames=30)
    proc = subprocess.Popen([sys.executable, "-m", "agegender.cli", "predict", str(video), "--json",
                             "--detector", str(yunet_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 1 and err == "", err
