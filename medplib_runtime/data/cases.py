"""Case specifications for ``medplib build-data``: an image, its label volume and a small metadata JSON.

Metadata (a JSON object, in its own file or inline in the cases list)::

    {"modality": "MR", "body_region": "brain", "labels": {"1": "lesion"}, "dataset": "pyradiomics"}

A cases file is a JSON list of ``{"id": ..., "image": ..., "label": ..., "meta": "meta.json"}`` or
the same with the metadata fields inline; an optional ``"split"`` (train/val/test) pins a case, and
an optional ``"fetch"`` (a command) says how to get volumes that are not shipped when they are missing.
Relative paths start at the cases file's folder. Errors name the case.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaseSpec:
    """One labelled volume. ``labels`` maps label id → name (every non-zero id needs one)."""

    id: str
    image: Path
    label: Path
    modality: str  # "CT", "MR", ...: CT answers intensities in HU
    body_region: str
    labels: dict[int, str] = field(compare=False)
    dataset: str = "custom"
    split: str | None = None  # None: assigned by the builder


def _json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from None


def case_from_dict(obj, *, base: Path, where: str) -> CaseSpec:
    """Validate one case (paths relative to ``base``); ``where`` names it in errors."""
    if not isinstance(obj, dict):
        raise InputError(f"case {where}: must be a JSON object")
    meta = dict(obj)
    if "meta" in obj:
        extra = _json(base / str(obj["meta"]), f"case {where}: metadata")
        if not isinstance(extra, dict):
            raise InputError(f"case {where}: metadata {obj['meta']} must be a JSON object")
        meta = {**extra, **{k: v for k, v in obj.items() if k != "meta"}}
    for key in ("image", "label", "modality", "body_region", "labels"):
        if key not in meta:
            raise InputError(f"case {where}: missing '{key}'")
    image, label = base / str(meta["image"]), base / str(meta["label"])
    case_id = str(meta.get("id") or Path(str(meta["image"])).name.split(".")[0])
    name = f"{where} ({case_id})"
    fetch = meta.get("fetch")  # how to get files that are not shipped (a command), said when they are missing
    for what, p in (("image", image), ("label", label)):
        if not p.exists():
            hint = f" (get it with: {fetch})" if isinstance(fetch, str) and fetch.strip() else ""
            raise InputError(f"case {name}: {what} file {p} not found{hint}")
    if not isinstance(meta["modality"], str) or not meta["modality"].strip():
        raise InputError(f"case {name}: 'modality' must be a non-empty string such as CT or MR")
    labels = meta["labels"]
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"case {name}: 'labels' must map label ids to names, e.g. {{\"1\": \"lesion\"}}")
    try:
        names = {int(k): str(v).strip() for k, v in labels.items()}
    except ValueError:
        raise InputError(f"case {name}: label ids must be integers, got {list(labels)}") from None
    if any(not v for v in names.values()) or any(k <= 0 for k in names):
        raise InputError(f"case {name}: label ids must be > 0 with non-empty names, got {labels}")
    if len(set(names.values())) != len(names):
        raise InputError(f"case {name}: label names must be unique, got {labels}")
    split = meta.get("split")
    if split is not None and split not in SPLITS:
        raise InputError(f"case {name}: split {split!r} is not one of {', '.join(SPLITS)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", case_id):
        raise InputError(f"case {name}: id must be letters, digits, '.', '_' or '-'")
    return CaseSpec(case_id, image, label, meta["modality"].strip().upper(), str(meta["body_region"]), names,
                    str(meta.get("dataset", "custom")), split)


def load_cases(path: str | os.PathLike) -> list[CaseSpec]:
    """Read a cases JSON list; case ids must be unique (they name the patient for the split)."""
    path = Path(path)
    data = _json(path, "cases file")
    if not isinstance(data, list) or not data:
        raise InputError(f"cases file {path} must be a non-empty JSON list")
    cases = [case_from_dict(obj, base=path.parent, where=f"{path.name}#{i}") for i, obj in enumerate(data)]
    seen = set()
    for c in cases:
        if c.id in seen:
            raise InputError(f"cases file {path}: case id {c.id!r} appears twice")
        seen.add(c.id)
    return cases
