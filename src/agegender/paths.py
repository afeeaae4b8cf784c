"""Where agegender keeps and looks for files: the user cache, and the shared data folder of a checkout.

Both are resolved in one place so that every command, script and test agrees on them:

- the cache: ``$AGEGENDER_CACHE``, else ``$XDG_CACHE_HOME/agegender``, else ``~/.cache/agegender``;
- the shared folder (data sets, peers' models, photos; never part of the package): ``$AGEGENDER_SHARED``, else
  ``../shared`` from the working directory, else the ``shared`` folder beside the source checkout.

>>> shared_path("data", "UTKFace").parts[-2:]
('data', 'UTKFace')
"""

from __future__ import annotations

import os
from pathlib import Path

#: Default locations inside the shared folder, by what they hold.
SHARED_LAYOUT = {
    "utkface": ("data", "UTKFace"),
    "adience_folds": ("data", "adience_folds"),
    "adience_sample": ("data", "adience_sample"),
    "adience_fold": ("data", "adience_folds", "original_txt_files", "fold_0_data.txt"),  # the sample's fold
    "photos": ("photos",),
    "peers": ("peers",),
    "yunet": ("models", "yunet", "yunet_s_640_640.onnx"),
}
_CHECKOUT_SHARED = Path(__file__).resolve().parents[3] / "shared"


def default_cache_dir() -> Path:
    """``$AGEGENDER_CACHE``, else ``$XDG_CACHE_HOME/agegender``, else ``~/.cache/agegender``."""
    if "AGEGENDER_CACHE" in os.environ:
        return Path(os.environ["AGEGENDER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agegender"


def shared_dir() -> Path:
    """The shared folder: ``$AGEGENDER_SHARED``, else ``../shared`` if it exists, else the checkout's, else
    ``../shared`` (absent: callers say so when they need it)."""
    if os.environ.get("AGEGENDER_SHARED"):
        return Path(os.environ["AGEGENDER_SHARED"])
    relative = Path("..") / "shared"
    if relative.is_dir() or not _CHECKOUT_SHARED.is_dir():
        return relative
    return _CHECKOUT_SHARED


def shared_path(*parts: str) -> Path:
    """A path inside :func:`shared_dir`."""
    return shared_dir().joinpath(*parts)


def default_path(what: str) -> Path:
    """The default location of ``what`` (a key of :data:`SHARED_LAYOUT`) in the shared folder.

    >>> default_path("utkface").name
    'UTKFace'
    """
    if what not in SHARED_LAYOUT:
        raise KeyError(f"no default path for {what!r}; known: {', '.join(SHARED_LAYOUT)}")
    return shared_path(*SHARED_LAYOUT[what])


def check_writable_folder(path: Path, writing: Path | None = None) -> None:
    """A folder a command is about to write into (made if missing): not a file, nor below one. ValueError
    otherwise, before any work is done (naming ``writing``, the file to be written there, if given)."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"cannot write {writing or f'into {path}'}: {folder} is a file, not a folder")
            return


def check_writable_file(path: Path) -> None:
    """A file a command is about to write: not a folder, and below a folder (made if missing), not below a file.
    ValueError otherwise, before anything is written."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder: name the file to write")
    check_writable_folder(path.parent, writing=path)
