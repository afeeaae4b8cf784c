"""Every artifact the package ships or fetches, in one table (:data:`ARTIFACTS`), and how each is found.

A :class:`ShippedFile` lives inside the installed package; the tests check it against its sha256. A
:class:`RemoteFile` (weights that are not shipped) is looked for in this order: an explicit path, its environment
variable, the agegender cache (``$AGEGENDER_CACHE``, else ``$XDG_CACHE_HOME/agegender/``, else
``~/.cache/agegender/``), else a one-time download into that cache, checked against its sha256 (of the file as
stored, after decompression when the download is compressed) and renamed into place only when whole.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from agegender.paths import default_cache_dir

__all__ = ["ARTIFACTS", "DEFAULT_MODEL", "SHIPPED_MODELS", "RemoteFile", "ShippedFile", "WeightsError", "artifact",
           "sha256_of", "shipped_path"]

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
    agegender.artifacts.WeightsError: a test file not found: '/nowhere/t.bin' (path=) is not a file.
    """

    what: str
    filename: str
    url: str
    sha256: str
    env_var: str
    parameter: str
    compression: str | None = None
    option: str | None = None  # the CLI's option for ``parameter``, which messages name too

    @property
    def _given_as(self) -> str:
        return f"{self.option}, {self.parameter}=" if self.option else f"{self.parameter}="

    def fix_hint(self) -> str:
        unpack = " and decompress it (bunzip2)" if self.compression == "bz2" else ""
        return (f"Download {self.url}{unpack} yourself (sha256 of the {self.filename} file: {self.sha256}) and "
                f"either set {self.env_var}=/path/to/{self.filename} or give its path ({self._given_as})")

    def locate(self, path: str | os.PathLike | None = None) -> Path:
        """The file's path: ``path`` or ``$env_var`` as given (must exist), else the verified cached copy,
        else a download into the cache. Raises :class:`WeightsError` when nothing usable can be had."""
        for given, origin in ((path, self._given_as), (os.environ.get(self.env_var) or None, f"${self.env_var}")):
            if given is not None:
                found = Path(given).expanduser()
                if not found.is_file():
                    raise WeightsError(f"{self.what} not found: {str(given)!r} ({origin}) is not a file.")
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


@dataclass(frozen=True)
class ShippedFile:
    """A file inside the installed package: what it is, its path relative to the package, its sha256."""

    what: str
    filename: str
    sha256: str

    def locate(self) -> Path:
        """The installed file; :class:`WeightsError` when the installation lacks it."""
        path = Path(str(resources.files("agegender").joinpath(self.filename)))
        if not path.is_file():
            raise WeightsError(f"the {self.what} ({path}) is missing: reinstall agegender")
        return path


#: Every artifact by name: the shipped models and files, and the weights fetched on first use.
ARTIFACTS: dict[str, ShippedFile | RemoteFile] = {
    "flagship-int8": ShippedFile(
        "flagship, static int8 (the default model)", "weights/flagship_int8.onnx",
        "0b2ad40b731f2eb7b78a0ad3e08d623c450094d047dbb39b9cc75ffb069fb869"),
    "flagship": ShippedFile(
        "flagship, float32", "weights/flagship.onnx",
        "0640f4e1b1f843a544b98301e1b5b31ac253ada437f5db9c514f19dadcbf01c3"),
    "descriptor-head": ShippedFile(
        "accurate mode's head on dlib face descriptors", "weights/descriptor_head.onnx",
        "9f748131ce36a6765f501b6a12afd7ae4bba322f79ecac1dd18f97245cda2b27"),
    "chip-template": ShippedFile(
        "five-landmark template of the UTKFace chips", "inference/chip_template.json",
        "4670322cd0efc52eb56c44251699b197f35d0a554525a4246958703594993a0f"),
    "yunet": RemoteFile(
        "YuNet face detector", "face_detection_yunet_2023mar.onnx",
        "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", "AGEGENDER_YUNET", "model_path",
        option="--detector"),
    "dlib-resnet": RemoteFile(
        "dlib face-recognition ResNet", "dlib_face_recognition_resnet_model_v1.dat",
        "https://github.com/davisking/dlib-models/raw/master/dlib_face_recognition_resnet_model_v1.dat.bz2",
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30", "AGEGENDER_DLIB_RESNET",
        "descriptor_weights", compression="bz2", option="--descriptor-weights"),
}
#: The age-and-gender models that ship, by the name the CLI, the API and the service take.
SHIPPED_MODELS = ("flagship-int8", "flagship")
DEFAULT_MODEL = "flagship-int8"


def artifact(name: str) -> ShippedFile | RemoteFile:
    """The table's entry ``name``.

    >>> artifact("flagship").filename
    'weights/flagship.onnx'
    """
    if name not in ARTIFACTS:
        raise KeyError(f"no artifact {name!r}; known: {', '.join(ARTIFACTS)}")
    return ARTIFACTS[name]


def shipped_path(name: str) -> Path:
    """The installed path of the shipped file ``name``."""
    entry = artifact(name)
    if not isinstance(entry, ShippedFile):
        raise KeyError(f"{name!r} is not shipped with the package: it is fetched on first use")
    return entry.locate()
