"""``medplib eval``: run any Runtime over a MeCoVQA-format file and score it with MedPLIB's metrics.

Only the ``Runtime`` protocol is used (local or remote alike). Each record's PNG is a 2D ``(y, x)``
image, sent as float32 in [0, 1] (as training reads it) with ``modality="other"``; the question is
asked on slice ``SliceRef(0, 0)`` with the record's region (a mask prompt) if it has one. Earlier
turns of a multi-turn record go in as history with their *reference* answers (teacher forcing).

Scoring per turn: a turn whose reference has ``<mask>`` paths is a grounding sample per mask
(predicted mask i against reference mask i; a missing prediction scores IoU 0 — MedPLIB scored
only the first mask); otherwise closed turns score exact match, open turns word-bag P/R/F1.
Predictions are written as JSONL with MedPLIB's field names (``question_id``, ``image_path``,
``prompt``, ``gt``, ``text``, ``answer_id``, ``model_id``, ``answer_type``, ``metadata``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.mecovqa import Dataset, load_masks, read_dataset, read_png
from ..errors import InputError
from ..protocol import Runtime
from ..schemas import AskRequest, Prompt, SliceRef
from ..schemas import Turn as HistoryTurn
from .screening import SkippedRecord
from .sources import SOURCES, image_source

GROUPS = ("all", "source", "modality", "question_type", "topic", "source_topic", "case")
from .metrics import balanced_accuracy, closed_correct, dice_from_iou, mask_iou, names_structure, open_score, summarize_seg


@dataclass(frozen=True)
class Row:
    """One line of the report: a group of turns and MedPLIB's metrics over it."""

    group: str  # "all", "source" (real/phantom), "modality", "question_type", "topic", "source_topic" or "case"
    key: str
    n_seg: int = 0
    miou: float = 0.0
    mdice: float = 0.0
    n_open: int = 0
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    n_closed: int = 0
    accuracy: float = 0.0
    n_named: int = 0  # region questions asking what a region is (our datasets' R what/choice)
    named: float = 0.0  # share whose answer names the right structure
    balanced: float = 0.0  # closed accuracy averaged over the reference answers (ours): a bias scores 1/answers
    n_abstained: int = 0  # grounding answers that withheld their mask (not confident; scored IoU 0)


@dataclass(frozen=True)
class EvalReport:
    rows: tuple[Row, ...]
    records: int
    turns: int
    predictions: Path | None
    seconds: float
    untrained_parts: tuple[str, ...] = ()
    skipped: tuple[SkippedRecord, ...] = ()  # records left out (``skip_bad``), each with its one-line reason

    def row(self, group: str, key: str) -> Row:
        return next(r for r in self.rows if r.group == group and r.key == key)

    def headline(self) -> str:
        """Real images and phantoms side by side, real first (headline.py)."""
        from .headline import headline_table

        return headline_table(self)

    def table(self) -> str:
        head = f"{'group':<24} {'n seg':>5} {'mIoU':>6} {'mDice':>6} {'n open':>6} {'P':>6} {'R':>6} {'F1':>6}" \
               f" {'n closed':>8} {'acc':>6} {'bal':>6} {'n named':>7} {'named':>6}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if r.group == "source_topic":
                continue  # in the headline, by source
            name = "all" if r.group == "all" else f"{'type' if r.group == 'question_type' else r.group}={r.key}"
            lines.append(f"{name:<24} {r.n_seg:>5} {r.miou:>6.3f} {r.mdice:>6.3f} {r.n_open:>6} {r.precision:>6.3f}"
                         f" {r.recall:>6.3f} {r.f1:>6.3f} {r.n_closed:>8} {r.accuracy:>6.3f} {r.balanced:>6.3f}"
                         f" {r.n_named:>7} {r.named:>6.3f}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} record{'s' if len(self.skipped) > 1 else ''} that cannot be"
                         f" asked (first: {self.skipped[0].reason})")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"records": self.records, "turns": self.turns, "seconds": round(self.seconds, 2),
                "predictions": str(self.predictions) if self.predictions else None,
                "untrained_parts": list(self.untrained_parts), "rows": [r.__dict__ for r in self.rows],
                "skipped": [s.__dict__ for s in self.skipped]}


@dataclass
class _Scores:
    ious: list[float] = field(default_factory=list)
    open: list = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)
    closed_refs: list[str] = field(default_factory=list)
    named: list[bool] = field(default_factory=list)
    abstained: int = 0

    def add(self, answer: "_Answer") -> None:
        self.abstained += bool(answer.meta.get("abstained"))
        if answer.ious:
            self.ious.extend(answer.ious)
        elif answer.closed is not None:
            self.closed.append(answer.closed[0])
            self.closed_refs.append(answer.closed[1])
        elif answer.open is not None:
            self.open.append(answer.open)

    def row(self, group: str, key: str) -> Row:
        seg = summarize_seg(self.ious)
        mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
        return Row(group, key, seg.n, seg.miou, seg.mdice, len(self.open), mean([s.precision for s in self.open]),
                   mean([s.recall for s in self.open]), mean([s.f1 for s in self.open]), len(self.closed),
                   mean([float(c) for c in self.closed]), len(self.named), mean([float(c) for c in self.named]),
                   balanced_accuracy(self.closed_refs, self.closed), self.abstained)


def evaluate(runtime: Runtime, dataset: str | Path | Dataset, *, image_folder: str | Path | None = None,
             predictions: str | Path | None = None, limit: int | None = None, max_new_tokens: int = 64,
             threshold: float | None = None, model_id: str = "medplib", skip_bad: bool = False,
             skipped: tuple[SkippedRecord, ...] = (),
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Ask ``runtime`` every question of ``dataset`` and score the answers (module doc).

    ``skip_bad``: a record the runtime refuses as bad input (a one-line error) is left out whole — none of its turns
    is scored or written — and listed in the report; otherwise the error stops the run, as any
    other failure (server unreachable, model error) always does. ``skipped``:
    records already left out before (``screening.screen_dataset``), listed first."""
    t0 = time.perf_counter()
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset, image_folder=image_folder)
    records = ds.records[:limit] if limit is not None else ds.records
    structures = sorted({n for n in map(asked_name, records) if n})  # an answer naming two of them is wrong
    groups: dict[tuple[str, str], _Scores] = {}
    out = Path(predictions) if predictions else None
    sink = out.open("w", encoding="utf-8") if out else None
    untrained: tuple[str, ...] = ()
    left_out = list(skipped)
    qid = asked = 0
    try:
        for i, rec in enumerate(records):
            if progress:
                progress(i, len(records))
            try:
                scored = _ask_record(runtime, ds.root, rec, max_new_tokens=max_new_tokens, threshold=threshold)
            except InputError as exc:
                if not skip_bad:
                    raise
                left_out.append(SkippedRecord(rec.id, str(exc)))
                continue
            asked += 1
            for answer in scored:
                untrained = untrained or answer.untrained_parts
                meta = answer.meta
                source = image_source(rec)
                keys = [("all", "all"), ("source", source), ("modality", rec.modality),
                        ("question_type", rec.question_type)]
                topic = rec.extra.get("topic")
                if isinstance(topic, str):
                    kind = f"{rec.question_type}:{topic}"
                    keys += [("topic", kind), ("source_topic", f"{source}:{kind}")]
                if isinstance(rec.extra.get("case"), str):
                    keys.append(("case", rec.extra["case"]))
                targets: list[_Scores] = [groups.setdefault(g, _Scores()) for g in keys]
                for s in targets:
                    s.add(answer)
                name = asked_name(rec)
                if name:
                    meta["named"] = names_structure(answer.text, name, structures)
                    for s in targets:
                        s.named.append(meta["named"])
                if sink:
                    sink.write(json.dumps({
                        "question_id": qid, "image_path": rec.image, "prompt": answer.question, "gt": answer.reference,
                        "text": answer.text, "answer_id": f"{rec.id}#{meta['turn']}", "model_id": model_id,
                        "answer_type": "closed" if rec.answer_type == "closed" else "open", "metadata": meta}) + "\n")
                    sink.flush()
                qid += 1
    finally:
        if sink:
            sink.close()
    order = sorted(groups, key=lambda g: (GROUPS.index(g[0]), SOURCES.index(g[1]) if g[0] == "source" else 0, g[1]))
    rows = tuple(groups[g].row(*g) for g in order)
    return EvalReport(rows, asked, qid, out, time.perf_counter() - t0, untrained, tuple(left_out))


@dataclass
class _Answer:
    """One turn asked and scored, kept until its whole record has been asked."""

    question: str
    reference: str
    text: str
    meta: dict
    untrained_parts: tuple[str, ...]
    ious: list[float] = field(default_factory=list)
    closed: tuple[bool, str] | None = None  # (correct, the reference answer)
    open: object | None = None  # metrics.OpenScore


def _ask_record(runtime: Runtime, root: Path, rec, *, max_new_tokens: int, threshold: float | None) -> list[_Answer]:
    """Every turn of ``rec`` asked (earlier turns as history, with their reference answers) and scored;
    a refusal is an InputError naming the record."""
    image = read_png(root / rec.image, record=rec.id)
    region, gt_masks = load_masks(rec, root, image.shape)
    try:
        key = runtime.set_image(image.astype(np.float32) / 255.0, modality="other")
    except InputError as exc:
        raise InputError(f"record {rec.id}: {exc}") from None
    history: list[HistoryTurn] = []
    mask_cursor = 0
    answers = []
    for t, turn in enumerate(rec.turns):
        question = turn.plain_question
        request = AskRequest(key, SliceRef(0, 0), question, region=Prompt(mask=region) if turn.region_paths else None,
                             history=tuple(history), max_new_tokens=max_new_tokens, threshold=threshold)
        try:
            result = runtime.ask(request)
        except InputError as exc:  # the record's fault; an unreachable server or a model failure is not
            raise InputError(f"record {rec.id}: {exc}") from None
        meta = {"id": rec.id, "turn": t, "modality": rec.modality, "question_type": rec.question_type,
                "topic": rec.extra.get("topic"), "source": image_source(rec), "pred_masks": len(result.masks),
                "abstained": result.abstained, "confidence": result.confidence}
        if result.routing is not None:  # share of the answer's tokens per expert (MedPLIB's routing plots)
            meta["routing"] = dict(zip(result.routing.expert_names, map(float, result.routing.overall())))
        answer = _Answer(question, turn.plain_answer, result.text, meta, tuple(result.untrained_parts))
        n_ref = len(turn.mask_paths)
        if n_ref:
            refs = gt_masks[mask_cursor:mask_cursor + n_ref]
            mask_cursor += n_ref
            answer.ious = [mask_iou(result.masks[j] if j < len(result.masks) else None, ref)
                           for j, ref in enumerate(refs)]
            meta.update(iou=answer.ious, dice=[dice_from_iou(v) for v in answer.ious])
        elif rec.answer_type == "closed":
            ok = closed_correct(result.text, turn.plain_answer)
            meta["correct"] = ok
            answer.closed = (ok, turn.plain_answer)
        else:
            answer.open = open_score(result.text, turn.plain_answer)
            meta.update(precision=answer.open.precision, recall=answer.open.recall, f1=answer.open.f1)
        answers.append(answer)
        history.append(HistoryTurn(question, turn.plain_answer))
    return answers


def asked_name(rec) -> str | None:
    """The structure a region question asks to name (our builder's R ``what``/``choice`` records)."""
    if rec.question_type != "R" or rec.extra.get("topic") not in ("what", "choice"):
        return None
    facts = rec.extra.get("facts")
    return facts.get("name") if isinstance(facts, dict) and isinstance(facts.get("name"), str) else None
