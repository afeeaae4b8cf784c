"""Weights that are not shipped in the package: found on disk or fetched once into the user cache, verified.

A :class:`RemoteFile` is looked for in this order: an explicit path, its environment variable, the agegender
cache (``$AGEGENDER_CACHE``, else ``$XDG_CACHE_HOME/agegender/``, else ``~/.cache/agegender/``), else a one-time
download into that cache, checked against its sha256 (of the file as stored, after decompression when the
download is compressed) and renamed into place only when whole.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agegender.data.cache import default_cache_dir

_DOWNLOAD_TIMEOUT_S = 60.0


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded or loaded; the message says what to do."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    """A weights file: what it is (for messages), its file name in the cache, where to fetch it, its sha256,
    the environment variable that points at a local copy, the argument that takes a path to it in the API
    (for messages), and ``bz2`` when the download is bz2-compressed.

    >>> f = RemoteFile("a test file", "t.bin", "https://example.org/t.bin", "0" * 64, "AGEGENDER_TEST", "path")
    >>> f.locate("/nowhere/t.bin")
    Traceback (most recent call last):
    ...
    agegender.inference.remote.WeightsError: a test file not found: path='/nowhere/t.bin' is not a file.
    """

    what: str
    filename: str
    url: str
    sha256: str
    env_var: str
    parameter: str
    compression: str | None = None

    def fix_hint(self) -> str:
        unpack = " and decompress it (bunzip2)" if self.compression == "bz2" else ""
        return (f"Download {self.url}{unpack} yourself (sha256 of the {self.filename} file: {self.sha256}) and "
                f"either set {self.env_var}=/path/to/{self.filename} or pass {self.parameter}=...")

    def locate(self, path: str | os.PathLike | None = None) -> Path:
        """The file's path: ``path`` or ``$env_var`` as given (must exist), else the verified cached copy,
        else a download into the cache. Raises :class:`WeightsError` when nothing usable can be had."""
        for given, origin in ((path, self.parameter), (os.environ.get(self.env_var) or None, self.env_var)):
            if given is not None:
                found = Path(given).expanduser()
                if not found.is_file():
                    raise WeightsError(f"{self.what} not found: {origin}={str(given)!r} is not a file.")
                return found
        cached = default_cache_dir() / self.filename
        if cached.is_file() and sha256_of(cached) == self.sha256:
            return cached
        return self.download(cached)

    def download(self, target: Path) -> Path:
        """Fetch :attr:`url` next to ``target`` (decompressing it as it comes), verify, rename into place."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.filename}-", suffix=".part", dir=target.parent)
        except OSError as exc:
            raise WeightsError(f"cannot write to the weights cache {target.parent}: {exc}. {self.fix_hint()}") \
                from exc
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            unpack = bz2.BZ2Decompressor() if self.compression == "bz2" else None
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(self.url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                while chunk := resp.read(1 << 16):
                    data = unpack.decompress(chunk) if unpack else chunk
                    digest.update(data)
                    out.write(data)
            if digest.hexdigest() != self.sha256:
                raise WeightsError(f"the downloaded {self.what} has sha256 {digest.hexdigest()}, expected "
                                   f"{self.sha256}; the file was discarded. {self.fix_hint()}")
            tmp.chmod(0o644)  # mkstemp creates 0600; the cache entry is an ordinary readable file
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError, ValueError, EOFError) as exc:
            raise WeightsError(f"could not download the {self.what} from {self.url}: {exc}. {self.fix_hint()}") \
                from exc
        finally:
            tmp.unlink(missing_ok=True)
        return target
