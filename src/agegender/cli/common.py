"""What every subcommand shares: the user-facing error type and the check for optional extras."""

from __future__ import annotations

import importlib


class UserError(Exception):
    """A problem the user can fix: printed as one line with exit code 2, never a traceback."""


def require_extra(extra: str, *modules: str) -> None:
    """Raise UserError naming the pip extra to install when one of ``modules`` cannot be imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"this command needs the '{extra}' extra: pip install 'agegender[{extra}]' "
                            f"({err})") from err
