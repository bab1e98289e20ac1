"""What made a labels layer's labels, kept in the layer's metadata so the writer can save it as
provenance (a sidecar beside any format; a DICOM-SEG also names the algorithm). No Qt here.

Each MedPLIB write appends one record: the prompt (box, points or painted region on a slice) or the
chat turn (question and answer), and which runtime answered (preset, weights id).
"""

from __future__ import annotations

from medplib_runtime.provenance import PromptRecord, Provenance, weights_fingerprint
from medplib_runtime.schemas import Prompt, SliceRef, Turn

PROVENANCE_KEY = "medplib_provenance"


def record_write(layer, *, runtime_info=None, prompt: Prompt | None = None, where: SliceRef | None = None,
                 question: str | None = None, answer: str | None = None) -> None:
    """Append what made the latest write into ``layer`` to its metadata."""
    log = layer.metadata.setdefault(PROVENANCE_KEY, {"prompts": [], "turns": []})
    if runtime_info is not None:
        log["preset"] = runtime_info.preset
        log["weights"] = [f"{p.name}: {p.source}" for p in runtime_info.parts]
        log["weights_id"] = weights_fingerprint(runtime_info)
    if prompt is not None and where is not None:
        r = PromptRecord.from_prompt(prompt, where)
        log["prompts"].append({"axis": r.axis, "index": r.index, "kind": r.kind, "box": r.box,
                               "points": [list(p) for p in r.points], "mask_voxels": r.mask_voxels})
    if question is not None:
        log["turns"].append({"question": question, "answer": answer or ""})


def provenance_of(metadata: dict, source_image: str | None) -> Provenance | None:
    """The layer's provenance, or None when MedPLIB never wrote into it (a user's own layer)."""
    log = metadata.get(PROVENANCE_KEY)
    if not log:
        return None
    prompts = tuple(PromptRecord(int(p["axis"]), int(p["index"]), str(p["kind"]),
                                 None if p.get("box") is None else tuple(p["box"]),
                                 tuple(tuple(pt) for pt in p.get("points", ())), p.get("mask_voxels"))
                    for p in log.get("prompts", ()))
    turns = tuple(Turn(t["question"], t["answer"]) for t in log.get("turns", ()))
    return Provenance(preset=log.get("preset"), weights=tuple(log.get("weights", ())),
                      weights_id=log.get("weights_id"), prompts=prompts, turns=turns, source_image=source_image)
