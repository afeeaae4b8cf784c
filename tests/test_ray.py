"""The bulk path on Ray (`agegender predict SRC --ray --output FILE.parquet`, `agegender.inference.ray_pipeline`):
on a real local Ray, the same rows and the same Parquet schema as the local bulk path and the Predictor, error rows
for what cannot be read, --shard and --resume, URIs, and one-line errors."""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agegender.cli import main
from agegender.inference.collection import collect
from agegender.inference.predictor import Predictor
from agegender.inference.results import ROW_COLUMNS, ROW_TYPES

ray = pytest.importorskip("ray", reason="the Ray path needs the `ray` extra: pip install 'agegender[ray]'")
pytest.importorskip("ray.data", reason="the Ray path needs Ray Data: pip install 'agegender[ray]'")
pyarrow = pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow: pip install 'agegender[ray]'")
import pyarrow.parquet as pq  # noqa: E402

from agegender.inference import ray_pipeline  # noqa: E402

# Ray Data's own settings warn about their deprecated names when it copies them: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def local_ray(yunet_path: Path) -> Any:
    """A private local Ray on 2 CPUs for this module; its workers find YuNet offline through AGEGENDER_YUNET."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AGEGENDER_YUNET", str(yunet_path))
    mp.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
    mp.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    mp.undo()




@pytest.fixture(scope="module")
def sources(collection_dir: Path) -> list[str]:
    """The folder and a path that does not exist (an error row)."""
    return [str(collection_dir), str(collection_dir.parent / "missing.jpg")]


@pytest.fixture(scope="module")
def bulk_output(tmp_path_factory: pytest.TempPathFactory, sources: list[str], yunet_path: Path) -> Path:
    """What the local bulk path writes for the sources."""
    out = tmp_path_factory.mktemp("bulk") / "bulk.parquet"
    assert main(["predict", *sources, "--output", str(out), "--detector", str(yunet_path)]) == 1
    return out


@pytest.fixture(scope="module")
def ray_rows(local_ray: Any, collection_dir: Path, yunet_path: Path) -> Any:
    """The folder through the Python API, materialised (with error kinds)."""
    ds = ray_pipeline.read_images(collection_dir)
    return ray_pipeline.predict_dataset(ds, detector=yunet_path, error_kinds=True).materialize()


def rows_of(table_or_path: Any) -> list[dict[str, Any]]:
    table = table_or_path if isinstance(table_or_path, pyarrow.Table) else pq.read_table(table_or_path)
    key = lambda r: (r["file"], -1 if r["face"] is None else r["face"])  # noqa: E731
    return sorted(table.to_pylist(), key=key)


def table_of(ds: Any) -> Any:
    return pyarrow.concat_tables(list(ds.iter_batches(batch_size=None, batch_format="pyarrow")))


def assert_same_rows(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Row by row, column by column: text and integers exactly, numbers to their rounding (the runtimes' thread
    counts differ)."""
    assert [r["file"] for r in got] == [r["file"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        for column in ROW_COLUMNS:
            if ROW_TYPES[column] == "float" and a[column] is not None and b[column] is not None:
                assert a[column] == pytest.approx(b[column], abs=0.051), (a["file"], column)
            else:
                assert a[column] == b[column], (a["file"], column)


def test_rows_are_the_bulk_paths_and_the_predictors(ray_rows: Any, bulk_output: Path, collection_dir: Path,
                                                     yunet_path: Path) -> None:
    table = table_of(ray_rows)
    assert table.column_names == [*ROW_COLUMNS, ray_pipeline.ERROR_KIND]
    rows = rows_of(table)
    missing = str(collection_dir.parent / "missing.jpg")  # listed by the CLI only: read_images logs it
    assert_same_rows([{c: r[c] for c in ROW_COLUMNS} for r in rows],
                     [r for r in rows_of(bulk_output) if r["file"] != missing])

    errors = {Path(r["file"]).name: (r["error"], r["error_kind"]) for r in rows if r["error"]}
    assert set(errors) == {"truncated.jpg", "phone.heic"}
    assert "truncated" in errors["truncated.jpg"][0] and errors["truncated.jpg"][1] == "corrupt"
    assert str(collection_dir / "sub" / "truncated.jpg") in errors["truncated.jpg"][0]  # named by path, not bytes
    assert "HEIC images cannot be decoded" in errors["phone.heic"][0]
    assert errors["phone.heic"][1] == "unsupported format"
    faces = Counter(Path(r["file"]).name for r in rows if not r["error"])
    assert faces["kid_no_ending"] == 1 and faces["dlib_2007_007763.jpg"] == 7

    predictor = Predictor(detector=str(yunet_path))
    for photo in sorted(collection_dir.glob("*.jpg")):
        assert_same_rows([{c: r[c] for c in ROW_COLUMNS} for r in rows if r["file"] == str(photo)],
                         predictor.predict(photo).rows())


def test_bytes_relative_paths_and_a_vanished_file(ray_rows: Any, collection_dir: Path, yunet_path: Path,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rows from a Dataset that holds the bytes (``with_bytes``: read tasks, as ``read_binary_files`` gives
    them); a relative path, which the actors read from where the driver sees it (their working folder differs) and
    name as given; a file gone before its actor reads it, an error row."""
    expected = rows_of(table_of(ray_rows))
    with_bytes = ray_pipeline.read_images(collection_dir, with_bytes=True)
    assert "bytes" in with_bytes.columns()
    got = rows_of(table_of(ray_pipeline.predict_dataset(with_bytes, detector=yunet_path, error_kinds=True)))
    assert_same_rows(got, expected)
    assert [r["error_kind"] for r in got] == [r["error_kind"] for r in expected]

    monkeypatch.chdir(collection_dir.parent)
    relative = f"{collection_dir.name}/smahesh29_kid1.jpg"
    gone = tmp_path / "gone.jpg"
    gone.write_bytes((collection_dir / "smahesh29_kid1.jpg").read_bytes())
    ds = ray_pipeline.files_dataset([relative, str(gone)])
    gone.unlink()
    rows = {r["file"]: r for r in table_of(ray_pipeline.predict_dataset(ds, detector=yunet_path,
                                                                        error_kinds=True)).to_pylist()}
    assert rows[relative]["age"] == pytest.approx(
        next(r["age"] for r in expected if r["file"] == str(collection_dir / "smahesh29_kid1.jpg")), abs=0.051)
    assert rows[str(gone)]["error_kind"] == "cannot read" and "gone.jpg" in rows[str(gone)]["error"]
    with pytest.raises(TypeError, match="with_bytes=True"):
        ray_pipeline.files_dataset([relative], include_paths=True)


def test_a_file_name_that_is_not_utf8_is_read_and_named_as_the_bulk_path_names_it(
        local_ray: Any, collection_dir: Path, yunet_path: Path, tmp_path: Path) -> None:
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")  # a Latin-1 name: no Arrow string holds it
    shutil.copy(collection_dir / "smahesh29_kid1.jpg", name)
    rows = table_of(ray_pipeline.predict_dataset(ray_pipeline.files_dataset([os.fsdecode(name)]),
                                                  detector=yunet_path)).to_pylist()
    assert [(r["file"], r["face"], r["error"]) for r in rows] == [(str(tmp_path / "caf\\xe9.jpg"), 0, None)]


def test_paths_come_in_blocks_for_every_actor(local_ray: Any) -> None:
    files = [f"photos/{i}.jpg" for i in range(450)]  # read by the actors only: they need not exist here
    ds = ray_pipeline.files_dataset(files).materialize()
    assert ds.num_blocks() == 150  # 3 paths each: 200 blocks' worth, rounded up
    rows = ds.take_all()
    assert [r["path"] for r in rows] == files
    assert rows[0]["location"] == str(Path("photos/0.jpg").resolve())
    n = 200 * ray_pipeline.BLOCK_PATHS + 1  # blocks of BLOCK_PATHS from here on
    big = ray_pipeline.files_dataset([f"s3://bucket/{i}.jpg" for i in range(n)]).materialize()
    assert big.num_blocks() == 201 and big.take(1)[0]["location"] == "s3://bucket/0.jpg"


def test_read_images_shares_out_listed_lines(local_ray: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    """``listed=True``: the lines go to the shards before any is listed (a missing line is logged by its own shard
    alone, not listed by the others), a folder's files go with its line, and the shards together hold every input
    of the list once."""
    folder = tmp_path / "album"
    folder.mkdir()
    album = {str(folder / f"{i}.jpg") for i in range(6)}
    loose = [str(tmp_path / f"loose{i}.jpg") for i in range(30)]
    for file in [*album, *loose]:
        Path(file).write_bytes(b"listed, never decoded here")
    lines = [str(folder), *loose, str(tmp_path / "missing.jpg")]
    everything = [row["path"] for row in ray_pipeline.read_images(lines).take_all()]
    assert set(everything) == album | set(loose)
    parts, warned = [], []
    for i in range(3):
        caplog.clear()
        with caplog.at_level("WARNING", logger=ray_pipeline.log.name):
            parts.append([row["path"] for row in ray_pipeline.read_images(lines, shard=(i, 3), listed=True).take_all()])
        warned.append("missing.jpg" in caplog.text)
    assert warned.count(True) == 1
    assert sorted(p for part in parts for p in part) == sorted(everything)
    assert sum(album <= set(part) for part in parts) == 1  # the folder's files all in its line's shard


def test_the_python_api_checks_its_arguments(tmp_path: Path) -> None:
    """A path as a string became 22 one-character paths; shard (0, 0) and threads=0 divided by zero."""
    with pytest.raises(TypeError, match="takes a list of files"):
        ray_pipeline.files_dataset(str(tmp_path / "one.jpg"))
    with pytest.raises(ValueError, match="shard 0/0: need N >= 1"):
        ray_pipeline.read_images(str(tmp_path), shard=(0, 0))
    for option in ({"threads": 0}, {"actors": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(option))} must be at least 1"):
            ray_pipeline.predict_dataset(None, **option)  # type: ignore[arg-type]  # refused before it is read


def test_parquet_written_by_ray_has_the_bulk_schema(ray_rows: Any, bulk_output: Path, tmp_path: Path) -> None:
    expected = pq.read_schema(bulk_output)
    native = ray_rows.drop_columns([ray_pipeline.ERROR_KIND])
    native.write_parquet(str(tmp_path / "ray"))  # Ray's own writer: a folder of files
    files = sorted((tmp_path / "ray").glob("*.parquet"))
    assert files
    for file in files:
        assert pq.read_schema(file).equals(expected, check_metadata=False)
    assert pq.read_table(tmp_path / "ray").num_rows == pq.read_metadata(bulk_output).num_rows - 1  # no missing.jpg

    out = tmp_path / "one.parquet"  # write_parquet: one file, as --output writes it
    assert ray_pipeline.write_parquet(ray_rows, out) == 8
    assert pq.read_schema(out).equals(expected, check_metadata=True)

    failed = tmp_path / "failed.parquet"  # a Dataset that fails: no part folder left to block the next call
    with pytest.raises(KeyError):
        ray_pipeline.write_parquet(ray_rows.drop_columns(["age"]), failed)
    assert not failed.exists() and not failed.with_name(failed.name + ".parts").exists()
    assert ray_pipeline.write_parquet(ray_rows, failed) == 8


def test_cli_end_to_end(local_ray: Any, sources: list[str], bulk_output: Path, yunet_path: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rows.parquet"
    assert main(["predict", *sources, "--ray", "--output", str(out), "--detector", str(yunet_path)]) == 1
    err = capsys.readouterr().err
    assert "skipped 1 file(s), not an image (.txt)" in err and "9 input(s): 6 photo(s) read" in err
    assert "errors, corrupt: 1" in err and "errors, unsupported format: 1" in err and "errors, cannot read: 1" in err
    assert pq.read_schema(out).equals(pq.read_schema(bulk_output), check_metadata=True)
    assert_same_rows(rows_of(out), rows_of(bulk_output))
    assert not out.with_name(out.name + ".parts").exists()


def test_cli_shard_then_resume(local_ray: Any, sources: list[str], collection_dir: Path, bulk_output: Path,
                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sharded.parquet"
    main(["predict", *sources, "--ray", "--shard", "0/2", "--output", str(out)])  # the detector from AGEGENDER_YUNET
    first = {r["file"] for r in rows_of(out)}
    listed = collect(sources)
    part = listed.part((0, 2))
    assert first == set(part.files + [p for p, _ in part.errors])
    assert 0 < len(first) < 9
    capsys.readouterr()

    main(["predict", "--ray", *sources, "--resume", "--output", str(out)])  # --ray is a flag: SRC may follow it
    err = capsys.readouterr().err
    assert f"{len(first)} already in the output (resumed)" in err
    rows = rows_of(out)
    assert_same_rows(rows, rows_of(bulk_output))  # every input once, none lost, none repeated

    main(["predict", *sources, "--ray", "--resume", "--output", str(out)])  # nothing left to do: Ray not needed
    assert "9 already in the output (resumed)" in capsys.readouterr().err
    assert rows_of(out) == rows


def test_cli_an_empty_shard_no_input_and_too_many_threads(local_ray: Any, collection_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """As the local bulk path: a shard without files is no error, a run without input leaves no output behind (the
    command, fixed, runs again), and an actor larger than any node is refused instead of waiting for ever."""
    photo = str(collection_dir / "smahesh29_kid1.jpg")
    outs = [tmp_path / f"shard{i}.parquet" for i in range(2)]
    assert [main(["predict", photo, "--ray", "--shard", f"{i}/2", "--output", str(out)]) for i, out in
            enumerate(outs)] == [0, 0]
    assert "none of the 1 input(s) is in it" in capsys.readouterr().err
    assert sum(len(rows_of(out)) for out in outs) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--ray", "--output", str(tmp_path / "e.parquet")]) == 1
    assert "no input" in capsys.readouterr().err and not (tmp_path / "e.parquet").exists()
    assert main(["predict", photo, "--ray", "--threads", "64", "--output", str(tmp_path / "t.parquet")]) == 2
    assert "--threads 64: each actor holds that many CPUs of one node" in capsys.readouterr().err
    assert not (tmp_path / "t.parquet").exists()


def test_uris_are_listed_by_ending_and_named_by_uri(local_ray: Any, collection_dir: Path) -> None:
    uri = f"file://{collection_dir}"
    listed = ray_pipeline.list_images(uri)
    names = {Path(f).name for f in listed.files}
    assert names == {p.name for p in collection_dir.glob("*.jpg")} | {"phone.heic", "truncated.jpg"}
    assert all(f.startswith(uri) for f in listed.files)
    assert set(listed.skipped) == {"not an image (.txt)", "not an image (no ending)"}
    photo = f"{uri}/smahesh29_kid1.jpg"
    rows = table_of(ray_pipeline.predict_dataset(ray_pipeline.files_dataset([photo]))).to_pylist()
    assert [r["file"] for r in rows] == [photo] and rows[0]["age"] is not None


def test_cli_needs_parquet_and_the_extra(collection_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(collection_dir), "--ray", "--output", str(tmp_path / "rows.csv")]) == 2
    assert "--ray writes Parquet: give --output FILE.parquet" in capsys.readouterr().err
    assert main(["predict", str(collection_dir), "--ray", "--workers", "2", "--output", str(tmp_path / "r.parquet")
                 ]) == 2
    assert "--workers is for the local bulk path" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert main(["predict", str(collection_dir), "--ray", "--output", str(tmp_path / "rows.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'agegender[ray]'" in err[0]
    assert not (tmp_path / "rows.parquet").exists()


def test_a_worker_that_cannot_load_the_detector_stops_the_run_in_one_line(
        local_ray: Any, collection_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rows.parquet"
    broken = tmp_path / "broken-yunet.onnx"  # here, so only the workers find out
    broken.write_bytes(b"not a model")
    code = main(["predict", str(collection_dir), "--ray", "--detector", str(broken), "--output", str(out)])
    assert code == 2
    assert "error: the Ray workers cannot load the model or the detector" in capsys.readouterr().err
    assert not out.exists() and not out.with_name(out.name + ".parts").exists()  # a plain rerun may start
    code = main(["predict", str(collection_dir), "--ray", "--detector", str(tmp_path / "no-yunet.onnx"),
                 "--output", str(out)])  # missing here: said before any worker starts
    assert code == 2 and "--detector" in capsys.readouterr().err and not out.exists()
    model = tmp_path / "broken-model.onnx"  # the runtime's own refusal (BackendError) printed Ray's traceback
    model.write_bytes(b"not a model either")
    code = main(["predict", str(collection_dir), "--ray", "--model", str(model), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "error: the Ray workers cannot load the model or the detector" in err, err[-2000:]
    assert "Traceback" not in err and not out.exists()


def test_a_cluster_address_where_nothing_answers_is_one_line_at_once(collection_dir: Path, tmp_path: Path) -> None:
    """Ray retried in silence for minutes (a run killed after 248 s); its own process, so that no Ray is running."""
    import subprocess

    out = tmp_path / "rows.parquet"
    command = [sys.executable, "-m", "agegender.cli", "predict", str(collection_dir / "smahesh29_kid1.jpg"), "--ray",
               "--ray-address", "127.0.0.1:1", "--output", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--ray-address: no Ray cluster answers at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists() and not out.with_name(out.name + ".parts").exists()
