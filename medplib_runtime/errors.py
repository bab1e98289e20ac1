"""One-line, user-facing errors. Every message names the problem; callers show ``str(err)``."""

from __future__ import annotations


class MedplibError(Exception):
    """Base class: anything the user can fix or must know. Never carries a traceback to the UI."""


class InputError(MedplibError, ValueError):
    """Bad input: wrong shape, empty prompt, point outside the image, unreadable file, ..."""


class ModelError(MedplibError, RuntimeError):
    """The model could not be built or loaded (missing weights package, corrupt checkpoint)."""


class RuntimeNotReady(MedplibError, RuntimeError):
    """The runtime is still loading, was closed, or its server cannot be reached."""


class RemoteError(MedplibError, RuntimeError):
    """A remote runtime failed: unreachable, wrong token, too large, timed out, busy, or a server
    error. ``code`` says which (``unreachable``, ``auth``, ``too_large``, ``timeout``, ``busy``,
    ``lost``, ``server``, ``protocol``) so callers can decide whether to retry."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownImage(InputError):
    """An image key the runtime does not hold (never set, or evicted): set the image again."""


class Cancelled(MedplibError):
    """The user cancelled (a long call stopped at its next check); nothing was returned or written."""
