"""Which records of a MeCoVQA file can be asked, found before any model loads (``medplib eval``).

A researcher's own MeCoVQA/LLaVA file may hold records no model can be asked: a missing or
unreadable PNG, a mask of another shape than its image, an empty region mask, a malformed conversation, a question that
writes a token the prompt places itself (``<image>`` mid-question, ``<im_end>``). Each is found here,
with the one-line reason the record would have failed with; ``medplib eval`` stops on the first
(naming how many more there are) or, with ``--skip-bad``, evaluates the rest and reports them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data.mecovqa import Dataset, check_record_files, load_masks, read_png, read_record_list, record_from_json
from ..errors import InputError
from ..schemas import Turn as HistoryTurn
from ..validation import check_question


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out of an evaluation, and why (the one-line error it fails with)."""

    record: str  # its id (or its place in the file when it has none)
    reason: str


@dataclass(frozen=True)
class Screened:
    dataset: Dataset  # the records that can be asked, in file order
    skipped: tuple[SkippedRecord, ...]

    def refusal(self) -> str:
        """One line for a run that does not skip: the first bad record, and how many more there are."""
        first = self.skipped[0].reason
        more = len(self.skipped) - 1
        tail = f" ({more} more record{'s' if more > 1 else ''} cannot be asked either)" if more else ""
        return f"{first}{tail}; --skip-bad evaluates the rest and lists them"


def screen_dataset(path: str | os.PathLike, *, image_folder: str | os.PathLike | None = None,
                   limit: int | None = None) -> Screened:
    """Read ``path`` record by record (the first ``limit`` only); an unreadable or malformed file as a
    whole is still a one-line error."""
    path = Path(path)
    data = read_record_list(path)
    root = Path(image_folder) if image_folder is not None else path.parent
    good, skipped = [], []
    for i, obj in enumerate(data[:limit] if limit is not None else data):
        where = f"{path.name}#{i}"
        try:
            rec = record_from_json(obj, where)
            check_record_files(rec, root, where)
            image = read_png(root / rec.image, record=rec.id)
            region, _ = load_masks(rec, root, image.shape)
            if region is not None and not region.any():  # the runtime refuses it, after the model has loaded
                raise InputError(f"record {where} ({rec.id}): its region mask is empty")
            _check_questions(rec, where)
        except InputError as exc:
            name = obj.get("id", where) if isinstance(obj, dict) else where
            skipped.append(SkippedRecord(str(name), str(exc)))
            continue
        good.append(rec)
    return Screened(Dataset(path, root, tuple(good)), tuple(skipped))


def _check_questions(rec, where: str) -> None:
    """Each turn's question as ``evaluate`` will ask it: its region given or not, the turns before it as history."""
    history: list[HistoryTurn] = []
    for k, turn in enumerate(rec.turns):
        try:
            check_question(turn.plain_question, region=bool(turn.region_paths), history=tuple(history))
        except InputError as exc:
            raise InputError(f"record {where} ({rec.id}): turn {k}: {exc}") from None
        history.append(HistoryTurn(turn.plain_question, turn.plain_answer))


__all__ = ["Screened", "SkippedRecord", "screen_dataset"]
