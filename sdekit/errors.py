"""Errors that name what is wrong and what is valid.

Every error a user can cause is an :class:`SdekitError`; the CLI prints its
message (no traceback unless ``--debug``) and exits with status 2.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class SdekitError(Exception):
    """Base class of user-facing errors."""


class UnknownNameError(SdekitError, KeyError):
    """An unknown name (sampler, option, schedule, SDE, mixture, ...)."""

    def __init__(self, what: str, name: str, valid: Iterable[str]):
        self.what, self.name, self.valid = what, name, sorted(valid)
        super().__init__(self._message())

    def _message(self) -> str:
        msg = f"unknown {self.what} {self.name!r}"
        close = difflib.get_close_matches(str(self.name), self.valid, n=1, cutoff=0.6)
        if close:
            msg += f"; did you mean {close[0]!r}?"
        listed = ", ".join(self.valid) if self.valid else "(none)"
        return f"{msg} (valid: {listed})"

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class OptionError(SdekitError, ValueError):
    """An option of the wrong type or out of range."""


class ShapeError(SdekitError, ValueError):
    """A tensor or array of the wrong shape."""


class PluginError(SdekitError):
    """A plugin that failed to load or registered something invalid."""
