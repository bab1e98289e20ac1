"""Reading a JSON file a user gave, with one-line errors that name the file and what it is."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError


def read_json(path: str | Path, what: str, *, expect: type) -> object:
    """The parsed file; InputError if unreadable, not JSON, or not a JSON ``expect`` (dict/list)."""
    try:
        value = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(value, expect):
        kind = "an object" if expect is dict else "a list of records"
        raise InputError(f"{what} {path} must be JSON {kind}")
    return value
