"""MedPLIB's metric functions against hand-computed values (empty predictions included)."""

from __future__ import annotations

import numpy as np
import pytest

from medplib_runtime.evaluation.metrics import (balanced_accuracy, closed_correct, dice_from_iou, mask_iou, names_structure, normalize_text,
                                                open_score,
                                                summarize_seg)


@pytest.mark.parametrize("text, expected", [
    ("The lesion, in the LEFT lobe.", "lesion in left lobe"),
    ("Yes.", "yes"),
    ("two", "2"),
    ("12.5 mm", "12.5 mm"),  # a period before a digit stays
    ("1,000 mL", "1000 ml"),  # digit comma: punctuation is removed, not spaced
    ("grey-matter", "grey matter"),  # a mark inside a word splits it
    ("An MRI", "mri"),
    ("", ""),
])
def test_normalize(text, expected):
    assert normalize_text(text) == expected


def test_open_score_hand_computed():
    # cand {lesion, is, large}, ref {large, lesion}: tp 2, fp 1, fn 0
    s = open_score("The lesion is large", "A large lesion")
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(1.0) and s.f1 == pytest.approx(0.8)
    # cand {lesion, 12.0, mm²}, ref {lesion, measures, 12.0, mm²}: tp 3, fp 0, fn 1
    s = open_score("lesion 12.0 mm²", "The lesion measures 12.0 mm².")
    assert (s.precision, s.recall) == (1.0, 0.75) and s.f1 == pytest.approx(6 / 7)


def test_open_score_counts_like_medplib():
    # tp counts the candidate's repeats (MedPLIB's counting): "lesion lesion" vs "lesion" is perfect
    assert open_score("lesion lesion", "lesion").f1 == 1.0
    # fn counts the reference's repeats of words the candidate lacks
    s = open_score("cyst", "cyst left left")
    assert s.precision == 1.0 and s.recall == pytest.approx(1 / 3)


@pytest.mark.parametrize("pred, ref", [("", "lesion"), ("lesion", ""), ("cyst", "lesion"), ("the", "the")])
def test_open_score_zero_cases(pred, ref):
    s = open_score(pred, ref)
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)


def test_closed_exact_match():
    assert closed_correct("Yes.", "yes")
    assert closed_correct("Left", "left")
    assert not closed_correct("yes, it is", "yes")  # exact match, not containment
    assert not closed_correct("", "no")


def test_mask_iou_and_dice_hand_computed():
    ref = np.zeros((20, 20), np.uint8)
    ref[5:15, 5:15] = 1  # 100 px
    pred = np.zeros((20, 20), bool)
    pred[5:15, 10:20] = True  # 100 px, 50 overlap → union 150
    iou = mask_iou(pred, ref)
    assert iou == pytest.approx(1 / 3)
    assert dice_from_iou(iou) == pytest.approx(2 * 50 / (100 + 100))  # = 0.5
    assert mask_iou(ref, ref) == 1.0


def test_empty_predictions_score_zero():
    ref = np.zeros((8, 8), bool)
    ref[2:4, 2:4] = True
    assert mask_iou(None, ref) == 0.0
    assert mask_iou(np.zeros_like(ref), ref) == 0.0
    assert mask_iou(np.zeros_like(ref), np.zeros_like(ref)) == 0.0  # empty union: 0, as MedPLIB
    with pytest.raises(ValueError):
        mask_iou(np.zeros((4, 4)), ref)


def test_summary_averages_dice_per_sample():
    s = summarize_seg([1.0, 0.0, 0.5])
    assert s.n == 3 and s.miou == pytest.approx(0.5)
    assert s.mdice == pytest.approx((1.0 + 0.0 + 2 / 3) / 3)
    assert summarize_seg([]).n == 0


@pytest.mark.parametrize("prediction, name, expected", [
    ("It is the grey matter.", "grey matter", True),
    ("Grey Matter", "grey matter", True),
    ("white matter", "grey matter", False),
    ("matter", "grey matter", False),
    ("", "lesion", False),
    ("lesions", "lesion", False),
    ("The lesion.", "lesion", True),
])
def test_names_structure(prediction, name, expected):
    assert names_structure(prediction, name) is expected


@pytest.mark.parametrize("prediction, expected", [
    ("The lesion is a cyst.", False),  # two structures named: not an answer
    ("The lesion.", True),
    ("It is the grey matter, not white.", True),  # "white" alone is not a structure name
    ("grey matter and white matter", False),
])
def test_naming_another_structure_too_is_wrong(prediction, expected):
    others = ("lesion", "cyst", "grey matter", "white matter")
    name = "grey matter" if "grey" in prediction else "lesion"
    assert names_structure(prediction, name, others) is expected


def test_balanced_accuracy_hand_computed():
    # 3 "yes" (2 right) and 1 "no" (wrong): plain accuracy 0.5, balanced (2/3 + 0/1) / 2
    assert balanced_accuracy(["yes", "Yes.", "yes", "no"], [True, True, False, False]) == pytest.approx(1 / 3)
    # "yes" to everything scores 0.5 whatever the share of "yes" questions
    refs = ["yes"] * 9 + ["no"]
    assert balanced_accuracy(refs, [r == "yes" for r in refs]) == pytest.approx(0.5)
    assert balanced_accuracy(["left", "right", "midline"], [True, True, True]) == 1.0
    assert balanced_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        balanced_accuracy(["yes"], [True, False])
