"""The wire format: exact round trips, compact, and refusing bad payloads with one line."""

import base64
import zlib

import numpy as np
import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import AskResult, Box, Point, Prompt, RoutingStats, SegmentResult
from medplib_runtime.wire import (ask_result_from_wire, ask_result_to_wire, decode_array, encode_array,
                                  prompt_from_wire, prompt_to_wire, segment_result_from_wire,
                                  segment_result_to_wire, slice_key, unpack_bytes)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "float64", "uint16", "int32"])
def test_arrays_round_trip_exactly(dtype):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(37, 53)) * 1000).astype(dtype)
    b = decode_array(encode_array(a))
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_big_endian_input_is_sent_little_endian():
    a = np.arange(12, dtype=">i2").reshape(3, 4)
    b = decode_array(encode_array(a))
    assert np.array_equal(a, b)


def test_masks_are_compact():
    mask = np.zeros((512, 512), np.uint8)
    mask[100:200, 150:260] = 1
    encoded = encode_array(mask)
    assert len(encoded["data"]) < mask.nbytes / 50  # not JSON numbers: ~1 KB for a 256 KB mask


def test_bad_payloads_are_one_line_input_errors():
    good = encode_array(np.ones((4, 4), np.uint8))
    cases = [
        {**good, "dtype": "object"},
        {**good, "shape": [4, 5]},
        {**good, "shape": [0, 4]},
        {**good, "shape": [2, 2, 2, 2]},
        {**good, "data": "!!!not base64"},
        {**good, "data": base64.b64encode(b"not zlib").decode()},
        {**good, "codec": "raw"},
        "not a dict",
    ]
    for case in cases:
        with pytest.raises(InputError) as err:
            decode_array(case)
        assert "\n" not in str(err.value)


def test_zip_bomb_is_refused_without_inflating():
    bomb = zlib.compress(b"\0" * (64 * 2**20), 9)  # 64 MB of zeros in ~64 KB
    with pytest.raises(InputError, match="needs 16"):
        unpack_bytes(bomb, dtype="uint8", shape=(4, 4))
    with pytest.raises(InputError, match="larger than"):
        unpack_bytes(bomb, dtype="uint8", shape=(16384, 16384))


def test_prompts_and_results_round_trip():
    mask = np.zeros((8, 9), bool)
    mask[2:5, 3:6] = True
    prompt = Prompt(box=Box(1, 2, 6, 7), points=(Point(3, 4, 1), Point(5, 5, 0)), mask=mask)
    back = prompt_from_wire(prompt_to_wire(prompt))
    assert back.box == prompt.box and back.points == prompt.points and np.array_equal(back.mask, mask)

    seg = SegmentResult(mask=mask.astype(np.uint8), score=0.87, prompt_kind="box", timings_ms={"total": 3.0})
    seg2 = segment_result_from_wire(segment_result_to_wire(seg))
    assert np.array_equal(seg2.mask, seg.mask) and seg2.score == seg.score and seg2.prompt_kind == "box"

    routing = RoutingStats(("grounding", "vision-language"), ("<prompt>", "a"), ((1.0, 0.0), (0.25, 0.75)), dropped=2)
    ask = AskResult(text="a lesion <SEG>", masks=(mask.astype(np.uint8),), routing=routing,
                    untrained_parts=("projector",), timings_ms={"prefill": 1.5}, notes=("the region was not read",))
    ask2 = ask_result_from_wire(ask_result_to_wire(ask))
    assert ask2.text == ask.text and ask2.routing == routing and ask2.untrained_parts == ("projector",)
    assert ask2.notes == ("the region was not read",)
    assert np.array_equal(ask2.masks[0], ask.masks[0])


def test_slice_key_depends_on_data_and_window():
    a = np.arange(20, dtype=np.int16).reshape(4, 5)
    k = slice_key(a, lo=0.0, hi=10.0, modality="MR")
    assert k == slice_key(a.copy(), lo=0.0, hi=10.0, modality="MR")
    assert k != slice_key(a, lo=0.0, hi=11.0, modality="MR")
    assert k != slice_key(a.astype(np.int32), lo=0.0, hi=10.0, modality="MR")
    b = a.copy()
    b[0, 0] = 1
    assert k != slice_key(b, lo=0.0, hi=10.0, modality="MR")
