"""A photo collection as the bulk path sees it: the inputs a command names, expanded into a deterministic list of
files, with every file left out counted and named, and a disjoint share of them for one of N machines.

Folders are read recursively (symbolic links followed, each folder once, so a link loop ends), in sorted order.
A file named on the command line is always an input. In a folder, a file whose ending is an image's
(:data:`~agegender.images.IMAGE_SUFFIXES`), a format we cannot decode
(:data:`~agegender.images.UNREADABLE_SUFFIXES`, which then gets an error row saying so) or that has no ending (its
bytes decide) is an input; any other file is skipped by type and named in the summary. What cannot be read at all
(a missing path, a folder without permission, a FIFO, a link loop) becomes an error entry, so that it gets an error
row too.

``--shard I/N`` shares the inputs out by a hash of each file's path (:func:`in_shard`). A list of paths
(:func:`read_list`) is shared out by its lines instead, before any line is read (:func:`collect_listed`): N machines
then each ``stat`` (or, for URIs, list) a N-th of a list of millions rather than all of it, each of those calls a
round trip on a network file system or an object store. A line that names a folder gives its files to the line's
shard, except those that a more specific line names (the file itself, or a folder between them).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agegender.images import IMAGE_SUFFIXES, UNREADABLE_SUFFIXES, VIDEO_SUFFIXES

__all__ = ["Collection", "check_shard", "collect", "collect_listed", "in_shard", "is_uri", "parse_shard",
           "read_list"]


@dataclass
class Collection:
    """``files``: the inputs, in order; ``errors``: (path, reason) of what could not be listed; ``skipped``:
    files left out, by reason (e.g. ``"video"``, ``"not an image (.txt)"``)."""

    files: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, path: str) -> None:
        self.skipped.setdefault(reason, []).append(path)

    def skipped_counts(self) -> Counter[str]:
        return Counter({reason: len(paths) for reason, paths in self.skipped.items()})

    def part(self, shard: tuple[int, int] | None) -> Collection:
        """The inputs, errors and skipped files of ``shard`` (:func:`in_shard`; all for None): each of N shards
        names its own, so that their summaries add up to the collection's."""
        if shard is None:
            return self
        shard = check_shard(shard)
        return self.where(lambda path: in_shard(path, shard))

    def where(self, keep: Callable[[str], bool]) -> Collection:
        """The inputs, errors and skipped files whose path ``keep`` accepts, order kept."""
        skipped = {reason: kept for reason, paths in self.skipped.items() if (kept := [p for p in paths if keep(p)])}
        return Collection([p for p in self.files if keep(p)], [(p, r) for p, r in self.errors if keep(p)], skipped)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _suffix(name: str) -> str:
    """A file name's ending as :attr:`pathlib.PurePath.suffix` gives it, lower case, without making a path.

    >>> _suffix("IMG_0001.JPG"), _suffix(".hidden"), _suffix("name."), _suffix("README")
    ('.jpg', '', '', '')
    """
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def _add(path: str, suffix: str, out: Collection, named: bool, videos: bool) -> None:
    """Add a regular file by its ending: an input, or a skip."""
    if named or suffix in IMAGE_SUFFIXES or suffix in UNREADABLE_SUFFIXES or not suffix or (
            videos and suffix in VIDEO_SUFFIXES):
        out.files.append(path)
    elif suffix in VIDEO_SUFFIXES:
        out.skip("video (predict it on its own: agegender predict VIDEO)", path)
    else:
        out.skip(f"not an image ({suffix})", path)


def _classify(path: Path, out: Collection, named: bool, videos: bool) -> None:
    """Add one path whose kind is not known yet (named by the command or a list, or a link in a folder) with one
    ``stat``: a folder named is read, a regular file is an input or a skip, the rest an error entry."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        reason = ("no such file or folder" if not os.path.lexists(path)
                  else "cannot read: " + ("a symbolic link loop" if err.errno == 40 else (err.strerror or str(err))))
        out.errors.append((str(path), reason))
        return
    if named and stat.S_ISDIR(mode):
        _walk(path, out, videos)
    elif stat.S_ISREG(mode):
        _add(str(path), _suffix(path.name), out, named, videos)
    else:
        out.errors.append((str(path), f"cannot read: {_kind(mode)}"))


def _walk(root: Path, out: Collection, videos: bool) -> None:
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:  # a link to a folder read already (or to its own parent)
                out.skip("a link to a folder already read", str(folder))
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            out.errors.append((str(folder), f"cannot read folder: {err.strerror or err}"))
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                regular = entry.is_file(follow_symlinks=False)  # from the folder listing: no stat for most files
            except OSError:
                is_dir = regular = False
            if is_dir:
                subfolders.append(Path(entry.path))
            elif regular:
                _add(entry.path, _suffix(entry.name), out, named=False, videos=videos)
            else:
                _classify(Path(entry.path), out, named=False, videos=videos)
        stack.extend(reversed(subfolders))  # depth first, in sorted order


def collect(inputs: Iterable[str | os.PathLike], videos: bool = False) -> Collection:
    """Expand files and folders into a :class:`Collection` (see the module doc); ``videos``: a folder's videos
    are inputs too (else skipped by type). A path that does not exist is an error entry."""
    out = Collection()
    for item in inputs:
        _classify(Path(item), out, named=True, videos=videos)
    out.files = list(dict.fromkeys(out.files))  # a file named twice (or inside a folder also named) is one input
    out.errors = list(dict.fromkeys(out.errors))
    out.skipped = {reason: list(dict.fromkeys(paths)) for reason, paths in out.skipped.items()}  # counted once too
    return out


def is_uri(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a URI (``s3://bucket/key``, ``file://...``) rather than a local path."""
    return isinstance(source, str) and "://" in source and not os.path.exists(source)


def _line_key(line: str) -> str:
    """A list's line as the inputs it gives are named: a local path as :func:`collect` names it (``./a//b.jpg`` is
    ``a/b.jpg``), a URI without its closing slash. No file system call (a line holding ``://`` is taken for a URI:
    at worst a local file so named is kept by the shard that owns its line, never lost).

    >>> _line_key("./photos//2019/"), _line_key("s3://bucket/photos/")
    ('photos/2019', 's3://bucket/photos')
    """
    if "://" in line:
        return line.rstrip("/")
    if "//" in line or "/./" in line or line.startswith("./") or line.endswith(("/", "/.")):
        return str(Path(line))
    return line  # already as Path names it: a list of millions is read without making a Path of each line


def _owner(path: str, keys: set[str]) -> str | None:
    """The most specific line (of ``keys``) that names ``path`` or a folder above it."""
    while path not in keys:
        parent = os.path.dirname(path)
        if parent == path or not parent:
            return None
        path = parent
    return path


def collect_listed(lines: Sequence[str], shard: tuple[int, int] | None,
                   lister: Callable[[list[str]], Collection] = collect) -> Collection:
    """The inputs that the lines of a list (:func:`read_list`) give ``shard`` (all of them for None), listed by
    ``lister`` (:func:`collect`, or one that lists URIs too). The lines are shared out as they are, before any is
    read (module doc), so N shards read a N-th of them each: a line's inputs go to the line's shard, those of a
    folder too, except the files a more specific line names. Disjoint across the N shards, and together all of
    ``lister(lines)``."""
    if shard is None:
        return lister(list(lines))
    shard = check_shard(shard)
    owned = [line for line in lines if in_shard(_line_key(line), shard)]
    out = lister(owned)
    named = {_line_key(line) for line in owned}
    if not out.skipped and all(p in named for p in out.files) and all(p in named for p, _ in out.errors):
        return out  # no line of this shard was a folder: nothing to give back (the usual list of files)
    keys = {_line_key(line) for line in lines}

    def mine(path: str) -> bool:
        owner = _owner(path, keys)
        return owner is None or in_shard(owner, shard)  # None: named otherwise than its line; kept, never lost

    return out.where(mine)


def read_list(source: str | os.PathLike) -> list[str]:
    """The paths a list file names, one per line (``"-"``: standard input), for collections too large to name on a
    command line or to walk (a database's export, ``find ... > list``). Empty lines are ignored and a line's
    ending ``\\r`` dropped; names are decoded as the file system's (bytes that are not UTF-8 kept), so a name
    holding a newline cannot be listed (name its folder instead). OSError when the list cannot be read."""
    if os.fspath(source) == "-":
        return _names(sys.stdin.buffer)
    with open(source, "rb") as handle:
        return _names(handle)


def _names(lines: Iterable[bytes]) -> list[str]:
    return [os.fsdecode(name) for line in lines if (name := line.rstrip(b"\r\n"))]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``.

    >>> parse_shard("2/8")
    (2, 8)
    """
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    return check_shard((index, count))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` as ``(I, N)`` if ``N >= 1`` and ``0 <= I < N``, else ValueError."""
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need N >= 1 and 0 <= I < N")
    return index, count


def in_shard(path: str, shard: tuple[int, int]) -> bool:
    """Whether ``path`` falls in ``shard``: by a hash of the path as given, so N machines that name the same
    paths split them into N disjoint parts that together cover every input, whatever the order.

    >>> paths = [f"img{i}.jpg" for i in range(300)]
    >>> parts = [[p for p in paths if in_shard(p, (i, 3))] for i in range(3)]
    >>> sorted(sum(parts, [])) == sorted(paths), [len(part) for part in parts]
    (True, [103, 90, 107])
    """
    index, count = shard
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count == index
