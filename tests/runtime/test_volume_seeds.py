"""Seeded 3D segmentation and the guarded walk: edge cases against a small fake runtime (a "model"
that returns the truth inside the prompted box), and real LiteMedSAM on brain1 and the lung2 crop."""

from __future__ import annotations

import numpy as np
import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import SegmentResult
from medplib_runtime.volume.interpolation import interpolate_between
from medplib_runtime.volume.propagation import (PropagationSettings, SliceStep, propagate, slice_confidence)
from medplib_runtime.volume.seeded import SeededSettings, correct_and_continue, propagate_from_seeds

# measured 3D Dice with three seed slices (scripts/volume_eval.py's rule), minus a margin of 0.03
BRAIN1_BAR = 0.83  # measured 0.863 (volume error −3.5 %)
LUNG2_BAR = 0.85  # the shipped crop: measured 0.880 (+9.4 %)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _tube(n=40, lo=4, hi=34, shape=(64, 64), bulge=True):
    """A structure on slices lo..hi whose disc moves and changes size: (volume, truth)."""
    y, x = np.ogrid[:shape[0], :shape[1]]
    truth = np.zeros((n, *shape), bool)
    for z in range(lo, hi + 1):
        t = (z - lo) / (hi - lo)
        r = 6 + 8 * (np.sin(np.pi * t) if bulge else t)
        truth[z] = (y - 24 - 12 * t) ** 2 + (x - 30) ** 2 <= r * r
    volume = np.where(truth, 300.0, 100.0) + np.random.default_rng(0).normal(0, 5, truth.shape)
    return volume.astype(np.float32), truth


class FakeRuntime:
    """Segments the truth inside the box (or, with ``leak``, the box grown by 8 voxels); scores 0.9."""

    def __init__(self, truth, leak=False):
        self.truth, self.leak, self.calls = truth, leak, 0

    def set_image(self, image, *, modality="auto", spacing=None):
        return "key"

    def prefetch(self, key, ref, *, radius=2):
        pass

    def segment(self, request):
        self.calls += 1
        plane = np.take(self.truth, request.slice.index, axis=request.slice.axis)
        b = request.prompt.box
        inside = np.zeros(plane.shape, bool)
        grow = 8 if self.leak else 0  # a leak: well past the box, into the neighbours
        inside[max(0, int(np.ceil(b.r0)) - grow):int(b.r1) + 1 + grow,
               max(0, int(np.ceil(b.c0)) - grow):int(b.c1) + 1 + grow] = True
        mask = inside if self.leak else plane & inside
        return SegmentResult(mask.astype(np.uint8), 0.9, "box")


@pytest.mark.parametrize("gap", [1, 20])
def test_gaps_of_1_and_20_are_interpolated_and_refined(gap):
    volume, truth = _tube(bulge=False)  # a cone, moving: what interpolation can follow
    seeds = np.zeros(truth.shape, np.uint8)
    a, b = 8, 8 + gap + 1
    seeds[a], seeds[b] = truth[a] * 3, truth[b] * 3
    result = propagate_from_seeds(FakeRuntime(truth), volume, seeds, label=3)
    assert result.label == 3 and result.source[a] == result.source[b] == "seed"
    assert all(result.source[i] == "interpolated" for i in range(a + 1, b))
    if gap == 1:  # the fake model agrees: its mask (the truth) is kept
        assert result.refined == (a + 1,) and np.array_equal(result.mask[a:b + 1].astype(bool), truth[a:b + 1])
    else:
        assert len(result.refined) >= 18
        assert _dice(result.mask[a:b + 1].astype(bool), truth[a:b + 1]) > 0.95
    assert all(0 <= c <= 1 for c in result.confidence.values())
    assert result.stopped["down"] == "empty"  # up, the cone outgrows its seed: seed_growth may end it


def test_pure_interpolation_of_a_moving_shape():
    _, truth = _tube(bulge=False)
    got = interpolate_between(truth[6], truth[30], 23)
    assert all(_dice(g, t) > 0.85 for g, t in zip(got, truth[7:30]))


def test_seeds_stay_as_drawn_and_disagreement_keeps_the_interpolation():
    volume, truth = _tube()
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[10], seeds[14] = truth[10], truth[14]
    seeds[10, 0, 0] = 1  # a stray voxel: another component on the seed slice is kept as drawn
    result = propagate_from_seeds(FakeRuntime(truth, leak=True), volume, seeds,
                                  settings=SeededSettings(walk=PropagationSettings(max_slices=2)))
    assert np.array_equal(result.mask[10], seeds[10]) and np.array_equal(result.mask[14], seeds[14])
    assert not result.refined and {11, 12, 13} <= set(result.unsure)
    assert all(result.confidence[i] < 0.5 for i in (11, 12, 13))


def test_the_walk_beyond_the_seeds_stops_at_the_end():
    volume, truth = _tube()
    seeds = np.zeros(truth.shape, np.uint8)
    for z in (12, 19, 26):
        seeds[z] = truth[z]
    result = propagate_from_seeds(FakeRuntime(truth), volume, seeds)
    assert result.slices == tuple(range(4, 35)) and result.stopped == {"up": "empty", "down": "empty"}
    assert {result.source[i] for i in (4, 34)} == {"propagated"}


def test_a_leaking_walk_stops_on_seed_growth_not_at_the_edge():
    volume, truth = _tube()
    seed = truth[20]
    result = propagate(FakeRuntime(truth, leak=True), volume, axis=0, seed_index=20, seed_mask=seed,
                       settings=PropagationSettings(intensity_tolerance=float("inf"), min_back_overlap=0))
    assert set(result.stopped.values()) <= {"growth", "seed_growth", "unsure"}
    assert len(result.slices) < 10


def _ends_then_neighbour(neighbour_radius, neighbour_value):
    """A textured structure (intensity 200–400, as heterogeneous as an MR lesion) on slices 8..20, a
    disc of radius 10 ending abruptly, then a neighbour disc on 21..27 at the same place, beyond its
    end: (volume, structure, scene = structure | neighbour)."""
    y, x = np.ogrid[:64, :64]
    rng = np.random.default_rng(1)
    structure, neighbour = np.zeros((30, 64, 64), bool), np.zeros((30, 64, 64), bool)
    structure[8:21] = (y - 30) ** 2 + (x - 32) ** 2 <= 10 ** 2
    neighbour[21:28] = (y - 30) ** 2 + (x - 32) ** 2 <= neighbour_radius ** 2
    volume = 100 + rng.normal(0, 5, structure.shape)
    volume[structure] = rng.uniform(200, 400, int(structure.sum()))
    volume[neighbour] = neighbour_value + rng.normal(0, 5, int(neighbour.sum()))
    return volume.astype(np.float32), structure, structure | neighbour


def _seeds_on(truth, picks):
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[picks] = truth[picks]
    return seeds


# no taper, no seed intensity range: the walk as it was before them
_BEFORE = SeededSettings(walk=PropagationSettings(taper_tolerance=float("inf"), seed_percentiles=None))


@pytest.mark.parametrize("radius, value, reason", [
    (16, 300.0, "taper"),  # larger, same look: the prompt box grows into it (area × 2, kept as unsure before)
    (8, 395.0, "seed_intensity"),  # nested, as a tip would be, but brighter than the seeds' 10–90 % range
])
def test_the_walk_past_the_outer_seed_stops_where_the_structure_ends(radius, value, reason):
    volume, structure, scene = _ends_then_neighbour(radius, value)
    seeds = _seeds_on(structure, [8, 14, 20])  # the whole structure, as brain2's 8, 9, 10
    before = propagate_from_seeds(FakeRuntime(scene), volume, seeds, settings=_BEFORE)
    assert before.slices[-1] >= 22  # the old stops kept the neighbour (mean within 2.5 seed std)
    after = propagate_from_seeds(FakeRuntime(scene), volume, seeds)
    assert after.slices == tuple(range(8, 21)) and after.stopped == {"up": reason, "down": "empty"}
    assert np.array_equal(after.mask.astype(bool), structure)


@pytest.mark.parametrize("bulge, last, up", [
    (True, 34, "empty"),  # tapering to both ends past seeds at 12 and 26: followed to both
    (False, 30, "taper"),  # a cone: followed down to its tip; up, still widening past the top seed, it ends
])
def test_a_textured_structure_that_goes_on_past_the_seeds_is_followed(bulge, last, up):
    _, truth = _tube(bulge=bulge)
    rng = np.random.default_rng(2)
    volume = 100 + rng.normal(0, 5, truth.shape)
    volume[truth] = rng.uniform(200, 400, int(truth.sum()))  # mean 300, std 58: as heterogeneous as MR
    result = propagate_from_seeds(FakeRuntime(truth), volume.astype(np.float32), _seeds_on(truth, [12, 19, 26]))
    assert result.slices == tuple(range(4, last + 1)) and result.stopped == {"up": up, "down": "empty"}
    assert np.array_equal(result.mask[:last + 1].astype(bool), truth[:last + 1])


def test_a_drifting_cylinder_past_the_seeds_is_followed():
    """A constant cross-section sliding 1 voxel a slice (an oblique vessel): nested enough to go on."""
    y, x = np.ogrid[:64, :64]
    truth = np.zeros((40, 64, 64), bool)
    for z in range(4, 35):
        truth[z] = (y - 16 - z) ** 2 + (x - 32) ** 2 <= 10 ** 2
    volume = np.where(truth, 300.0, 100.0) + np.random.default_rng(0).normal(0, 5, truth.shape)
    result = propagate_from_seeds(FakeRuntime(truth), volume.astype(np.float32), _seeds_on(truth, [12, 19, 26]))
    assert result.slices == tuple(range(4, 35)) and result.stopped == {"up": "empty", "down": "empty"}


def test_one_box_walks_have_no_taper_seeded_ones_take_the_seeds_to_span_the_structure():
    """From one box the structure may grow either way: a cone widening upwards is followed. Seeds
    are taken to span the structure: past the top one, a cone still widening ends on ``taper``."""
    volume, truth = _tube(bulge=False)
    result = propagate(FakeRuntime(truth), volume, axis=0, seed_index=10, seed_mask=truth[10],
                       settings=PropagationSettings(max_slices=8))
    assert result.slices == tuple(range(4, 19)) and result.stopped == {"up": "max_slices", "down": "empty"}
    seeded = propagate_from_seeds(FakeRuntime(truth), volume, _seeds_on(truth, [8, 10]))
    assert seeded.slices == tuple(range(4, 13)) and seeded.stopped == {"up": "taper", "down": "empty"}
    assert 13 in seeded.unsure  # a taper stop is listed to check, however confident: the cone goes on there
    unguarded = SeededSettings(walk=PropagationSettings.unguarded(max_slices=8))  # the stops off: on to 18
    off = propagate_from_seeds(FakeRuntime(truth), volume, _seeds_on(truth, [8, 10]), settings=unguarded)
    assert off.slices[-1] == 18


def test_correct_and_continue_redoes_only_the_far_side():
    volume, truth = _tube()
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[18], seeds[22] = truth[18], truth[22]
    rt = FakeRuntime(truth)
    first = propagate_from_seeds(rt, volume, seeds, settings=SeededSettings(walk=PropagationSettings(max_slices=3)))
    assert first.slices == tuple(range(15, 26))
    fixed = truth[27].copy()  # the user paints slice 27 (two past where the walk stopped)
    after = correct_and_continue(rt, volume, first, 27, fixed,
                                 settings=SeededSettings(walk=PropagationSettings(max_slices=3)))
    assert np.array_equal(after.mask[:26], first.mask[:26]) and np.array_equal(after.mask[27], fixed)
    assert after.source[27] == "seed" and after.source[26] == "interpolated" and after.slices[-1] == 30
    # an empty correction ends the structure there
    cut = correct_and_continue(rt, volume, first, 24, np.zeros_like(fixed))
    assert cut.slices == tuple(range(15, 24)) and cut.stopped["up"] == "corrected"
    # a correction between seeds redoes the gaps next to it only
    mid = correct_and_continue(rt, volume, first, 20, truth[21])
    assert mid.source[20] == "seed" and np.array_equal(mid.mask[23:], first.mask[23:])


@pytest.mark.parametrize("make, message", [
    (lambda t: np.zeros(t.shape, np.uint8), "empty"),
    (lambda t: t[:, :10].astype(np.uint8), "shape"),
    (lambda t: t.astype(np.uint8) * 2, r"label 1 is not in the seeds; they hold label\(s\) 2"),
])
def test_bad_seeds(make, message):
    volume, truth = _tube()
    with pytest.raises(InputError, match=message):
        propagate_from_seeds(FakeRuntime(truth), volume, make(truth), label=1)


def test_two_labels_need_a_choice():
    volume, truth = _tube()
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[10], seeds[20] = truth[10] * 1, truth[20] * 2
    with pytest.raises(InputError, match="labels 1, 2: pick one"):
        propagate_from_seeds(FakeRuntime(truth), volume, seeds)
    only_two = propagate_from_seeds(FakeRuntime(truth), volume, seeds, label=2,
                                    settings=SeededSettings(walk=PropagationSettings(max_slices=1)))
    assert only_two.seeds == (20,) and only_two.slices == (19, 20, 21)


def test_confidence_and_old_api():
    s = PropagationSettings()
    assert slice_confidence(0.95, 1.0, 1.0, 0.0, s) == pytest.approx(1.0)
    assert slice_confidence(0.4, 1.0, 1.0, 0.0, s) == 0.0
    assert 0 < slice_confidence(0.8, 0.7, 1.5, 1.0, s) < 1
    step = SliceStep(3, 10, 0.9, 0.8, True, "")  # the six fields callers built before stay positional
    assert step.confidence == 1.0 and not step.unsure


def _three_seeds(truth):
    zs = np.nonzero(truth.any((1, 2)))[0]
    lo, hi = int(zs.min()), int(zs.max())
    span = hi - lo  # scripts/volume_eval.py's rule: quartiles rounded outwards, and the middle
    picks = sorted({lo + int(np.floor(0.25 * span)), lo + int(np.floor(0.5 * span + 0.5)), lo + int(np.ceil(0.75 * span))})
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[picks] = truth[picks]
    return picks, seeds


@pytest.mark.weights
@pytest.mark.parametrize("paths, bar, volume_error", [("brain1_paths", BRAIN1_BAR, 0.10),
                                                      ("lung2_paths", LUNG2_BAR, 0.15)])
def test_three_seed_slices_on_real_volumes(request, local_runtime, paths, bar, volume_error):
    from medplib_runtime.imaging.io import read_volume

    image_path, label_path = request.getfixturevalue(paths)
    image, truth = read_volume(str(image_path)).array, read_volume(str(label_path)).array == 1
    picks, seeds = _three_seeds(truth)
    result = propagate_from_seeds(local_runtime, image, seeds, label=1, axis=0)
    got = result.mask.astype(bool)
    assert all(np.array_equal(got[i], truth[i]) for i in picks) and result.seeds == tuple(picks)
    assert _dice(got, truth) >= bar, (result.stopped, result.source)
    assert abs(int(got.sum()) - int(truth.sum())) / truth.sum() <= volume_error
    assert set(result.stopped) == {"up", "down"} and set(result.confidence) == set(result.slices)
