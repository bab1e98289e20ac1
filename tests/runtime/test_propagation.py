"""3D propagation with the real LiteMedSAM: an exact synthetic ellipsoid, cancel, bad input, and
`segment --propagate` on a real CT tumour (the shipped crop of lung2) from the CLI."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from medplib_runtime.cli import main
from medplib_runtime.errors import InputError
from medplib_runtime.imaging.io import read_volume
from medplib_runtime.schemas import Box, Prompt, SegmentRequest, SliceRef
from medplib_runtime.volume.propagation import Cancelled, PropagationSettings, propagate

pytestmark = pytest.mark.weights


def _ellipsoid(shape=(21, 96, 112), centre=(10, 48, 60), radii=(7.5, 22, 30)):
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    inside = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radii)) <= 1
    volume = np.random.default_rng(3).normal(100, 10, shape).astype(np.float32)
    volume[inside] += 300
    return volume, inside


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_ellipsoid_from_one_box(local_runtime):
    volume, truth = _ellipsoid()
    key = local_runtime.set_image(volume)
    r, c = np.nonzero(truth[10])
    seed = local_runtime.segment(SegmentRequest(key, SliceRef(0, 10), Prompt(box=Box(r.min() - 3, c.min() - 3,
                                                                                      r.max() + 3, c.max() + 3)))).mask
    seen = []
    result = propagate(local_runtime, volume, axis=0, seed_index=10, seed_mask=seed,
                       progress=lambda done, total: seen.append((done, total)))
    got = result.mask.astype(bool)
    assert _dice(got, truth) >= 0.9, result.stopped
    assert result.mask.dtype == np.uint8 and result.mask.shape == volume.shape
    assert seen and seen[-1][0] == seen[-1][1] == len(result.steps)
    assert all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))
    # along another axis: walked through (z, y) slices, written back along that axis
    side = propagate(local_runtime, volume, axis=2, seed_index=60, seed_mask=truth[:, :, 60], settings=PropagationSettings(max_slices=3))
    assert np.array_equal(side.mask[:, :, 60], truth[:, :, 60]) and side.slices == tuple(range(57, 64))
    assert side.mask[:, :, 61].any() and not side.mask[:, :, 65].any()


def test_cancel_returns_nothing(local_runtime):
    volume, truth = _ellipsoid()
    cancel = threading.Event()

    def progress(done, total):
        if done == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="nothing was written"):
        propagate(local_runtime, volume, axis=0, seed_index=10, seed_mask=truth[10], progress=progress, cancel=cancel)


@pytest.mark.parametrize("make, message", [
    (lambda v, t: dict(volume=v[10], axis=0, seed_index=0, seed_mask=t[10]), "3D"),
    (lambda v, t: dict(volume=v, axis=0, seed_index=10, seed_mask=np.zeros_like(t[10])), "empty"),
    (lambda v, t: dict(volume=v, axis=0, seed_index=30, seed_mask=t[10]), "out of range"),
    (lambda v, t: dict(volume=v, axis=1, seed_index=10, seed_mask=t[10]), "shape"),
])
def test_bad_input(local_runtime, make, message):
    volume, truth = _ellipsoid()
    kwargs = make(volume, truth)
    with pytest.raises(InputError, match=message):
        propagate(local_runtime, kwargs.pop("volume"), **kwargs)


def test_cli_segment_propagate_writes_3d_labels(tmp_path, capsys, lung2_paths):
    # the crop (36×256×256) holds the tumour on slices 10..20; slice 15's tumour spans rows 100..156,
    # columns 86..150 (from the label), boxed with 3 voxels to spare
    out = tmp_path / "tumour.nii.gz"
    assert main(["segment", str(lung2_paths[0]), "--slice", "15", "--box", "97,83,159,153", "--out", str(out),
                 "--propagate"]) == 0
    summary = json.loads(capsys.readouterr().out)
    labels = read_volume(str(out))
    truth = read_volume(str(lung2_paths[1]))
    assert labels.spacing == pytest.approx(truth.spacing) and labels.origin == pytest.approx(truth.origin)
    assert _dice(labels.array == 1, truth.array == 1) >= 0.85
    assert 7 <= summary["slices"][0] < 15 < summary["slices"][1] <= 23 and set(summary["stopped"]) == {"up", "down"}
    volume = (labels.array == 1).sum() * float(np.prod(labels.spacing)) / 1000
    assert summary["volume_ml"] == pytest.approx(volume, rel=1e-3)
    assert abs((labels.array == 1).sum() - (truth.array == 1).sum()) / (truth.array == 1).sum() <= 0.15
