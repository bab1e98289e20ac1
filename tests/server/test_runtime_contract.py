"""One behavioural contract, run against LocalRuntime (in-process) and RemoteRuntime (a real
`medplib serve` on a loopback port): same inputs → bit-identical masks, identical greedy answers,
and the same one-line refusals for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.imaging.io import read_volume
from medplib_runtime.protocol import Runtime
from medplib_runtime.schemas import AskRequest, Box, Point, Prompt, SegmentRequest, SliceRef, Turn

pytestmark = pytest.mark.weights

BRAIN1_BOX = Box(84, 162, 115, 206)  # the lesion on slice 16 (axis 0)


@pytest.fixture(scope="module")
def brain1(brain1_paths):
    return read_volume(str(brain1_paths[0])).array


@pytest.fixture(params=["local", "remote"])
def runtime(request) -> Runtime:
    return request.getfixturevalue(f"{request.param}_runtime")


def _requests(key: str, brain1: np.ndarray) -> list[SegmentRequest]:
    scribble = np.zeros(brain1.shape[1:], bool)
    scribble[95:105, 175:195] = True
    return [
        SegmentRequest(key, SliceRef(0, 16), Prompt(box=BRAIN1_BOX)),
        SegmentRequest(key, SliceRef(0, 16), Prompt(points=(Point(100, 184, 1), Point(60, 60, 0)))),
        SegmentRequest(key, SliceRef(0, 16), Prompt(mask=scribble)),
        SegmentRequest(key, SliceRef(0, 15), Prompt(box=BRAIN1_BOX), threshold=0.5),
        SegmentRequest(key, SliceRef(2, 184), Prompt(box=Box(10, 80, 20, 120))),  # a sagittal slice (z, y)
    ]


def test_runtime_satisfies_the_protocol(runtime):
    assert isinstance(runtime, Runtime)
    info = runtime.info()
    assert info.preset == "medplib-lite" and {p.name for p in info.parts} >= {"pixel_encoder", "llm"}


def test_segment_masks_are_bit_identical(local_runtime, remote_runtime, brain1):
    keys = [rt.set_image(brain1, modality="MR") for rt in (local_runtime, remote_runtime)]
    assert keys[0] == keys[1]  # the same content key on both sides
    for req in _requests(keys[0], brain1):
        local, remote = (rt.segment(req) for rt in (local_runtime, remote_runtime))
        assert remote.mask.dtype == np.uint8 and remote.mask.shape == local.mask.shape
        assert np.array_equal(local.mask, remote.mask), req.prompt.kind
        assert local.score == remote.score and local.prompt_kind == remote.prompt_kind
    lesion = local_runtime.segment(_requests(keys[0], brain1)[0]).mask
    assert 500 < lesion.sum() < 2000  # a real lesion mask, not an empty or full one


def test_2d_image_gives_identical_masks(local_runtime, remote_runtime, brain1):
    plane = brain1[16].astype(np.float32)
    results = []
    for rt in (local_runtime, remote_runtime):
        key = rt.set_image(plane)
        results.append(rt.segment(SegmentRequest(key, SliceRef(0, 0), Prompt(box=BRAIN1_BOX))).mask)
    assert np.array_equal(*results) and results[0].any()


def test_greedy_answers_are_identical_and_stream(local_runtime, remote_runtime, brain1):
    key = local_runtime.set_image(brain1, modality="MR")
    assert remote_runtime.set_image(brain1, modality="MR") == key
    req = AskRequest(key, SliceRef(0, 16), "Is there a lesion in this image?", region=Prompt(box=BRAIN1_BOX),
                     history=(Turn("What modality is this?", "MRI"),), max_new_tokens=8)
    streamed: list[list[str]] = [[], []]
    local = local_runtime.ask(req, on_token=streamed[0].append)
    remote = remote_runtime.ask(req, on_token=streamed[1].append)
    assert remote.text == local.text
    assert streamed[0] == streamed[1] and len(streamed[1]) >= 1  # tokens arrived one by one, the same ones
    assert len(remote.masks) == len(local.masks)
    assert all(np.array_equal(a, b) for a, b in zip(local.masks, remote.masks))
    assert remote.routing.expert_names == local.routing.expert_names
    assert np.allclose(remote.routing.per_token, local.routing.per_token)
    assert remote.untrained_parts == local.untrained_parts


@pytest.mark.parametrize("make, message", [
    (lambda key: SegmentRequest(key, SliceRef(0, 99), Prompt(box=BRAIN1_BOX)), "slice 99 is out of range"),
    (lambda key: SegmentRequest(key, SliceRef(0, 16), Prompt()), "empty prompt"),
    (lambda key: SegmentRequest(key, SliceRef(0, 16), Prompt(points=(Point(300, 10),))), "outside"),
    (lambda key: SegmentRequest(key, SliceRef(0, 16), Prompt(box=Box(5, 5, 5, 40))), "degenerate"),
    (lambda key: SegmentRequest(key, SliceRef(0, 16), Prompt(mask=np.zeros((3, 3), bool))), "shape"),
    (lambda key: SegmentRequest("0" * 32, SliceRef(0, 16), Prompt(box=BRAIN1_BOX)), "unknown image key"),
    (lambda key: AskRequest(key, SliceRef(0, 16), "   "), "empty question"),
    # "<region>" with no region would be read as a bare token (the glue answered "yes")
    (lambda key: AskRequest(key, SliceRef(0, 16), "Is <region> the lesion?"), "no region was given"),
    (lambda key: AskRequest(key, SliceRef(0, 16), "Is <region> like <region>?", region=Prompt(box=BRAIN1_BOX)),
     "2 times"),
    # a token the prompt places itself: "<image>" failed deep in the model ("image placeholders (65) and image
    # features (64) do not match"), "<im_end>" silently moved where the routers read the question
    (lambda key: AskRequest(key, SliceRef(0, 16), "What is <image> here?"), "holds <image>, a token the prompt"),
    (lambda key: AskRequest(key, SliceRef(0, 16), "Is it the lesion?", history=(Turn("What <im_end> is it?", "A"),)),
     "earlier turn 1's question holds <im_end>"),
])
def test_bad_input_is_refused_alike(runtime, brain1, make, message):
    key = runtime.set_image(brain1, modality="MR")
    req = make(key)
    with pytest.raises(InputError, match=message) as err:
        runtime.ask(req) if isinstance(req, AskRequest) else runtime.segment(req)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 5, 6, 7)), "2D"),
    (np.ones((32, 32)), "constant"),
    (np.full((32, 32), np.nan), "no finite values"),
    (np.zeros((32, 32), complex), "dtype"),
])
def test_bad_images_are_refused_alike(runtime, image, message):
    with pytest.raises(InputError, match=message):
        runtime.set_image(image)


def test_propagation_is_the_same_through_the_server(local_runtime, remote_runtime, brain1):
    from medplib_runtime.volume.propagation import PropagationSettings, propagate

    seed = local_runtime.segment(SegmentRequest(local_runtime.set_image(brain1), SliceRef(0, 16),
                                                Prompt(box=BRAIN1_BOX))).mask
    results = [propagate(rt, brain1, axis=0, seed_index=16, seed_mask=seed,
                         settings=PropagationSettings(max_slices=2)) for rt in (local_runtime, remote_runtime)]
    assert np.array_equal(results[0].mask, results[1].mask) and results[0].slices == results[1].slices
    assert results[0].steps == results[1].steps
