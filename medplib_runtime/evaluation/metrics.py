"""MedPLIB's metrics (its ``validate_seg`` and ``cal_metric.py``), numpy only.

Segmentation: per sample, IoU of the thresholded predicted mask with the ground truth (an empty
union, or no predicted mask at all, scores 0); Dice = 2·IoU/(1+IoU) per sample; both averaged
over samples ("mIoU", "mDice"), also per modality. Masks are 2D ``(y, x)`` arrays.

VQA text: both strings are lower-cased and normalised like LLaVA-Med's ``normalize_word`` (the
function MedPLIB imports): punctuation removed, or replaced by a space when it sits inside a word;
periods not followed by a digit dropped; number words zero..ten → digits; articles a/an/the
dropped. (Its table of contractions without apostrophes, "dont" → "don't", is not reproduced.)
Open questions: whitespace word bags; tp = candidate count of words that are also in the
reference, fp = candidate count of the others, fn = reference count of words missing from the
candidate (MedPLIB's exact counting); precision tp/(tp+fp), recall tp/(tp+fn), F1; an empty
candidate or reference, or tp = 0, scores 0. Closed questions: exact match of normalised strings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = ";/[]\"{}()=+\\_-><@`,?!"
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its point)


def normalize_text(text: str) -> str:
    """Lower-case and normalise an answer the way MedPLIB's VQA scorer does (module doc)."""
    out = text
    has_digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCT:
        # a mark next to a space (or any mark when "1,000" appears) is dropped; inside a word it splits it
        out = out.replace(p, "" if (p + " " in text or " " + p in text or has_digit_comma) else " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(w for w in words if w not in _ARTICLES).replace(",", "")


@dataclass(frozen=True)
class TextScore:
    precision: float
    recall: float
    f1: float


def open_score(prediction: str, reference: str) -> TextScore:
    """Word-bag precision/recall/F1 of an open answer (MedPLIB's ``calculate_f1score``)."""
    cand = Counter(normalize_text(prediction).split())
    ref = Counter(normalize_text(reference).split())
    if not cand or not ref:
        return TextScore(0.0, 0.0, 0.0)
    tp = sum(n for w, n in cand.items() if w in ref)
    fp = sum(n for w, n in cand.items() if w not in ref)
    fn = sum(n for w, n in ref.items() if w not in cand)
    if tp == 0:
        return TextScore(0.0, 0.0, 0.0)
    p, r = tp / (tp + fp), tp / (tp + fn)
    return TextScore(p, r, 2 * p * r / (p + r))


def closed_correct(prediction: str, reference: str) -> bool:
    """Exact match after normalisation (MedPLIB's closed/yes-no accuracy)."""
    return normalize_text(prediction) == normalize_text(reference)


def balanced_accuracy(references: Iterable[str], correct: Iterable[bool]) -> float:
    """Closed accuracy averaged over the reference answers ("yes", "no", "left", ...): each answer's own
    accuracy, then their mean (ours, next to MedPLIB's plain accuracy). A model that says "yes" to
    everything scores 0.5 on yes/no questions however many of them are "yes"; 0.0 for none."""
    by_answer: dict[str, list[bool]] = {}
    for ref, ok in zip(references, correct, strict=True):
        by_answer.setdefault(normalize_text(ref), []).append(bool(ok))
    return float(np.mean([np.mean(v) for v in by_answer.values()])) if by_answer else 0.0


def mask_iou(prediction: np.ndarray | None, reference: np.ndarray) -> float:
    """IoU of two 2D ``(y, x)`` masks (non-zero = inside); None or an empty union → 0."""
    if prediction is None:
        return 0.0
    pred, ref = np.asarray(prediction) != 0, np.asarray(reference) != 0
    if pred.shape != ref.shape:
        raise ValueError(f"predicted mask {pred.shape} and reference {ref.shape} differ in shape")
    union = np.logical_or(pred, ref).sum()
    return float(np.logical_and(pred, ref).sum() / union) if union else 0.0


def dice_from_iou(iou: float) -> float:
    """MedPLIB's per-sample Dice = 2·IoU/(1+IoU) (equal to 2|A∩B|/(|A|+|B|))."""
    return 2.0 * iou / (1.0 + iou)


@dataclass(frozen=True)
class SegSummary:
    n: int
    miou: float
    mdice: float


def summarize_seg(ious: list[float]) -> SegSummary:
    """Average per-sample IoU and Dice (Dice computed per sample, then averaged)."""
    if not ious:
        return SegSummary(0, 0.0, 0.0)
    return SegSummary(len(ious), float(np.mean(ious)), float(np.mean([dice_from_iou(i) for i in ious])))


def names_structure(prediction: str, name: str, others: Iterable[str] = ()) -> bool:
    """Whether the answer names the structure: its normalised words appear in order, as whole words
    ("grey matter" in "it is the grey matter"; not "matter" alone), and none of ``others`` (the
    dataset's other structure names) does — "The lesion is a cyst." names no one structure."""
    words = normalize_text(prediction).split()

    def said(label: str) -> bool:
        target = normalize_text(label).split()
        n = len(target)
        return n > 0 and any(words[i:i + n] == target for i in range(len(words) - n + 1))

    return said(name) and not any(said(o) for o in others if normalize_text(o) != normalize_text(name))
