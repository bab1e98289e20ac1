"""Prompt validation: every bad prompt gets a one-line InputError naming the problem."""

import numpy as np
import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import Box, Point, Prompt, RoutingStats, validate_prompt

SHAPE = (100, 80)


@pytest.mark.parametrize("prompt, message", [
    (Prompt(), "empty prompt"),
    (Prompt(box=Box(10, 10, 10, 40)), "degenerate"),
    (Prompt(box=Box(10, 10, 120, 40)), "outside the 100×80 slice"),
    (Prompt(box=Box(-1, 10, 20, 40)), "outside"),
    (Prompt(box=Box(float("nan"), 10, 20, 40)), "not a finite"),
    (Prompt(points=(Point(5, 90),)), "point (5,90) lies outside"),
    (Prompt(points=(Point(5, 5, 0),)), "only background points"),
    (Prompt(points=(Point(5, 5, 3),)), "label must be 1"),
    (Prompt(mask=np.zeros(SHAPE, bool)), "region mask is empty"),
    (Prompt(mask=np.ones((80, 100), bool)), "shape (80, 100), but the slice is (100, 80)"),
])
def test_bad_prompts_raise_one_line(prompt, message):
    with pytest.raises(InputError) as err:
        validate_prompt(prompt, SHAPE)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_prompts_pass_and_report_kind():
    mask = np.zeros(SHAPE, bool)
    mask[3:5, 3:5] = True
    for prompt, kind in [(Prompt(box=Box(40, 30, 10, 5)), "box"), (Prompt(points=(Point(1, 2),)), "points"),
                         (Prompt(box=Box(1, 1, 9, 9), points=(Point(5, 5, 0),)), "box+points"),
                         (Prompt(mask=mask), "mask")]:
        validate_prompt(prompt, SHAPE)
        assert prompt.kind == kind
    assert Box(40, 30, 10, 5).normalized() == Box(10, 5, 40, 30)


def test_routing_overall_averages_tokens():
    stats = RoutingStats(("g", "vl"), ("a", "b"), ((1.0, 0.0), (0.5, 0.5)))
    assert stats.overall() == (0.75, 0.25)
