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
