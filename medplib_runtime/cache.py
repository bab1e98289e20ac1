"""The user cache folder (converted LLM weights). ``MEDPLIB_CACHE_DIR`` overrides it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("MEDPLIB_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("medplib"))
    root.mkdir(parents=True, exist_ok=True)
    return root
