"""Crash-safe row outputs for the bulk path: Parquet (pyarrow), JSON Lines and CSV, each resumable.

Rows arrive whole images at a time. What a sink has accepted survives a ``kill -9``; only rows not yet handed to
it are lost, and a resumed run reads back which sources are done (:attr:`RowSink.done`), so it neither repeats
nor drops an input.

- **JSON Lines / CSV**: each image's rows go to the file in one unbuffered ``write``; a line cut by a crash (no
  newline at the end) is removed when the run resumes.
- **Parquet**: a Parquet file cannot be appended to and is unreadable until its footer is written, so rows are
  flushed as small complete files into ``OUTPUT.parts/`` (each written beside and renamed into place), every
  ``flush_rows`` rows or ``flush_seconds``; closing merges the existing output and the parts into one file,
  renamed over the output, and only then removes the parts. The merge, the rewrite for a retry and the resume's
  read stream the rows in batches, so their memory does not grow with the output (millions of rows).

An existing output is never overwritten: without ``resume`` the sink refuses to start. A resumed run may retry its
failed inputs (:meth:`RowSink.retry_failed`): the rows of inputs that only have error rows are taken out of the
output (each file rewritten beside itself and renamed over it, so a crash leaves it whole), and they are to do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agegender.paths import check_writable_file

__all__ = ["ARROW_TYPES", "FORMATS", "OutputExistsError", "RowSink", "Sources", "check_output", "clean_value",
           "open_sink", "stored_name"]

#: Output formats by file ending.
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
#: CSV rows end as RFC 4180 says; with a bare "\n", a value holding "\r" (a file name may) was not quoted and
#: read back as two rows.
CSV_LINE_END = "\r\n"
#: Column types a schema may use: Python type names, mapped to pyarrow's type constructors.
ARROW_TYPES = {"str": "string", "float": "float64", "int": "int64"}
#: Rows per row group of a merged Parquet output, and per batch when one is read back: bounds the memory of a
#: merge or a resume (about 100 MB of the bulk path's rows). Smaller row groups made the file larger: 2 million
#: rows took 98 MiB in groups of 65,536, 73 in groups of a million (scripts/measure/sink_scale.py).
ROW_GROUP_ROWS = 262_144


class OutputExistsError(FileExistsError):
    """The output exists and the run was not asked to resume it."""


def stored_name(source: str) -> str:
    """A source as outputs store it: valid UTF-8, a file name's undecodable bytes (which Python keeps as lone
    surrogates) written as ``\\xNN``, as neither a CSV file nor Arrow can hold them.

    >>> stored_name(b"caf\\xe9.jpg".decode("utf-8", "surrogateescape")), stored_name("café.jpg")
    ('caf\\\\xe9.jpg', 'café.jpg')
    """
    return source.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _digest(stored: str) -> bytes:
    """16 bytes that stand for a stored source (BLAKE2b: two of 10 million sources share one with a probability of
    about 1e-25)."""
    return hashlib.blake2b(stored.encode("utf-8", "surrogateescape"), digest_size=16).digest()


class Sources:
    """The sources an output holds, as the 16-byte digests (:func:`_digest`) of their stored names in one sorted
    NumPy array: 16 bytes a source, where a set held every name as a string (a resume of millions of photos).
    ``in`` takes a source as the file system names it. Sources are added while the output is read, then
    :meth:`freeze` sorts them."""

    def __init__(self) -> None:
        self._added = bytearray()
        self._last = b""
        self._sorted = np.empty(0, dtype="S16")

    def add(self, stored: str) -> None:
        digest = _digest(stored)
        if digest != self._last:  # a photo's rows come together: its faces add it once
            self._added += digest
            self._last = digest

    def freeze(self) -> None:
        """Take in what :meth:`add` gave since the last call (each source once), sorting in place."""
        if not self._added:
            return
        held = np.concatenate([self._sorted, np.frombuffer(self._added, dtype="S16")])
        self._added, self._last = bytearray(), b""
        held.sort()
        first = np.empty(len(held), dtype=bool)
        first[:1] = True
        np.not_equal(held[1:], held[:-1], out=first[1:])
        self._sorted = held if first.all() else held[first]

    def discard(self, sources: Iterable[str]) -> None:
        """Take out ``sources`` (as stored)."""
        self.freeze()
        gone = np.frombuffer(b"".join(_digest(source) for source in sources), dtype="S16")
        self._sorted = self._sorted[~np.isin(self._sorted, gone)]

    def missing(self, sources: Sequence[str]) -> list[str]:
        """Those of ``sources`` (as the file system names them) not held, in their order: ``in`` for many at once."""
        self.freeze()
        if not len(self._sorted) or not sources:
            return list(sources)
        keys = np.frombuffer(b"".join(_digest(stored_name(source)) for source in sources), dtype="S16")
        return [source for source, held in zip(sources, np.isin(keys, self._sorted), strict=True) if not held]

    def __contains__(self, source: object) -> bool:
        if not isinstance(source, str):
            return False
        if self._added:
            self.freeze()
        key = np.frombuffer(_digest(stored_name(source)), dtype="S16")
        i = int(np.searchsorted(self._sorted, key[0]))
        return i < len(self._sorted) and bool(self._sorted[i:i + 1] == key)

    def __len__(self) -> int:
        self.freeze()
        return len(self._sorted)


def clean_value(value: Any) -> Any:
    """NaN and None become empty (null) values."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _replace_keeping_mode(tmp: Path, path: Path) -> None:
    """``tmp`` renamed over ``path``, with ``path``'s permissions where it exists (a rewritten output kept private
    stays private)."""
    if path.exists():
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    os.replace(tmp, path)


def _retry_tmp(path: Path) -> Path:
    """Where ``path`` is rewritten without the rows of retried inputs before it replaces ``path``."""
    path = path.resolve()
    return path.with_name(f".{path.name}.retry.tmp")


def _merge_tmp(path: Path) -> Path:
    """Where a Parquet output and its parts are merged before the result replaces ``path``."""
    path = path.resolve()
    return path.with_name(f".{path.name}.merging.tmp")


class RowSink:
    """Base class: ``done`` holds the ``file`` (the source) of every image already in the output (as
    :class:`Sources`), ``versions`` the
    ``model_version`` values of its rows (those that have one: error rows have none), ``failed`` the sources
    whose every row is an error row (as stored)."""

    version_column = "model_version"
    error_column = "error"

    def __init__(self, path: Path, schema: Mapping[str, str], source_column: str = "file") -> None:
        self.path, self.schema, self.source_column = path, dict(schema), source_column
        self.done = Sources()
        self.versions: set[str] = set()
        self.failed: set[str] = set()
        self.rows_written = 0
        self._succeeded = Sources()

    def _read(self, row: Mapping[str, Any]) -> None:
        """Count a row already in the output as done (KeyError when it has no source column); call
        :meth:`_read_all` after the last."""
        source = row[self.source_column]
        if row.get(self.version_column):
            self.versions.add(row[self.version_column])
        if row.get(self.error_column):
            self.failed.add(source)  # for now: those with a row that is not an error leave in _read_all
        else:
            self._succeeded.add(source)

    def _read_all(self) -> None:
        """After the last :meth:`_read`: ``done`` and ``failed`` from what was read (the digests of the sources
        with a row that is not an error, and the names of those with an error row, usually few)."""
        self.failed = set(self._succeeded.missing(sorted(self.failed)))
        self.done, self._succeeded = self._succeeded, Sources()
        for source in self.failed:
            self.done.add(source)
        self.done.freeze()

    def retry_failed(self, sources: Iterable[str]) -> list[str]:
        """Take the rows of those of ``sources`` (inputs as the file system names them) that only have error
        rows out of the output (module doc), so that they are to do again; returns them. Call it before writing."""
        retried = [source for source in sources if stored_name(source) in self.failed]
        if retried:
            self._drop_failed({stored_name(source) for source in retried})
            self.done.discard(stored_name(source) for source in retried)
            self.failed.difference_update(stored_name(source) for source in retried)
        return retried

    def _drop_failed(self, stored: set[str]) -> None:
        raise NotImplementedError

    def check_version(self, version: str) -> None:
        """ValueError when rows already in the output were made by another model than ``version``: a resumed run
        would mix two models' rows in one output."""
        others = sorted(self.versions - {version})
        if others:
            raise ValueError(f"cannot resume {self.path}: its rows were made by {', '.join(others)}, this run's model "
                             f"is {version}; resume with the same model, or choose another output")

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Accept one or more whole images' rows (ValueError, nothing written, for rows of another model than the
        output's: :meth:`check_version`)."""
        for version in {str(row[self.version_column]) for row in rows if row.get(self.version_column)} - self.versions:
            self.check_version(version)
            self.versions.add(version)
        if rows:
            self._append(rows)

    def _append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def _cells(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A row's values in the schema's order, empty ones None, and text as stored (:func:`stored_name`: an
        error message quotes the file's name too)."""
        cells = {c: clean_value(row.get(c)) for c in self.schema}
        return {c: stored_name(v) if isinstance(v, str) else v for c, v in cells.items()}

    def close(self) -> None:
        """Make everything written durable and final."""

    def abandon(self) -> None:
        """Stop after a failure or an interrupt, without finishing: the rows accepted stay (``--resume`` goes on from
        them), and when there were none nothing is left behind, so that a plain rerun may start."""

    def __enter__(self) -> RowSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TextSink(RowSink):
    """JSON Lines or CSV: appended through one unbuffered file descriptor."""

    def __init__(self, path: Path, schema: Mapping[str, str], kind: str) -> None:
        super().__init__(path, schema)
        self.kind = kind
        self.created = not path.exists()
        _retry_tmp(path).unlink(missing_ok=True)  # a rewrite for --retry-errors cut by a crash
        if path.exists() and path.stat().st_size > 0:
            self._truncate_partial_line()
        exists = path.exists() and path.stat().st_size > 0  # a CSV header cut by a crash is written again
        if exists:
            self._read_rows()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if kind == "csv" and not exists:
            self._emit([dict(zip(self.schema, self.schema, strict=True))], header=True)

    def _truncate_partial_line(self) -> None:
        """Cut a last line that a crash left without its newline, reading back from the end a block at a time
        (the output may hold millions of rows)."""
        with open(self.path, "rb+") as handle:
            end = position = handle.seek(0, os.SEEK_END)
            cut = 0
            while position > 0:
                start = max(0, position - 2**16)
                handle.seek(start)
                newline = handle.read(position - start).rfind(b"\n")
                if newline >= 0:
                    cut = start + newline + 1
                    break
                position = start
            if cut != end:
                handle.truncate(cut)

    def _rows(self) -> Iterator[dict[str, Any]]:
        """The rows already written, as read back; ValueError for a file this sink did not write."""
        with open(self.path, encoding="utf-8", newline="") as handle:
            if self.kind == "csv":
                reader = csv.DictReader(handle)
                if reader.fieldnames != list(self.schema):
                    raise ValueError(f"cannot resume {self.path}: its columns ({', '.join(reader.fieldnames or [])}) "
                                     "are not those agegender writes; choose another output")
                yield from reader
                return
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or self.source_column not in row:
                        raise ValueError(f"no {self.source_column!r} column")
                except ValueError as err:
                    raise ValueError(f"cannot resume {self.path}: line {number} is not a row agegender wrote "
                                     f"({type(err).__name__}: {err}); choose another output") from err
                yield row

    def _read_rows(self) -> None:
        for row in self._rows():
            self._read(row)
        self._read_all()

    def _drop_failed(self, stored: set[str]) -> None:
        """Rewrite the file without the rows of the sources ``stored`` (beside it, then renamed over it), and
        append to the new file."""
        self.close()
        path = self.path.resolve()  # a link to the output stays a link
        tmp = _retry_tmp(path)
        with open(tmp, "w", encoding="utf-8", newline="") as target:
            writer = csv.writer(target, lineterminator=CSV_LINE_END)
            if self.kind == "csv":
                writer.writerow(self.schema)
            for row in self._rows():
                if row[self.source_column] in stored:
                    continue
                if self.kind == "csv":
                    writer.writerow(row.values())
                else:
                    target.write(json.dumps(row) + "\n")
            target.flush()
            os.fsync(target.fileno())
        _replace_keeping_mode(tmp, path)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def _emit(self, rows: Sequence[Mapping[str, Any]], header: bool = False) -> None:
        if self.kind == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator=CSV_LINE_END)
            for row in rows:
                writer.writerow(["" if v is None else v for v in self._cells(row).values()])
            data = buffer.getvalue()
        else:
            data = "".join(json.dumps(self._cells(row)) + "\n" for row in rows)
        os.write(self.fd, data.encode("utf-8"))
        if not header:
            self.rows_written += len(rows)

    def _append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._emit(rows)

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1

    def abandon(self) -> None:
        self.close()
        if self.created and not self.rows_written:  # a CSV header alone would block a plain rerun
            self.path.unlink(missing_ok=True)


class _ParquetSink(RowSink):
    """Parquet through pyarrow: complete part files while running, one file at the end."""

    def __init__(self, path: Path, schema: Mapping[str, str], flush_rows: int = 512,
                 flush_seconds: float = 10.0) -> None:
        super().__init__(path, schema)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError("Parquet output needs pyarrow: pip install 'agegender[bulk]' (or write .jsonl or "
                              ".csv)") from err
        self.pa, self.pq = pa, pq
        self.arrow_schema = pa.schema([(name, getattr(pa, ARROW_TYPES[kind])()) for name, kind in schema.items()])
        self.parts = path.with_name(path.name + ".parts")
        for stale in [*self.parts.glob("*.tmp"), _retry_tmp(path), _merge_tmp(path)]:
            stale.unlink(missing_ok=True)  # cut by a crash: a part whose rows were never counted as done, or a
            # rewrite for --retry-errors or a merge that never replaced its file
        self.files = [path] * path.exists() + sorted(self.parts.glob("part-*.parquet"))  # as found
        for file in self.files:
            try:
                written = pq.read_schema(file)
            except (OSError, pa.ArrowException) as err:
                raise ValueError(f"cannot resume {path}: {file} is not a Parquet file ({err})") from err
            if not written.equals(self.arrow_schema, check_metadata=False):
                raise ValueError(f"cannot resume {path}: {file} has other columns than agegender writes "
                                 f"({', '.join(written.names)}); choose another output")
            columns = [c for c in (self.source_column, self.version_column, self.error_column) if c in schema]
            for batch in pq.ParquetFile(file).iter_batches(batch_size=ROW_GROUP_ROWS, columns=columns):
                for row in batch.to_pylist():
                    self._read(row)
        self._read_all()
        self.parts.mkdir(exist_ok=True)  # after the checks: a refused output leaves nothing behind
        self.next_part = 1 + max((int(p.stem.split("-")[1]) for p in self.parts.glob("part-*.parquet")), default=0)
        self.pending: list[Mapping[str, Any]] = []
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.last_flush = time.monotonic()

    def _drop_failed(self, stored: set[str]) -> None:
        """Rewrite each file holding rows of the sources ``stored`` without them (beside it, then renamed over
        it)."""
        import pyarrow.compute as pc

        failed = self.pa.array(sorted(stored), type=self.pa.string())
        for file in (f.resolve() for f in self.files):  # a link to the output stays a link
            sources = self.pq.read_table(file, columns=[self.source_column])[self.source_column]
            if not pc.any(pc.is_in(sources, value_set=failed)).as_py():
                continue
            tmp = _retry_tmp(file)
            self._stream([file], tmp, lambda rows: pc.invert(pc.is_in(rows[self.source_column], value_set=failed)))
            _replace_keeping_mode(tmp, file)

    def _stream(self, files: Sequence[Path], target: Path,
                keep: Callable[[Any], Any] | None = None) -> None:
        """Write the rows of ``files`` in order (those of each record batch that ``keep`` gives a true mask for)
        into one Parquet file at ``target``, made durable: read and written a batch at a time, in row groups of
        :data:`ROW_GROUP_ROWS`, so its memory stays bounded whatever the files hold."""
        held = self.arrow_schema.empty_table()
        with self.pq.ParquetWriter(target, self.arrow_schema) as writer:
            for file in files:
                for batch in self.pq.ParquetFile(file).iter_batches(batch_size=ROW_GROUP_ROWS):
                    table = self.pa.Table.from_batches([batch]).cast(self.arrow_schema)
                    held = self.pa.concat_tables([held, table.filter(keep(table)) if keep else table])
                    whole = held.num_rows - held.num_rows % ROW_GROUP_ROWS
                    if whole:
                        writer.write_table(held.slice(0, whole), row_group_size=ROW_GROUP_ROWS)
                        held = held.slice(whole)
            if held.num_rows:
                writer.write_table(held, row_group_size=ROW_GROUP_ROWS)
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())

    def _append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        table = self.pa.Table.from_pylist([self._cells(r) for r in self.pending], schema=self.arrow_schema)
        target = self.parts / f"part-{self.next_part:06d}.parquet"
        tmp = target.with_suffix(".tmp")
        self.pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        self.next_part += 1
        self.rows_written += len(self.pending)
        self.pending = []

    def abandon(self) -> None:
        self.flush()
        try:
            self.parts.rmdir()  # only when empty
        except OSError:
            pass

    def close(self) -> None:
        self.flush()
        parts = sorted(self.parts.glob("part-*.parquet"))
        if not parts:
            if not self.path.exists():
                self.pq.write_table(self.arrow_schema.empty_table(), self.path)
            self.parts.rmdir()
            return
        tmp = _merge_tmp(self.path)
        self._stream([self.path] * self.path.exists() + parts, tmp)
        _replace_keeping_mode(tmp, self.path.resolve())  # a link to the output stays a link
        for part in parts:
            part.unlink()
        self.parts.rmdir()


def check_output(path: Path, resume: bool = False) -> str:
    """The format of an output at ``path`` (see :func:`open_sink` for the errors), checked without writing."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"--output {path}: unknown format; use one of {', '.join(FORMATS)}")
    unfinished = path.with_name(path.name + ".parts")
    check_writable_file(path)
    if not resume and (path.exists() or unfinished.exists()):
        raise OutputExistsError(f"{path if path.exists() else unfinished} exists: pass --resume (in Python, "
                                "resume=True) to continue it, or choose another output")
    return kind


def open_sink(path: str | os.PathLike, schema: Mapping[str, str], resume: bool = False,
              flush_seconds: float = 10.0, model_version: str | None = None) -> RowSink:
    """A sink for ``path`` by its ending (:data:`FORMATS`); ``schema`` maps each column to ``str``, ``float`` or
    ``int``; ``flush_seconds``: Parquet parts are written at least this often. Raises :class:`OutputExistsError`
    when the output (or unfinished Parquet parts) exists and ``resume`` is False, ValueError for an unknown
    ending, and (given ``model_version``) for an output holding rows of another model."""
    path = Path(path)
    kind = check_output(path, resume)
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = (_ParquetSink(path, schema, flush_seconds=flush_seconds) if kind == "parquet"
            else _TextSink(path, schema, kind))
    if model_version is not None:
        try:
            sink.check_version(model_version)
        except ValueError:
            sink.abandon()
            raise
    return sink
