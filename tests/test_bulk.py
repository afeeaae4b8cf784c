"""The bulk path (`agegender predict SRC --output FILE`): every input gets its rows, a kill -9 loses at most the
photos in flight, --resume neither repeats nor drops an input, --shard splits the inputs, workers agree."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agegender.cli import main
from agegender.inference import bulk
from agegender.inference.collection import collect, collect_listed, in_shard
from agegender.inference.predictor import Predictor
from agegender.inference.results import ROW_COLUMNS

pyarrow = pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow (pip install 'agegender[bulk]')")
import pyarrow.parquet as pq  # noqa: E402


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))




@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_every_input_gets_its_rows(collection_dir: Path, tmp_path: Path, yunet_path: Path, suffix: str,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / f"rows{suffix}"
    code = main(["predict", str(collection_dir), str(tmp_path / "missing.jpg"), "--output", str(out),
                 "--detector", str(yunet_path)])
    assert code == 1  # errors happened, and were written
    err = capsys.readouterr().err
    assert "skipped 1 file(s), not an image (.txt)" in err and "9 input(s)" in err
    rows = read_rows(out)
    assert list(rows[0]) == list(ROW_COLUMNS)
    errors = {Path(r["file"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"truncated.jpg", "phone.heic", "missing.jpg"}
    assert "HEIC images cannot be decoded" in errors["phone.heic"] and "truncated" in errors["truncated.jpg"]
    faces = Counter(Path(r["file"]).name for r in rows if not r["error"])
    assert faces["kid_no_ending"] == 1 and faces["dlib_2007_007763.jpg"] == 7

    # the same rows as the Predictor's, photo by photo
    predictor = Predictor(detector=str(yunet_path))
    photo = collection_dir / "mowshon_test-image-2.jpg"
    expected = predictor.predict(photo).rows()
    got = [r for r in rows if r["file"] == str(photo)]
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert float(a["age"]) == pytest.approx(b["age"], abs=0.051) and a["gender"] == b["gender"]
        assert float(a["x"]) == pytest.approx(b["x"], abs=0.051)


def test_an_existing_output_is_never_overwritten(collection_dir: Path, tmp_path: Path, yunet_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_text('{"file": "x"}\n')
    assert main(["predict", str(collection_dir), "--output", str(out), "--detector", str(yunet_path)]) == 2
    assert "pass --resume" in capsys.readouterr().err and out.read_text() == '{"file": "x"}\n'
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--output", str(tmp_path / "e.parquet"), "--detector", str(yunet_path)]) == 1
    assert "no input" in capsys.readouterr().err
    assert not (tmp_path / "e.parquet").exists()  # the same command runs once the path is fixed


def test_a_shard_without_files_is_not_an_error_and_a_file_named_twice_is_one_input(
        many_photos: Path, tmp_path: Path, yunet_path: Path, capsys: pytest.CaptureFixture) -> None:
    photo = str(sorted(many_photos.glob("*.jpg"))[0])
    outs = [tmp_path / f"shard{i}.jsonl" for i in range(2)]
    for i, out in enumerate(outs):  # one input, two shards: one of them holds nothing
        assert main(["predict", photo, photo, "--output", str(out), "--shard", f"{i}/2",
                     "--detector", str(yunet_path)]) == 0
    rows = [r for out in outs for r in read_rows(out)]
    assert [r["file"] for r in rows] == [photo] * 7 and "none of the 1 input(s) is in it" in capsys.readouterr().err


def test_links_to_folders_read_already_are_skipped_not_failed(many_photos: Path, tmp_path: Path) -> None:
    (tmp_path / "lib" / "2023").mkdir(parents=True)
    shutil.copy(sorted(many_photos.glob("*.jpg"))[0], tmp_path / "lib" / "2023" / "x.jpg")
    (tmp_path / "lib" / "favourites").symlink_to("2023")  # a second way to the same folder
    (tmp_path / "lib" / "2023" / "up").symlink_to("..")  # a loop
    (tmp_path / "lib" / "self").symlink_to("self")  # a link that resolves to nothing: an error
    found = collect([tmp_path / "lib"])
    assert found.files == [str(tmp_path / "lib" / "2023" / "x.jpg")]
    assert [p for p, _ in found.errors] == [str(tmp_path / "lib" / "self")]
    assert sorted(found.skipped["a link to a folder already read"]) == [
        str(tmp_path / "lib" / "2023" / "up"), str(tmp_path / "lib" / "favourites")]


def test_shards_are_disjoint_and_cover_the_inputs(collection_dir: Path, tmp_path: Path) -> None:
    collection = collect([collection_dir])
    files = collection.files
    parts = [collection.part((i, 3)).files for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(files) and not set(parts[0]) & set(parts[1])
    # the files skipped are shared out too: three shards' summaries once each counted all of them
    for i in range(12):
        (tmp_path / f"notes{i}.txt").write_text("not a photo")
    listed = collect([tmp_path])
    shares = [listed.part((i, 3)).skipped_counts() for i in range(3)]
    assert sum(shares, Counter()) == listed.skipped_counts() == Counter({"not an image (.txt)": 12})
    assert sum(1 for share in shares if share) >= 2  # shared out, not all given to each (1 in 10^5 fails by chance)


def test_a_list_is_shared_out_by_its_lines_before_any_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --files-from and --shard, N machines each read (stat) a N-th of the lines, not the whole list; the
    parts are disjoint and together the unsharded collection, with folders, nested folders, files also named on
    their own line, missing paths and skipped files among the lines."""
    root = tmp_path / "archive"
    for year in range(6):
        for month in range(3):
            folder = root / str(2018 + year) / f"{month:02d}"
            folder.mkdir(parents=True)
            for i in range(4):
                (folder / f"img{i}.jpg").write_bytes(b"not decoded here")
            (folder / "notes.txt").write_text("skipped by type")
    lines = [str(root / "2018"), str(root / "2018" / "01"), str(root / "2019" / "00" / "img1.jpg"), str(root / "2019"),
             *(str(f) for f in sorted((root / "2020").rglob("*.jpg"))), str(root / "2021") + "/", "./missing.jpg",
             str(root / "2022" / "00" / "img0.jpg"), str(root / "2022" / "00" / "img0.jpg")]  # one line twice
    whole = collect(lines)
    stats: set[str] = set()
    real_stat = Path.stat

    def counted(self: Path, **kwargs: bool) -> os.stat_result:
        stats.add(str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", counted)
    named = {str(Path(line.rstrip("/"))) for line in lines}
    parts = []
    for i in range(3):
        stats.clear()
        parts.append(collect_listed(lines, (i, 3)))
        owned = {line for line in named if in_shard(line, (i, 3))}
        below = {line for line in named if any(line.startswith(folder + "/") for folder in owned)}
        assert owned <= stats & named <= owned | below  # its own lines read, no other (but a folder's insides)
    files = [f for part in parts for f in part.files]
    assert sorted(files) == sorted(whole.files) and len(files) == len(set(files))  # disjoint, all covered
    assert sorted(e for part in parts for e in part.errors) == sorted(whole.errors)
    assert sum((part.skipped_counts() for part in parts), Counter()) == whole.skipped_counts()
    assert whole.skipped_counts() == Counter({"not an image (.txt)": 9})  # 2018/01's once, though named twice
    assert sum(1 for part in parts if part.files) == 3  # the lines were shared out, not given to one shard
    assert collect_listed(lines, None).files == whole.files


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory: pytest.TempPathFactory, photos_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("many")
    photos = sorted(photos_dir.glob("*.jpg"))
    for i in range(60):
        shutil.copy(photos[i % len(photos)], root / f"photo_{i:03d}.jpg")
    return root


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_kill_9_then_resume_neither_repeats_nor_drops_an_input(many_photos: Path, tmp_path: Path,
                                                               yunet_path: Path, suffix: str) -> None:
    out = tmp_path / f"rows{suffix}"
    command = [sys.executable, "-m", "agegender.cli", "predict", str(many_photos), "--output", str(out),
               "--detector", str(yunet_path), "--threads", "1", "--flush-seconds", "0.2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = out.with_name(out.name + ".parts") if suffix == ".parquet" else out
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # wait until some rows are durable
        if suffix == ".parquet" and written.is_dir() and any(written.glob("part-*.parquet")):
            break
        if suffix == ".jsonl" and written.is_file() and written.stat().st_size > 2000:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed: give it more photos"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if suffix == ".jsonl":  # a line cut mid-write must not break the resume
        with open(out, "a") as handle:
            handle.write('{"file": "half a li')
    partial = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert partial.returncode == 0, partial.stderr
    assert "already in the output (resumed)" in partial.stderr
    rows = read_rows(out)
    per_file = Counter(r["file"] for r in rows)
    assert sorted(per_file) == sorted(str(p) for p in many_photos.glob("*.jpg"))
    faces = {p.name: n for p, n in ((Path(f), n) for f, n in per_file.items())}
    assert faces["photo_000.jpg"] == 7 and faces["photo_005.jpg"] == 7  # dlib photo: 7 faces, each once
    pairs = [(r["file"], r["face"]) for r in rows]
    assert len(pairs) == len(set(pairs))
    assert not out.with_name(out.name + ".parts").exists()


def linked_photos(many_photos: Path, folder: Path, n: int = 240) -> tuple[Path, list[Path]]:
    """``folder`` of ``n`` hard links ``p_000.jpg`` ... cycling through ``many_photos`` (a run long enough to stop
    in the middle), and those sources."""
    folder.mkdir()
    sources = sorted(many_photos.glob("*.jpg"))
    for i in range(n):
        os.link(sources[i % len(sources)], folder / f"p_{i:03d}.jpg")
    return folder, sources


def test_ctrl_c_with_workers_stops_soon_keeps_the_rows_and_resumes(many_photos: Path, tmp_path: Path,
                                                                    yunet_path: Path) -> None:
    """Ctrl-C reaches every process of the terminal's group; the run must end (it once waited for ever on its pool
    of workers), write whole photos only, and resume to every input once."""
    folder, sources = linked_photos(many_photos, tmp_path / "photos")
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, "-m", "agegender.cli", "predict", str(folder), "--output", str(out), "--workers", "2",
               "--detector", str(yunet_path), "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not (out.is_file() and out.stat().st_size > 2000):
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before Ctrl-C: give it more photos"
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the run did not end within 60 s of Ctrl-C")
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert 0 < len({r["file"] for r in read_rows(out)}) < 240
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_rows(out)
    per_file = Counter(r["file"] for r in rows)
    assert sorted(per_file) == sorted(str(p) for p in folder.glob("*.jpg"))
    pairs = [(r["file"], r["face"]) for r in rows]
    assert len(pairs) == len(set(pairs))
    by_source: dict[str, set[int]] = {}  # every link of one photo has its rows, whole, before Ctrl-C or after
    for i in range(240):
        by_source.setdefault(sources[i % len(sources)].name, set()).add(per_file[str(folder / f"p_{i:03d}.jpg")])
    assert all(len(counts) == 1 for counts in by_source.values()), by_source


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_a_file_name_that_is_not_utf8_gets_its_rows_and_resumes(many_photos: Path, tmp_path: Path,
                                                                yunet_path: Path, suffix: str) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = sorted(many_photos.glob("*.jpg"))[0]
    shutil.copy(photo, os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))  # a Latin-1 name
    shutil.copy(photo, folder / "zz.jpg")
    out = tmp_path / f"rows{suffix}"
    command = ["predict", str(folder), "--output", str(out), "--detector", str(yunet_path)]
    assert main(command) == 0
    files = Counter(r["file"] for r in read_rows(out))
    assert files == {str(folder / "caf\\xe9.jpg"): 7, str(folder / "zz.jpg"): 7}  # the byte written as \xNN
    assert main([*command, "--resume"]) == 0
    assert Counter(r["file"] for r in read_rows(out)) == files


def worker_pids(pid: int) -> list[int]:
    """The multiprocessing workers among ``pid``'s children (not its resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes() and
            b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the workers from /proc (Linux)")
def test_a_worker_killed_mid_run_ends_it_with_a_message_and_resume_completes(many_photos: Path, tmp_path: Path,
                                                                            yunet_path: Path) -> None:
    """A worker killed (as the out-of-memory killer would) once left the pool waiting for ever."""
    folder, _ = linked_photos(many_photos, tmp_path / "photos")
    out = tmp_path / "rows.parquet"
    command = [sys.executable, "-m", "agegender.cli", "predict", str(folder), "--output", str(out), "--workers", "2",
               "--detector", str(yunet_path), "--threads", "1", "--flush-seconds", "0.2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not (
            parts.is_dir() and any(parts.glob("part-*.parquet"))):
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before a worker could be killed: give it more photos"
    os.kill(worker_pids(process.pid)[0], signal.SIGKILL)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the run did not end within 60 s of its worker's death")
    assert process.returncode == 1 and "a worker process died" in stderr and "--resume" in stderr, stderr
    assert out.is_file() and not parts.exists()  # what was written is a finished file
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_rows(out)
    assert sorted({r["file"] for r in rows}) == sorted(str(p) for p in folder.glob("*.jpg"))
    assert len({(r["file"], r["face"]) for r in rows}) == len(rows)


def test_a_run_stopped_by_an_error_keeps_the_parquet_rows_it_accepted(many_photos: Path, tmp_path: Path,
                                                                       yunet_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows the sink had accepted but not yet written as a part file were lost when anything but a dead worker
    stopped the run (a second Ctrl-C, an error)."""
    from agegender.inference.results import ROW_TYPES
    from agegender.inference.sinks import open_sink

    predictor = Predictor(detector=str(yunet_path))
    finish, calls = predictor.finish, []

    def failing(batch: list) -> list:
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("stopped")
        return finish(batch)

    monkeypatch.setattr(predictor, "finish", failing)
    out = tmp_path / "rows.parquet"
    with pytest.raises(RuntimeError, match="stopped"):
        bulk.run_bulk(predictor, collect([many_photos]), open_sink(out, ROW_TYPES), progress=False)
    kept = open_sink(out, ROW_TYPES, resume=True)
    assert len(kept.done) == calls[0] + calls[1] > 0  # the two batches finished before the error
    kept.close()


def test_two_workers_give_the_rows_of_one(many_photos: Path, tmp_path: Path, yunet_path: Path) -> None:
    files = sorted(many_photos.glob("*.jpg"))[:10]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    for out, workers in ((one, "1"), (two, "2")):
        assert main(["predict", *map(str, files), "--output", str(out), "--workers", workers,
                     "--detector", str(yunet_path)]) == 0
    assert read_rows(one) == read_rows(two)


def test_max_pixels_reaches_single_photos_and_the_workers(many_photos: Path, tmp_path: Path, yunet_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A camera of more than 50 MP needs a higher limit: ``predict`` had no --max-pixels (``serve`` did), and the
    bulk workers always used the default."""
    files = sorted(many_photos.glob("*.jpg"))[:3]
    small = ["--max-pixels", "1000", "--detector", str(yunet_path)]
    assert main(["predict", str(files[0]), *small]) == 1
    assert "image too large" in capsys.readouterr().err
    out = tmp_path / "rows.jsonl"
    assert main(["predict", *map(str, files), "--output", str(out), "--workers", "2", *small]) == 1
    rows = read_rows(out)
    assert len(rows) == 3 and all("image too large" in row["error"] for row in rows), rows
    assert main(["predict", str(files[0]), "--max-pixels", "5000000", "--detector", str(yunet_path)]) == 0


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_retry_errors_predicts_failed_inputs_again_without_duplicates(
        many_photos: Path, tmp_path: Path, yunet_path: Path, suffix: str, capsys: pytest.CaptureFixture) -> None:
    """A file that failed (cut short here), repaired later: --resume kept its error row, and nothing could retry
    it short of a new output."""
    folder = tmp_path / "photos"
    folder.mkdir()
    good = sorted(many_photos.glob("*.jpg"))[:2]
    for photo in good:
        shutil.copy(photo, folder / photo.name)
    broken = folder / "later.jpg"
    broken.write_bytes(good[0].read_bytes()[:2000])
    out = tmp_path / f"rows{suffix}"
    run = ["predict", str(folder), "--output", str(out), "--detector", str(yunet_path)]
    assert main(run) == 1
    before = read_rows(out)
    assert [r["file"] for r in before if r["error"]] == [str(broken)]
    shutil.copy(good[1], broken)  # repaired
    assert main([*run, "--retry-errors"]) == 2  # goes with --resume
    assert main([*run, "--resume"]) == 0 and read_rows(out) == before  # done, error row and all
    one = [a if a != str(folder) else str(folder / good[0].name) for a in run]  # the failed input not among them
    assert main([*one, "--resume", "--retry-errors"]) == 0 and read_rows(out) == before  # its error row stays
    assert main([*run, "--resume", "--retry-errors"]) == 0
    assert "retrying 1 input(s)" in capsys.readouterr().err
    after = read_rows(out)
    assert not any(r["error"] for r in after)
    assert [r for r in after if r["file"] != str(broken)] == [r for r in before if r["file"] != str(broken)]
    repaired = [r for r in after if r["file"] == str(broken)]
    assert [r["age"] for r in repaired] == [r["age"] for r in after if r["file"] == str(folder / good[1].name)]
    assert main([*run, "--resume", "--retry-errors"]) == 0 and read_rows(out) == after  # nothing left to retry


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_retry_errors_clears_a_folder_that_could_not_be_read_and_keeps_the_outputs_permissions(
        many_photos: Path, tmp_path: Path, yunet_path: Path, suffix: str) -> None:
    """An unmounted folder's error row stayed after it was mounted and its photos predicted; the rewrite made a
    private output readable by everyone."""
    mount = tmp_path / "mnt"
    out = tmp_path / f"rows{suffix}"
    run = ["predict", str(mount), "--output", str(out), "--detector", str(yunet_path)]
    assert main(run) == 1
    out.chmod(0o600)
    mount.mkdir()
    shutil.copy(sorted(many_photos.glob("*.jpg"))[0], mount / "a.jpg")
    assert main([*run, "--resume", "--retry-errors"]) == 0
    rows = read_rows(out)
    assert {r["file"] for r in rows} == {str(mount / "a.jpg")} and not any(r["error"] for r in rows)
    assert out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_names_with_a_carriage_return_or_undecodable_bytes_keep_one_row_each(
        many_photos: Path, tmp_path: Path, yunet_path: Path, suffix: str) -> None:
    """A bad file named with undecodable bytes stopped a CSV or Parquet run (its name in the error message could
    not be encoded), and a name holding "\r" was not quoted in CSV (read back as two rows, predicted again on
    every --resume)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sorted(many_photos.glob("*.jpg"))[0], folder / "cr\rret.jpg")
    (folder / os.fsdecode(b"bad\xe9.jpg")).write_bytes(b"not a jpeg")
    out = tmp_path / f"rows{suffix}"
    run = ["predict", str(folder), "--output", str(out), "--detector", str(yunet_path)]
    assert main(run) == 1
    rows = read_rows(out)
    assert {r["file"] for r in rows if not r["error"]} == {str(folder / "cr\rret.jpg")}
    assert [r["file"] for r in rows if r["error"]] == [str(folder / "bad\\xe9.jpg")]
    assert main([*run, "--resume"]) == 0 and read_rows(out) == rows  # nothing predicted again


def test_auto_workers_start_once_the_photos_pay_for_them(many_photos: Path, tmp_path: Path, yunet_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    files = [str(p) for p in sorted(many_photos.glob("*.jpg"))[:6]]
    total = sum(Path(f).stat().st_size for f in files)
    monkeypatch.setattr(bulk, "cores", lambda: 2)
    assert bulk.auto_workers(files, limit=total) == 2
    assert bulk.auto_workers(files, limit=total + 1) == 1
    assert bulk.auto_workers([str(tmp_path / "missing.jpg"), *files], limit=total) == 2  # an error row later
    monkeypatch.setattr(bulk, "cores", lambda: 1)
    assert bulk.auto_workers(files, limit=1) == 1

    monkeypatch.setattr(bulk, "cores", lambda: 2)
    outputs = {}
    for limit in (total, total + 1):  # the CLI's default: auto
        monkeypatch.setattr(bulk, "AUTO_WORKERS_BYTES", limit)
        outputs[limit] = tmp_path / f"{limit}.jsonl"
        assert main(["predict", *files, "--output", str(outputs[limit]), "--detector", str(yunet_path)]) == 0
        said = "; 2 worker processes" in capsys.readouterr().err
        assert said == (limit == total)
    assert read_rows(outputs[total]) == read_rows(outputs[total + 1])
    assert main(["predict", *files, "--workers", "auto"]) == 2  # a bulk option without --output
    assert "--workers" in capsys.readouterr().err
    for bad, said in (("0", "must be >= 1, got 0"), ("two", "a number of processes (at least 1) or auto")):
        with pytest.raises(SystemExit):
            main(["predict", *files, "--output", str(tmp_path / "x.jsonl"), "--workers", bad])
        assert said in capsys.readouterr().err


@pytest.mark.parametrize(("name", "content"), [
    ("rows.csv", "name,age\nx,3\n"),  # another program's CSV
    ("rows.csv", ",".join(ROW_COLUMNS[:17]) + "\n"),  # `agegender predict --csv`'s shorter columns
    ("rows.jsonl", '{"file": "a.jpg"}\nnot json\n'),
    ("rows.parquet", None),  # a Parquet file of other columns
])
def test_resume_refuses_an_output_it_did_not_write(collection_dir: Path, tmp_path: Path, yunet_path: Path,
                                                   capsys: pytest.CaptureFixture, name: str,
                                                   content: str | None) -> None:
    out = tmp_path / name
    if content is None:
        pq.write_table(pyarrow.table({"file": ["a.jpg"], "age": [3.0]}), out)
    else:
        out.write_text(content)
    before = out.read_bytes()
    assert main(["predict", str(collection_dir), "--output", str(out), "--resume", "--detector",
                 str(yunet_path)]) == 2
    assert f"cannot resume {out}" in capsys.readouterr().err
    assert out.read_bytes() == before and not out.with_name(out.name + ".parts").exists()
    folder = tmp_path / "a_folder.csv"
    folder.mkdir()
    assert main(["predict", str(collection_dir), "--output", str(folder), "--resume", "--detector",
                 str(yunet_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_resume_refuses_an_output_of_another_model(collection_dir: Path, tmp_path: Path, yunet_path: Path,
                                                   capsys: pytest.CaptureFixture, suffix: str) -> None:
    photo = collection_dir / "mowshon_test-image-2.jpg"
    out = tmp_path / f"rows{suffix}"
    assert main(["predict", str(photo), "--output", str(out), "--model", "flagship", "--detector",
                 str(yunet_path)]) == 0
    before = out.read_bytes()
    code = main(["predict", str(collection_dir), "--output", str(out), "--resume", "--detector", str(yunet_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot resume {out}: its rows were made by flagship.onnx" in err
    assert "this run's model is flagship_int8.onnx" in err
    assert out.read_bytes() == before and not out.with_name(out.name + ".parts").exists()


def test_the_sources_done_are_digests_found_by_the_file_systems_name() -> None:
    """A resume of millions holds 16 bytes a source done: ``in`` and ``missing`` take names as the file system
    gives them (undecodable bytes included), each source counts once, and a retried one can be taken out."""
    from agegender.inference.sinks import Sources, stored_name

    odd = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")
    done = Sources()
    for stored in ["a.jpg", stored_name(odd), "a.jpg", "b/c.jpg"]:
        done.add(stored)
    assert len(done) == 3 and odd in done and "b/c.jpg" in done and "c.jpg" not in done and 3 not in done
    assert done.missing(["x.jpg", "a.jpg", odd, "b/c.jpg/", "y.jpg"]) == ["x.jpg", "b/c.jpg/", "y.jpg"]
    done.discard(["a.jpg"])
    assert "a.jpg" not in done and odd in done and len(done) == 2
    assert Sources().missing(["a.jpg"]) == ["a.jpg"] and done.missing([]) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_resume_knows_which_inputs_only_failed_whatever_the_order_of_their_rows(tmp_path: Path,
                                                                                 suffix: str) -> None:
    """An input is failed (for --retry-errors) when every one of its rows is an error row, whichever comes first."""
    from agegender.inference.results import ROW_TYPES
    from agegender.inference.sinks import open_sink

    def ok(file: str) -> dict:
        return {"file": file, "face": 0, "model_version": "m.onnx (agegender 1)"}

    def error(file: str) -> dict:
        return {"file": file, "error": "corrupt"}

    out = tmp_path / f"rows{suffix}"
    with open_sink(out, ROW_TYPES) as sink:
        for rows in ([error("a")], [ok("b")], [error("c"), ok("c")], [ok("d"), error("d")], [error("e"), error("e")],
                     [error("f")], [ok("f")]):
            sink.write(rows)
    with open_sink(out, ROW_TYPES, resume=True) as sink:
        assert len(sink.done) == 6 and sink.done.missing([*"abcdefg"]) == ["g"] and sink.failed == {"a", "e"}


def test_a_sink_takes_no_rows_of_a_second_model(tmp_path: Path) -> None:
    """The rule holds for every writer of a sink (the Ray path's too), not only for the CLI's check up front."""
    from agegender.inference.results import ROW_TYPES
    from agegender.inference.sinks import open_sink

    out = tmp_path / "rows.jsonl"
    row = {"file": "a.jpg", "face": 0, "model_version": "a.onnx (agegender 1)"}
    with open_sink(out, ROW_TYPES) as sink:
        sink.write([row, {"file": "b.jpg", "error": "corrupt"}])
    with open_sink(out, ROW_TYPES, resume=True) as sink:
        assert sink.versions == {"a.onnx (agegender 1)"} and "b.jpg" in sink.done
        sink.write([{**row, "file": "c.jpg"}])
        with pytest.raises(ValueError, match=r"made by a.onnx \(agegender 1\), this run's model is b.onnx"):
            sink.write([{**row, "file": "d.jpg", "model_version": "b.onnx (agegender 1)"}])
    assert [r["file"] for r in read_rows(out)] == ["a.jpg", "b.jpg", "c.jpg"]
    for name in ("new.csv", "new.jsonl", "new.parquet"):  # abandoned before any row: nothing left behind
        open_sink(tmp_path / name, ROW_TYPES).abandon()
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.parts").exists(), name


def test_a_video_named_with_output_gets_an_error_row_that_says_so(tmp_path: Path, yunet_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    out = tmp_path / "rows.jsonl"
    assert main(["predict", str(video), "--output", str(out), "--detector", str(yunet_path)]) == 1
    (row,) = read_rows(out)
    assert row["file"] == str(video) and "a video; --output takes photos" in row["error"]


def test_each_failed_input_is_named_on_stderr(collection_dir: Path, tmp_path: Path, yunet_path: Path) -> None:
    """As without --output (the README's "a bad file gets one message on stderr"); the table has the reason too."""
    out = tmp_path / "rows.jsonl"
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "predict", str(collection_dir), "--output",
                             str(out), "--detector", str(yunet_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    failed = [r for r in read_rows(out) if r["error"]]
    assert failed and all(r["error"] in result.stderr.splitlines() for r in failed), result.stderr


def test_a_parquet_output_is_merged_and_retried_a_row_group_at_a_time(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A run over millions of photos leaves thousands of parts: closing streams them into row groups of
    ``ROW_GROUP_ROWS`` rather than holding the whole output in memory, and a resume and a retry keep every row,
    in order. (A small row group here so that a few parts span several.)"""
    from agegender.inference import sinks
    from agegender.inference.results import ROW_TYPES

    monkeypatch.setattr(sinks, "ROW_GROUP_ROWS", 5)
    out = tmp_path / "rows.parquet"
    names = [f"img{i:02d}.jpg" for i in range(23)]
    sink = sinks._ParquetSink(out, ROW_TYPES, flush_rows=4)
    for name in names[:13]:
        sink.write([{"file": name, "face": 0, "age": 30.0}])
    sink.close()
    assert [g.num_rows for g in (pq.ParquetFile(out).metadata.row_group(i) for i in range(3))] == [5, 5, 3]
    sink = sinks._ParquetSink(out, ROW_TYPES, flush_rows=4)  # resumed: the output and new parts are merged
    assert len(sink.done) == 13 and sink.done.missing(names) == names[13:]
    for name in names[13:]:
        sink.write([{"file": name, "error": "corrupt"} if name == "img20.jpg" else {"file": name, "face": 0}])
    sink.close()
    metadata = pq.ParquetFile(out).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [5, 5, 5, 5, 3]
    assert [r["file"] for r in read_rows(out)] == names
    sink = sinks._ParquetSink(out, ROW_TYPES)
    assert sink.retry_failed([str(tmp_path / "elsewhere.jpg"), "img20.jpg"]) == ["img20.jpg"]
    sink.close()
    assert [r["file"] for r in read_rows(out)] == [n for n in names if n != "img20.jpg"]
    assert read_rows(out)[0]["age"] == 30.0 and pq.ParquetFile(out).metadata.num_row_groups == 5
    stale = tmp_path / ".rows.parquet.merging.tmp"  # a merge a crash cut: removed when the output is opened again
    stale.write_bytes(b"half a merge")
    sinks._ParquetSink(out, ROW_TYPES).close()
    assert not stale.exists() and len(read_rows(out)) == 22


def test_a_flood_of_bad_files_names_the_first_of_each_kind_and_counts_the_rest(
        tmp_path: Path, yunet_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(bulk.NAMED_ERRORS + 5):
        (folder / f"IMG_{i:03d}.jpg").touch()
    out = tmp_path / "rows.jsonl"
    with caplog.at_level("WARNING", logger="agegender"):
        assert main(["predict", str(folder), "--output", str(out), "--workers", "1", "--detector",
                     str(yunet_path)]) == 1
    named = [r.getMessage() for r in caplog.records if "IMG_" in r.getMessage()]
    assert len(named) == bulk.NAMED_ERRORS and "IMG_000.jpg" in named[0]
    assert sum("counted in the summary, not named here" in r.getMessage() for r in caplog.records) == 1
    assert len(read_rows(out)) == bulk.NAMED_ERRORS + 5  # every one has its error row
    assert f"errors, empty: {bulk.NAMED_ERRORS + 5}" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_resume_cuts_a_long_partial_last_line_and_keeps_every_whole_row(tmp_path: Path, suffix: str) -> None:
    """The last line a crash cut is found from the end of the file (not by reading it all), also when it is longer
    than the block read back, or the file's only line."""
    from agegender.inference.results import ROW_TYPES
    from agegender.inference.sinks import open_sink

    out = tmp_path / f"rows{suffix}"
    with open_sink(out, ROW_TYPES) as sink:
        sink.write([{"file": f"img{i}.jpg", "face": 0} for i in range(3)])
    whole = out.read_bytes()
    for partial in (b'{"file": "' + b"x" * 200_000, b"y"):
        out.write_bytes(whole + partial)
        with open_sink(out, ROW_TYPES, resume=True) as sink:
            assert len(sink.done) == 3 and all(f"img{i}.jpg" in sink.done for i in range(3))
        assert out.read_bytes() == whole
    out.write_bytes(b"no newline at all")
    open_sink(out, ROW_TYPES, resume=True).close()
    assert out.read_bytes() == (b"" if suffix == ".jsonl" else whole.split(b"\r\n")[0] + b"\r\n")


def test_files_from_a_list_gives_the_rows_of_the_same_paths_named(collection_dir: Path, tmp_path: Path,
                                                                  yunet_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`--files-from LIST` (a database's export, a `find` run): files and folders, one per line, blank lines and
    CRLF endings tolerated, a missing path an error row; the same rows as naming them; '-' reads standard input."""
    import io

    photo = collection_dir / "dlib_2007_007763.jpg"
    monkeypatch.chdir(collection_dir)
    listing = tmp_path / "list.txt"
    listing.write_bytes(f"{photo}\r\n\nsub\nmissing.jpg\n".encode())
    by_list, by_name = tmp_path / "list.jsonl", tmp_path / "named.jsonl"
    detector = ["--detector", str(yunet_path), "--workers", "1"]
    assert main(["predict", "--files-from", str(listing), "--output", str(by_list), *detector]) == 1
    assert main(["predict", str(photo), "sub", "missing.jpg", "--output", str(by_name), *detector]) == 1
    rows = read_rows(by_list)
    assert rows == read_rows(by_name)
    assert {r["file"] for r in rows} == {str(photo), "sub/kid_no_ending", "sub/truncated.jpg", "missing.jpg"}
    assert [r["error"] for r in rows if r["file"] == "missing.jpg"] == ["missing.jpg: no such file or folder"]
    piped = tmp_path / "piped.jsonl"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(listing.read_bytes())))
    assert main(["predict", str(photo), "--files-from", "-", "--output", str(piped), *detector]) == 1
    assert read_rows(piped) == rows  # the photo named and listed is one input
    capsys.readouterr()
    assert main(["predict", "--output", str(tmp_path / "none.jsonl")]) == 2
    assert "give one or more PATHs, or --files-from LIST" in capsys.readouterr().err
    assert main(["predict", "--files-from", str(tmp_path / "absent.txt"), "--output", str(tmp_path / "n.jsonl")]) == 2
    assert "--files-from" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n")
    assert main(["predict", "--files-from", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "e.jsonl")]) == 1
    assert "names no path" in capsys.readouterr().err and not (tmp_path / "e.jsonl").exists()
    shards = [tmp_path / f"shard{i}.jsonl" for i in range(2)]  # the lines shared out: the same rows between them
    assert {main(["predict", "--files-from", str(listing), "--output", str(out), "--shard", f"{i}/2", *detector])
            for i, out in enumerate(shards)} <= {0, 1}
    assert sorted(json.dumps(r, sort_keys=True) for out in shards for r in read_rows(out)) == sorted(
        json.dumps(r, sort_keys=True) for r in rows)
