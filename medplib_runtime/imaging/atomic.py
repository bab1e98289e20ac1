"""Write a file so that nobody ever sees half of it: into a hidden temp file beside it, then renamed over."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError


def write_then_rename(path: Path, write: Callable[[Path], None], *, suffix: str,
                      reason: Callable[[BaseException], str] = lambda exc: getattr(exc, "strerror", None) or str(exc)
                      ) -> Path:
    """``write(tmp)`` then ``tmp`` → ``path``. A writer's failure (OSError, or ITK's RuntimeError) is one
    line naming ``path``; the temp file never survives. ``suffix`` keeps the format writers pick by name."""
    # a fresh name (not mkstemp) so the writer creates the file with the usual umask permissions
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {reason(exc)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
