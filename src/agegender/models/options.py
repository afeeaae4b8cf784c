"""How a builder reads its architecture options: call overrides, then the registered ``config.extra``; and how it
gets torchvision's pretrained weights, from torchvision's download (and its cache) or from a local ``.pth`` file
checked against torchvision's published hash (for offline machines; ``docs/celeba.md``, "Pretrained weights from a
local file")."""

from __future__ import annotations

import hashlib
import re
import urllib.error
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torchvision.models import WeightsEnum

from agegender.model_config import ModelConfig

#: The hash prefix in a torchvision weights file's name (``resnet34-b627a593.pth``), as ``torch.hub`` reads it.
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")


def arch_options(config: ModelConfig, overrides: dict[str, Any], *names: str) -> dict[str, Any]:
    """The options among ``names`` that are set, by ``overrides`` or else by ``config.extra``; the model
    function's defaults cover the rest. Overrides may also repeat any other ``config.extra`` key (loss
    settings), so ``create_model(name, **config.extra)`` rebuilds a model; any other name is a typo."""
    unknown = set(overrides) - set(names) - set(config.extra)
    if unknown:
        raise TypeError(f"{config.name}: unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
    merged = {**config.extra, **overrides}
    return {name: merged[name] for name in names if name in merged}


def torchvision_weights(
    weights: WeightsEnum | str | None, pretrained: bool, imagenet: WeightsEnum
) -> WeightsEnum | str | None:
    """``weights`` as given, or the ImageNet weights when only ``pretrained=True`` is asked for."""
    return imagenet if pretrained and weights is None else weights


def _file_name(entry: WeightsEnum) -> str:
    return entry.url.rsplit("/", 1)[-1]


def _expected(entry: WeightsEnum) -> str:
    """Where to get ``entry``'s file, for error messages."""
    return (f"torchvision's {type(entry).__name__}.{entry.name} weights, {_file_name(entry)} (sha256 starting "
            f"{HASH_IN_NAME.search(_file_name(entry))[1]}), from {entry.url}")  # type: ignore[index]


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, computed once per version of the file (size and mtime key the cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights_file(path: str | Path, imagenet: WeightsEnum) -> WeightsEnum:
    """The entry of ``imagenet``'s enum whose published file ``path`` is: its sha256 must start with the hash
    prefix that torchvision's file name carries (as ``torch.hub`` checks a download). A missing file or another
    file raises an error naming the file expected and where to get it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model_args.weights: no file at {path}; expected {_expected(imagenet)}")
    stat = path.stat()
    digest = _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    entries = [imagenet, *(e for e in type(imagenet) if e is not imagenet)]
    for entry in entries:
        found = HASH_IN_NAME.search(_file_name(entry))
        if found and found[1] and digest.startswith(found[1]):
            return entry
    raise ValueError(f"model_args.weights: {path} is not {_expected(imagenet)}: its sha256 starts {digest[:8]}. "
                     "Download that file (any machine can; then copy it here) and give its path")


_Net = TypeVar("_Net", bound=nn.Module)

def _is_entry(name: str, enum: type[WeightsEnum]) -> bool:
    name = name.removeprefix(f"{enum.__name__}.")
    return name == "DEFAULT" or name in enum.__members__


def torchvision_net(factory: Callable[..., _Net], weights: WeightsEnum | str | None, pretrained: bool,
                    imagenet: WeightsEnum) -> _Net:
    """``factory`` (e.g. ``torchvision.models.resnet34``) built with the weights asked for: none; ``imagenet``
    when only ``pretrained`` is set; an entry of its enum or that entry's name, which torchvision downloads
    once into its cache (``torch.hub.get_dir()/checkpoints``); or the path of that file on this machine, checked
    by :func:`verify_weights_file`, which needs no network."""
    chosen = torchvision_weights(weights, pretrained, imagenet)
    if isinstance(chosen, str | Path) and not _is_entry(str(chosen), type(imagenet)):
        verify_weights_file(chosen, imagenet)
        net = factory(weights=None)
        net.load_state_dict(torch.load(Path(chosen).expanduser(), map_location="cpu", weights_only=True))
        return net
    try:
        return factory(weights=chosen)
    except urllib.error.URLError as err:
        entry = type(imagenet).verify(chosen)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise FileNotFoundError(f"could not download {_expected(entry)} ({err.reason}). Offline: copy that file "
                                f"into {cache}, or give its path as model_args.weights") from err
