"""The bulk path on a Ray cluster: a ``ray.data.Dataset`` of photos through the Predictor, one row per face.

The rows are those of the local bulk path (:mod:`agegender.inference.bulk`), column for column
(:data:`~agegender.inference.results.ROW_COLUMNS`, typed by :data:`~agegender.inference.results.ROW_TYPES`): a
photo gives one row per face, or one with empty face columns when it has none; an input that cannot be read gives
one row with the reason in ``error``. Each actor of the pool (:class:`AgeGenderBatchPredictor`, one CPU each) loads
the model and the detector once, then reads each photo of a batch itself (a local path or a URI; or takes its bytes
from the Dataset), decodes, detects and aligns it (:func:`~agegender.inference.predictor.prepare_pixels`) and runs
the model over all their faces in one pass (:meth:`~agegender.inference.predictor.Predictor.finish`).

>>> import ray  # doctest: +SKIP
>>> from agegender.inference.ray_pipeline import predict_dataset, read_images, write_parquet  # doctest: +SKIP
>>> ds = predict_dataset(read_images(["photos/", "s3://bucket/more/"]))  # doctest: +SKIP
>>> write_parquet(ds, "faces.parquet")  # one file, crash-safe and resumable, like --output  # doctest: +SKIP
>>> ds.write_parquet("s3://bucket/faces/")  # or Ray's own writer: a folder of files, the same schema  # doctest: +SKIP

Torch is never imported; a worker needs only ``pip install 'agegender[ray]'``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

from agegender.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    UNREADABLE_SUFFIXES,
    ImageError,
    finer_decoder,
    load_scaled,
)
from agegender.inference import bulk
from agegender.inference.collection import Collection, check_shard, collect, collect_listed, is_uri
from agegender.inference.detector import DETECT_SIZE
from agegender.inference.results import ROW_COLUMNS, ROW_TYPES, ImageFailure, ImageResult
from agegender.inference.sinks import ARROW_TYPES, RowSink, clean_value, open_sink, stored_name

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from agegender.inference.predictor import PreparedImage

__all__ = ["BATCH_PHOTOS", "BLOCK_PATHS", "ERROR_KIND", "AgeGenderBatchPredictor", "arrow_schema", "files_dataset",
           "list_images", "predict_dataset", "read_images", "write_parquet", "write_rows"]

log = logging.getLogger(__name__)

#: Photos per ``map_batches`` call: each actor runs the model once over all their faces.
BATCH_PHOTOS = 16
#: Paths per block of :func:`files_dataset` at most (64 calls of an actor; 10 million photos make 9,766 blocks).
BLOCK_PATHS = 1024
#: The extra column ``error_kind`` (:class:`~agegender.images.ImageError`'s ``kind``) that
#: ``predict_dataset(..., error_kinds=True)`` appends, so that a summary can count errors by kind.
ERROR_KIND = "error_kind"
#: Environment variables the driver passes on to the actors: where the weights are on an offline cluster.
FORWARDED_ENV = ("AGEGENDER_YUNET", "AGEGENDER_DLIB_RESNET")
#: File endings taken from a URI's listing: images, and formats that get an "unsupported format" row.
URI_SUFFIXES = IMAGE_SUFFIXES | UNREADABLE_SUFFIXES


def arrow_schema(error_kinds: bool = False) -> pa.Schema:
    """The Arrow schema of the rows: :data:`ROW_TYPES` as the Parquet sink writes it (plus ``error_kind``)."""
    import pyarrow as pa

    fields = [(name, getattr(pa, ARROW_TYPES[kind])()) for name, kind in ROW_TYPES.items()]
    return pa.schema(fields + [(ERROR_KIND, pa.string())] * error_kinds)


def _columns(batch: Any) -> list[str]:
    """The column names of a Ray batch (a pyarrow Table, or a dict of numpy arrays or lists)."""
    return list(batch.column_names) if hasattr(batch, "column_names") else list(batch)


def _column(batch: Any, name: str) -> list[Any]:
    """One column of a Ray batch (a pyarrow Table, or a dict of numpy arrays or lists) as a Python list."""
    column = batch[name]
    return column.to_pylist() if hasattr(column, "to_pylist") else list(column)


class AgeGenderBatchPredictor:
    """The callable class for ``Dataset.map_batches``: a batch of ``{"path"}`` (the actor reads each file from
    ``location`` where the batch has that column, else from ``path``: :func:`files_dataset`) or of ``{"path",
    "bytes"}`` (what ``ray.data.read_binary_files(..., include_paths=True)`` gives) -> a pyarrow Table of their
    rows.

    ``model``: a shipped model's name or an ``agegender export`` file (default: the shipped int8 flagship);
    ``detector``: a YuNet file, ``"auto"`` (found as :class:`~agegender.inference.detector.FaceDetector` says, on
    the worker) or ``None`` (the inputs are aligned chips); ``flip``, ``max_pixels``, ``reduced``, ``detect_size`` as
    the :class:`~agegender.inference.predictor.Predictor` takes them; ``threads``: the model's threads (one per CPU
    the actor holds); ``backend``/``device``/``accurate``/``descriptor_weights``/``gender_model`` as
    :func:`~agegender.inference.factory.load_model` takes them; ``error_kinds``: append ``error_kind``.
    """

    def __init__(self, model: str | None = None, detector: str | None = "auto", flip: bool = True,
                 threads: int = 1, backend: str = "auto", *, device: str | None = None, accurate: bool = False,
                 descriptor_weights: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, reduced: bool = True,
                 detect_size: int = DETECT_SIZE, error_kinds: bool = False, gender_model: str | None = None) -> None:
        import cv2

        from agegender.inference.factory import load_model
        from agegender.inference.predictor import Predictor

        cv2.setNumThreads(threads)  # one actor per CPU: OpenCV's own threads would only contend
        model_ = load_model(model, accurate=accurate, threads=threads, descriptor_weights=descriptor_weights,
                            backend=backend, device=device, gender_model=gender_model)
        self.predictor = Predictor(model_, detector=detector, threads=threads, flip=flip, max_pixels=max_pixels,
                                   reduced=reduced, detect_size=detect_size)
        self.error_kinds = error_kinds
        self.schema = arrow_schema(error_kinds)
        self._filesystems: dict[str, tuple[Any, str]] = {}

    def __call__(self, batch: Any) -> pa.Table:
        paths = [str(path) for path in _column(batch, "path")]
        columns = _columns(batch)
        contents = _column(batch, "bytes") if "bytes" in columns else [None] * len(paths)
        locations = _column(batch, "location") if "location" in columns else paths
        prepared = [self.prepare(path, data, location)
                    for path, data, location in zip(paths, contents, locations, strict=True)]
        return self.table(self.predictor.finish(prepared))

    def prepare(self, name: str, data: bytes | None = None, location: str | None = None
                ) -> PreparedImage | ImageFailure:
        """One input from its bytes (None: read from ``location``, a local path or a URI, default ``name``), named
        ``name``: what the bulk path's worker makes of the file (the same formats refused, the same errors, the
        same pixels)."""
        from agegender.inference.predictor import prepare_pixels

        unsupported = bulk.unsupported_format(name)
        if unsupported is not None:
            return unsupported
        p = self.predictor
        try:
            min_side = p.detector.max_side if p.reduced and p.detector is not None else None
            data = self.read(location or name) if data is None else data
            scaled = load_scaled(data, min_side=min_side, max_pixels=p.max_pixels, name=name)
            return prepare_pixels(scaled, name, p.detector, p.input_side, finer_decoder(data, scaled),
                                  keep_pixels=False)
        except ImageError as err:
            return ImageFailure(name, err.kind, str(err))
        except (OSError, ValueError, MemoryError) as err:  # a photo must never stop the run
            return ImageFailure(name, "cannot read", f"{name}: {err}")

    def read(self, path: str) -> bytes:
        """The bytes of a local file, or of a URI that pyarrow's filesystems read (one filesystem per bucket or
        host, made once per actor). Raises OSError (an error row)."""
        if path.startswith("file://"):  # a local name Arrow cannot hold as text (:func:`_location`)
            return Path(os.fsdecode(unquote_to_bytes(urlsplit(path).path))).read_bytes()
        if not is_uri(path):
            return Path(path).read_bytes()
        from pyarrow import fs as pafs

        parts = urlsplit(path)
        key = f"{parts.scheme}://{parts.netloc}"
        if key not in self._filesystems:
            filesystem, inner = pafs.FileSystem.from_uri(path)
            self._filesystems[key] = filesystem, _uri_prefix(path, inner)
        filesystem, prefix = self._filesystems[key]
        with filesystem.open_input_stream(path[len(prefix):]) as stream:
            return stream.read()

    def table(self, results: Sequence[ImageResult | ImageFailure]) -> pa.Table:
        """The rows of ``results`` as a Table of :func:`arrow_schema`, values as the Parquet sink writes them."""
        import pyarrow as pa

        rows = []
        for result in results:
            kind = result.kind if isinstance(result, ImageFailure) else None
            for row in result.rows():
                cleaned = {c: clean_value(row[c]) for c in ROW_COLUMNS}
                if self.error_kinds:
                    cleaned[ERROR_KIND] = kind
                rows.append(cleaned)
        return pa.Table.from_pylist(rows, schema=self.schema)


# --- inputs ----------------------------------------------------------------------------------------------------

def _location(path: str) -> str:
    """Where an actor reads a local file: its path, or a ``file://`` URI of its bytes where the name is not UTF-8
    (Arrow strings cannot hold it; the row names it by :func:`~agegender.inference.sinks.stored_name`)."""
    return path if stored_name(path) == path else "file://" + quote(os.fsencode(path))


def _uri_prefix(uri: str, path: str) -> str:
    """What pyarrow strips off ``uri`` to give the filesystem ``path`` (``s3://`` for ``s3://bucket/key``)."""
    uri = uri.rstrip("/")
    path = path.rstrip("/")
    return uri[:len(uri) - len(path)] if path and uri.endswith(path) else ""


def _list_uri(uri: str, out: Collection) -> None:
    """Add the files under ``uri`` (a file or a folder, recursively) whose ending is an image's, named by their
    URI; anything else is skipped by type, a missing URI is an error entry."""
    from pyarrow import fs as pafs

    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            out.errors.append((uri, "no such file or folder"))
            return
        prefix = _uri_prefix(uri, root)
        if info.type != pafs.FileType.Directory:
            out.files.append(uri)  # a file named on the command line is always an input
            return
        entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as err:
        out.errors.append((uri, f"cannot read: {err}"))
        return
    for entry in sorted((e for e in entries if e.type == pafs.FileType.File), key=lambda e: e.path):
        suffix = PurePosixPath(entry.path).suffix.lower()
        if suffix in URI_SUFFIXES:
            out.files.append(prefix + entry.path)
        else:
            out.skip(f"not an image ({suffix or 'no ending'})", prefix + entry.path)


def list_images(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> Collection:
    """The inputs under ``sources``: local files and folders as :func:`~agegender.inference.collection.collect`
    lists them (the bulk path's rules), and URIs that pyarrow reads (``s3://``, ``gs://``, ``hdfs://``,
    ``file://``...) listed recursively, their files taken by ending (:data:`URI_SUFFIXES`) and named by URI."""
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    sources = list(sources)
    out = collect(s for s in sources if not is_uri(s))
    for uri in (s for s in sources if is_uri(s)):
        _list_uri(str(uri), out)
    return out


def _add_prefix(batch: pa.Table, prefix: str) -> pa.Table:
    import pyarrow as pa
    import pyarrow.compute as pc

    index = batch.schema.get_field_index("path")
    return batch.set_column(index, "path", pc.binary_join_element_wise(pa.scalar(prefix), batch["path"], ""))


def files_dataset(files: Sequence[str], *, with_bytes: bool = False, **read_args: Any) -> ray.data.Dataset:
    """A Dataset of ``{"path", "location"}`` for ``files`` (local paths, as given, or URIs; ``location``: where a
    worker reads it, a local path made absolute), whose files the actors of :func:`predict_dataset` read themselves:
    no read task holds a CPU (on a local Ray of 2 CPUs, Ray's read tasks held the pool at one actor of two) and no
    photo passes through the object store (``scripts/measure/ray_throughput.py``, docs/ray.md). The paths are Arrow
    blocks of at most :data:`BLOCK_PATHS` (at least 200 blocks where there are 200 files, so that every actor of a
    cluster gets work). ``with_bytes``: ``{"path", "bytes"}``, read by Ray's ``read_binary_files`` (``read_args`` go
    to it). ``path`` is each file's name as given, so that rows name their file as the bulk path names it and a
    resumed run knows them."""
    import ray.data

    if isinstance(files, str | os.PathLike):  # a string would be taken for a list of one-character paths
        raise TypeError(f"files_dataset takes a list of files, got {files!r}: read_images takes a folder or one file")
    if not files:
        raise ValueError("no input files")
    if not with_bytes:
        import pyarrow as pa

        if read_args:
            raise TypeError(f"read_args ({', '.join(read_args)}) go to read_binary_files: pass with_bytes=True")
        table = pa.table({"path": [stored_name(file) for file in files],
                          "location": [file if is_uri(file) else _location(os.path.abspath(file)) for file in files]})
        rows = min(BLOCK_PATHS, -(-len(files) // 200))
        return ray.data.from_arrow([table.slice(start, rows) for start in range(0, len(files), rows)])
    groups: dict[str, list[str]] = {}
    for file in files:
        parts = urlsplit(file) if is_uri(file) else None
        groups.setdefault(f"{parts.scheme}://{parts.netloc}" if parts else "", []).append(file)
    datasets = []
    for key, group in groups.items():
        if not key:
            datasets.append(ray.data.read_binary_files(group, include_paths=True, **read_args))
            continue
        from pyarrow import fs as pafs

        filesystem, first = pafs.FileSystem.from_uri(group[0])
        prefix = _uri_prefix(group[0], first)
        ds = ray.data.read_binary_files([f[len(prefix):] for f in group], include_paths=True,
                                        filesystem=filesystem, **read_args)
        datasets.append(ds.map_batches(_add_prefix, fn_kwargs={"prefix": prefix},  # type: ignore[arg-type]
                                       batch_format="pyarrow") if prefix else ds)
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def read_images(sources: str | os.PathLike | Iterable[str | os.PathLike], *, shard: tuple[int, int] | None = None,
                listed: bool = False, exclude: Iterable[str] = (), with_bytes: bool = False,
                **read_args: Any) -> ray.data.Dataset:
    """A Dataset of :func:`files_dataset`'s rows (``with_bytes`` and ``read_args`` as it takes them), one per input
    under ``sources`` (:func:`list_images`): a folder, files, or URIs; ``shard`` (I, N) keeps the I-th of N parts
    (:meth:`~agegender.inference.collection.Collection.part`), ``exclude`` drops inputs already done. ``listed``: the
    sources are the lines of a list, as ``--files-from`` reads them, shared out among the shards before any is
    listed (:func:`~agegender.inference.collection.collect_listed`), so that each of N machines lists a N-th of
    them. What could not be listed is logged (the CLI writes it as error rows)."""
    if shard is not None:
        check_shard(shard)
    if listed:
        lines = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
        collection = collect_listed([str(line) for line in lines], shard, list_images)
    else:
        collection = list_images(sources).part(shard)
    for path, reason in collection.errors:
        log.warning("%s: %s", path, reason)
    done = set(exclude)
    return files_dataset([f for f in collection.files if f not in done], with_bytes=with_bytes, **read_args)


# --- the pipeline ----------------------------------------------------------------------------------------------

def _local_file(path: str | os.PathLike | None) -> str | None:
    """An existing local file as an absolute path (workers do not share the driver's working folder); anything
    else (a shipped model's name, ``"auto"``, a path that only the workers have) as given."""
    if path is None:
        return None
    return str(Path(path).resolve()) if Path(path).is_file() else os.fsdecode(path)


def predict_dataset(ds: ray.data.Dataset, model: str | os.PathLike | None = None,
                    detector: str | os.PathLike | None = "auto", *, flip: bool = True, threads: int = 1,
                    backend: str = "auto", device: str | None = None, accurate: bool = False,
                    descriptor_weights: str | os.PathLike | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                    reduced: bool = True, detect_size: int = DETECT_SIZE, actors: int | None = None,
                    batch_size: int = BATCH_PHOTOS, error_kinds: bool = False,
                    env: Mapping[str, str] | None = None, gender_model: str | os.PathLike | None = None
                    ) -> ray.data.Dataset:
    """``ds`` (rows of :func:`files_dataset`, or ``{"path", "bytes"}``) -> a Dataset of result rows
    (:func:`arrow_schema`), through a pool of :class:`AgeGenderBatchPredictor` actors with ``threads`` CPUs each: up
    to ``actors`` of them (default: as many as the cluster's CPUs allow), ``batch_size`` photos per call. ``env``
    adds to the environment variables the actors get (:data:`FORWARDED_ENV` from this process's). The other
    arguments: :class:`AgeGenderBatchPredictor`."""
    import ray
    from ray.data import ActorPoolStrategy

    for name, value in (("threads", threads), ("actors", actors), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if actors is None:
        if not ray.is_initialized():
            ray.init()  # what Ray Data would do on first use: the cluster `ray start` made, else a local Ray
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    env_vars = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)} | dict(env or {})
    kwargs = dict(model=_local_file(model), detector=detector if detector in (None, "auto") else _local_file(detector),
                  flip=flip, threads=threads, backend=backend, device=device, accurate=accurate,
                  descriptor_weights=_local_file(descriptor_weights), max_pixels=max_pixels, reduced=reduced,
                  detect_size=detect_size, error_kinds=error_kinds, gender_model=_local_file(gender_model))
    return ds.map_batches(AgeGenderBatchPredictor, fn_constructor_kwargs=kwargs, batch_size=batch_size,
                          batch_format="pyarrow", compute=ActorPoolStrategy(min_size=1, max_size=actors),
                          num_cpus=threads, runtime_env={"env_vars": env_vars} if env_vars else None)


# --- outputs ---------------------------------------------------------------------------------------------------

def _photos(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive rows grouped by ``file`` (one photo's rows are consecutive)."""
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i]["file"] != rows[start]["file"]:
            yield rows[start:i]
            start = i


def _count(summary: bulk.BulkSummary, photo: list[dict[str, Any]]) -> None:
    first = photo[0]
    if first["error"] is not None:
        summary.failed(first.get(ERROR_KIND) or "cannot read", first["error"])
    elif first["face"] is None:
        summary.photos += 1
        summary.no_face += 1
    else:
        summary.photos += 1
        summary.faces += len(photo)


def write_rows(ds: ray.data.Dataset, sink: RowSink, summary: bulk.BulkSummary | None = None) -> int:
    """Stream the rows of ``ds`` (from :func:`predict_dataset`) into ``sink`` on this process, whole photos at a
    time (a photo split across two batches is held back until its last row arrived), skipping the inputs already in
    ``sink.done``; counts them into ``summary`` (errors by kind when ``ds`` has ``error_kind``). Returns the number
    of photos written. The sink is not closed."""
    written = 0
    carry: list[dict[str, Any]] = []

    def emit(rows: list[dict[str, Any]]) -> None:
        nonlocal written
        for photo in _photos(rows):
            if photo[0]["file"] in sink.done:
                continue
            sink.write([{c: row[c] for c in ROW_COLUMNS} for row in photo])
            written += 1
            if summary is not None:
                _count(summary, photo)

    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = carry + batch.to_pylist()  # type: ignore[union-attr]  # a pyarrow Table
        if not rows:
            continue
        last = rows[-1]["file"]
        cut = len(rows)
        while cut and rows[cut - 1]["file"] == last:
            cut -= 1
        emit(rows[:cut])
        carry = rows[cut:]
    emit(carry)
    return written


def write_parquet(ds: ray.data.Dataset, path: str | os.PathLike, resume: bool = False) -> int:
    """Write the rows of ``ds`` (from :func:`predict_dataset`) to one Parquet file as ``agegender predict --output
    PATH.parquet`` does: the same schema, crash-safe part files merged on success; ``resume`` continues an
    existing output (rows of inputs already in it are dropped: exclude them from ``ds`` to save the work). Returns
    the number of photos written."""
    if Path(path).suffix.lower() != ".parquet":
        raise ValueError(f"{path}: write_parquet writes a .parquet file")
    sink = open_sink(path, ROW_TYPES, resume=resume)
    try:
        written = write_rows(ds, sink)
    except BaseException:
        sink.abandon()  # the rows that arrived stay for resume=True; none: nothing left behind
        raise
    sink.close()
    return written
