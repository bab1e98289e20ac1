"""MeCoVQA / LLaVA-format records: typed, validated, read and written.

A record (one JSON object in a list)::

    {"id": "...", "image": "images/mr_00--pyradiomics--brain1--z_0016.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is in <region>masks/r.png</region>?"},
                       {"from": "gpt", "value": "The lesion."}],
     "modality": "MR", "question_type": "R", "answer_type": "open", ...}

A human turn may carry ``<region>PATH</region>`` (the region prompt, a PNG mask of the image's
shape); a gpt turn carries ``<SEG>`` once per object, each followed by ``<mask>PATH</mask>`` (its
ground truth). Paths are relative to the image folder (default: the JSON file's folder).
``question_type`` (G grounding, R region VQA, C complex VQA) and ``answer_type`` (``open`` /
``closed``, MedPLIB's names) are ours; records without them are still valid (MeCoVQA itself).
Images are 2D ``(y, x)`` 8-bit PNGs. Every error is one line naming the record.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

REGION_TAG = re.compile(r"<region>(.*?)</region>")
MASK_TAG = re.compile(r"\s*<mask>(.*?)</mask>")
SEG = "<SEG>"
QUESTION_TYPES = ("G", "R", "C")
ANSWER_TYPES = ("open", "closed")


@dataclass(frozen=True)
class Turn:
    """One human question and the gpt answer, exactly as stored (tags included)."""

    question: str
    answer: str

    @property
    def region_paths(self) -> tuple[str, ...]:
        return tuple(REGION_TAG.findall(self.question))

    @property
    def mask_paths(self) -> tuple[str, ...]:
        return tuple(MASK_TAG.findall(self.answer))

    @property
    def plain_question(self) -> str:
        """Without ``<image>``; each ``<region>PATH</region>`` becomes ``<region>`` (where the token goes)."""
        q = self.question.replace("<image>\n", "").replace("<image>", "").strip()
        return REGION_TAG.sub("<region>", q)

    @property
    def plain_answer(self) -> str:
        """The answer text the model should produce: ``<mask>`` parts removed."""
        return MASK_TAG.sub("", self.answer).strip()


@dataclass(frozen=True)
class Record:
    """One MeCoVQA record. ``extra`` keeps every other field (modality, split, facts, ...)."""

    id: str
    image: str
    turns: tuple[Turn, ...]
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def modality(self) -> str:
        """Our ``modality`` field, else MedPLIB's convention: the file name's prefix before ``_``."""
        if self.extra.get("modality"):
            return str(self.extra["modality"])
        return Path(self.image).name.split("_")[0] or "other"

    @property
    def question_type(self) -> str:
        if self.extra.get("question_type") in QUESTION_TYPES:
            return self.extra["question_type"]
        if any(t.mask_paths or SEG in t.answer for t in self.turns):
            return "G"
        return "R" if any(t.region_paths for t in self.turns) else "C"

    @property
    def answer_type(self) -> str:
        value = str(self.extra.get("answer_type", "open")).lower()
        return "closed" if value in ("closed", "yes/no") else "open"

    def to_json(self) -> dict:
        convs = []
        for i, t in enumerate(self.turns):
            convs.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + t.question})
            convs.append({"from": "gpt", "value": t.answer})
        return {"id": self.id, "image": self.image, "conversations": convs, **self.extra}


def record_from_json(obj, where: str) -> Record:
    """Validate the shape of one record (no file access); ``where`` names it in errors."""
    if not isinstance(obj, dict):
        raise InputError(f"record {where}: must be a JSON object, got {type(obj).__name__}")
    name = f"{where} ({obj.get('id', obj.get('image', '?'))})"
    image = obj.get("image")
    if not isinstance(image, str) or not image:
        raise InputError(f"record {name}: needs an 'image' path (a string)")
    convs = obj.get("conversations")
    if not isinstance(convs, list) or len(convs) < 2 or len(convs) % 2:
        raise InputError(f"record {name}: 'conversations' must be a list of human/gpt pairs")
    turns = []
    for k, (q, a) in enumerate(zip(convs[0::2], convs[1::2])):
        if not (isinstance(q, dict) and isinstance(a, dict) and q.get("from") == "human" and a.get("from") == "gpt"):
            raise InputError(f"record {name}: turn {k} must be a human then a gpt message")
        if not isinstance(q.get("value"), str) or not isinstance(a.get("value"), str):
            raise InputError(f"record {name}: turn {k} has a non-string 'value'")
        question = q["value"]
        if k == 0:
            question = question.replace("<image>\n", "", 1).replace("<image>", "", 1)
        turns.append(Turn(question, a["value"]))
        n_seg, n_mask = a["value"].count(SEG), len(MASK_TAG.findall(a["value"]))
        if n_mask and n_mask != n_seg:
            raise InputError(f"record {name}: turn {k} has {n_seg} <SEG> but {n_mask} <mask> paths")
    medplib_answer_types = ANSWER_TYPES + ("yes/no", "other", "number")  # its cal_metric.py also accepts these
    for key, allowed in (("question_type", QUESTION_TYPES), ("answer_type", medplib_answer_types)):
        if key in obj and obj[key] not in allowed:
            raise InputError(f"record {name}: {key} {obj[key]!r} is not one of {', '.join(allowed)}")
    extra = {k: v for k, v in obj.items() if k not in ("id", "image", "conversations")}
    return Record(str(obj.get("id", where)), image, tuple(turns), extra)


@dataclass(frozen=True)
class Dataset:
    """Records of one JSON file, with the folder their paths start from."""

    path: Path
    root: Path
    records: tuple[Record, ...]

    def __len__(self) -> int:
        return len(self.records)


def read_dataset(path: str | os.PathLike, *, image_folder: str | os.PathLike | None = None,
                 check_files: bool = True) -> Dataset:
    """Read and validate a MeCoVQA/LLaVA JSON list. ``check_files``: every image/region/mask exists."""
    path = Path(path)
    data = read_record_list(path)
    root = Path(image_folder) if image_folder is not None else path.parent
    records = tuple(record_from_json(obj, f"{path.name}#{i}") for i, obj in enumerate(data))
    if check_files:
        for i, rec in enumerate(records):
            check_record_files(rec, root, f"{path.name}#{i}")
    return Dataset(path, root, records)


def check_record_files(rec: Record, root: Path, where: str) -> None:
    """Every file the record names (image, regions, masks) exists under ``root``."""
    for rel in (rec.image, *(p for t in rec.turns for p in (*t.region_paths, *t.mask_paths))):
        if not (root / rel).is_file():
            raise InputError(f"record {where} ({rec.id}): file {rel} not found under {root}")


def read_record_list(path: Path) -> list:
    """The JSON list of a dataset file, unvalidated (one-line errors for the file as a whole)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"dataset {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read dataset {path}: {exc.strerror}") from None
    except ValueError as exc:  # JSONDecodeError and bad UTF-8
        raise InputError(f"dataset {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise InputError(f"dataset {path} must be a JSON list of records, got {type(data).__name__}")
    return data


def write_dataset(records: list[Record] | tuple[Record, ...], path: str | os.PathLike) -> Path:
    """Write records as a JSON list (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([r.to_json() for r in records], indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_png(path: str | os.PathLike, *, what: str = "image", record: str = "?") -> np.ndarray:
    """A PNG as a 2D ``(y, x)`` uint8 array (colour images are converted to grey)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        raise InputError(f"record {record}: cannot read {what} {path}: {exc}") from None


def write_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """A 2D ``(y, x)`` uint8 array → 8-bit grey PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(path, optimize=False)


def load_masks(record: Record, root: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, tuple[np.ndarray, ...]]:
    """The record's region (or None) and its ``<mask>`` ground truths, as bool ``(y, x)`` arrays."""
    name = record.id
    region, masks = None, []
    for t in record.turns:
        for rel in t.region_paths:
            r = read_png(root / rel, what="region mask", record=name) > 0
            if r.shape != shape:
                raise InputError(f"record {name}: region mask {rel} is {r.shape}, the image {shape}")
            region = r
        for rel in t.mask_paths:
            m = read_png(root / rel, what="mask", record=name) > 0
            if m.shape != shape:
                raise InputError(f"record {name}: mask {rel} is {m.shape}, the image {shape}")
            masks.append(m)
    return region, tuple(masks)
