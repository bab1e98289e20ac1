"""The runtime itself (so the plugin and the server too, not only the CLI) refuses what would give a
silently wrong mask or answer: NaN/inf on the slice, thresholds and answer lengths out of range."""

from __future__ import annotations

import numpy as np
import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.local import LocalRuntime
from medplib_runtime.schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef


@pytest.fixture()
def runtime():
    rt = LocalRuntime()
    yield rt
    rt.close()


def test_nan_on_the_slice_is_refused_nan_elsewhere_is_not_read(runtime):
    volume = np.random.default_rng(0).normal(100, 10, (4, 32, 32)).astype(np.float32)
    volume[1, 3:5, 3:5] = np.nan
    key = runtime.set_image(volume)
    with pytest.raises(InputError, match=r"slice 1 \(axis 0\) holds 4 NaN/inf voxels"):
        runtime.segment(SegmentRequest(key, SliceRef(0, 1), Prompt(box=Box(2, 2, 20, 20))))
    with pytest.raises(InputError, match="NaN/inf"):
        runtime.ask(AskRequest(key, SliceRef(0, 1), "What is shown?"))


@pytest.mark.parametrize("threshold", [0.0, 1.0, 2.0, -1.0, float("nan")])
def test_a_threshold_outside_0_1_is_refused(runtime, threshold):
    key = runtime.set_image(np.random.default_rng(0).random((2, 16, 16)).astype(np.float32))
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        runtime.segment(SegmentRequest(key, SliceRef(0, 0), Prompt(box=Box(2, 2, 10, 10)), threshold=threshold))


@pytest.mark.parametrize("tokens", [0, -5, 100_000])
def test_an_answer_length_out_of_range_is_refused(runtime, tokens):
    key = runtime.set_image(np.random.default_rng(0).random((2, 16, 16)).astype(np.float32))
    with pytest.raises(InputError, match="from 1 to 512"):
        runtime.ask(AskRequest(key, SliceRef(0, 0), "What is shown?", max_new_tokens=tokens))
