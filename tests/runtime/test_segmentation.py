"""The direct segmentation path: LiteMedSAM in our modules, transforms, and Dice on real volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from medplib_runtime.imaging.transforms import logits_to_original, mask_to_model, resize_info, resize_longest_and_pad
from medplib_runtime.imaging.windowing import apply_window, guess_modality, window_for
from medplib_runtime.errors import InputError
from medplib_runtime.schemas import Box, Point, Prompt, SegmentRequest, SliceRef


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.mark.parametrize("shape", [(100, 256), (256, 60), (512, 512), (37, 53)])
@pytest.mark.parametrize("logit_size", [256, 64])
def test_mask_round_trip_through_model_space_on_non_square_slices(shape, logit_size):
    """A mask taken into the padded model square at the logits' scale and back is unchanged."""
    h, w = shape
    mask = np.zeros(shape, np.float32)
    mask[h // 4: h // 2, w // 3: (2 * w) // 3] = 1
    info = resize_info(shape, 256)
    model_space = mask_to_model(mask, info, logit_size)  # 1×1×L×L, padding bottom/right
    logits = (model_space - 0.5) * 20
    back = (torch.sigmoid(logits_to_original(logits, info))[0, 0] > 0.5).numpy()
    assert back.shape == shape
    # within one voxel of the edges after two resamplings (coarser for the 64-scale logits)
    tol = 1 if logit_size == 256 else int(np.ceil(max(shape) / 64))
    err = back ^ mask.astype(bool)
    assert (ndimage.binary_erosion(err, iterations=tol) == 0).all()
    assert dice(back, mask) > 0.9


def test_resize_pads_bottom_right_and_keeps_content():
    image = np.zeros((100, 256), np.float32)
    image[:, :10] = 1
    x, info = resize_longest_and_pad(image, 256)
    assert x.shape == (1, 3, 256, 256) and info.resized == (100, 256)
    assert float(x[0, 0, :100, :10].mean()) == pytest.approx(1.0)
    assert float(x[0, 0, 100:].abs().max()) == 0.0


def test_windows_fit_the_modality():
    ct = np.array([-1000, -500, 0, 40, 300, 1000], np.int16).reshape(1, 2, 3)
    assert guess_modality(ct) == "CT"
    w = window_for(ct)
    assert (w.lo, w.hi) == (-160, 240)
    assert apply_window(np.array([-1000, 40, 1000]), w).tolist() == [0.0, 0.5, 1.0]
    mr = np.random.default_rng(0).gamma(2.0, 100.0, size=(4, 32, 32))
    w = window_for(mr)
    assert w.modality == "MR" and 0 <= w.lo < w.hi <= mr.max()
    with pytest.raises(InputError, match="constant"):
        window_for(np.full((3, 8, 8), 5.0))
    with pytest.raises(InputError, match="no finite values"):
        window_for(np.full((3, 8, 8), np.nan))


def test_checkpoint_loads_strictly_into_our_modules():
    from medplib_runtime.modeling.litemedsam import build_litemedsam

    model = build_litemedsam(pretrained=True, fuse=False)  # strict=True inside
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(9.8e6, rel=0.05)
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        unfused = model.image_encoder(x)
        fused = model.image_encoder.fuse_()(x)
    assert unfused.shape == (1, 256, 64, 64)
    assert torch.allclose(unfused, fused, atol=1e-4), "folding BatchNorm must not change the embedding"


def _lesion_case(paths):
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0])))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[1]))) > 0
    k = int(label.sum(axis=(1, 2)).argmax())
    return image, label, k


def _box(mask2d, pad=3):
    r, c = np.nonzero(mask2d)
    h, w = mask2d.shape
    return Box(max(r.min() - pad, 0), max(c.min() - pad, 0), min(r.max() + pad, h - 1), min(c.max() + pad, w - 1))


@pytest.mark.weights
@pytest.mark.parametrize("case", ["brain1", "lung2"])
def test_box_around_lesion_gives_dice_over_080(case, request, local_runtime):
    image, label, k = _lesion_case(request.getfixturevalue(f"{case}_paths"))
    key = local_runtime.set_image(image)
    result = local_runtime.segment(SegmentRequest(key, SliceRef(0, k), Prompt(box=_box(label[k]))))
    assert result.mask.shape == label[k].shape and result.mask.dtype == np.uint8
    assert dice(result.mask, label[k]) >= 0.80
    assert result.score > 0.5


@pytest.mark.weights
def test_click_inside_lesion_gives_useful_mask(brain1_paths, lung2_paths, local_runtime):
    """Points: LiteMedSAM is box-trained; our candidate-box strategy must beat a bare point prompt."""
    scores = []
    for paths in (brain1_paths, lung2_paths):
        image, label, k = _lesion_case(paths)
        key = local_runtime.set_image(image)
        dist = ndimage.distance_transform_edt(label[k])
        r, c = np.unravel_index(dist.argmax(), dist.shape)
        res = local_runtime.segment(SegmentRequest(key, SliceRef(0, k), Prompt(points=(Point(r, c),))))
        scores.append(dice(res.mask, label[k]))
        # a background click just outside the lesion rules out candidates that cover it
        outside = ndimage.binary_dilation(label[k], iterations=6) & ~ndimage.binary_dilation(label[k], iterations=3)
        br, bc = np.argwhere(outside)[0]
        bg = local_runtime.segment(SegmentRequest(key, SliceRef(0, k), Prompt(
            points=(Point(r, c), Point(br, bc, 0)))))
        assert bg.mask[r, c] and not bg.mask[br, bc]
    assert min(scores) >= 0.75, scores


@pytest.mark.weights
def test_non_axial_slice_and_2d_image(brain1_paths, local_runtime):
    image, label, _ = _lesion_case(brain1_paths)
    key = local_runtime.set_image(image)
    # a coronal slice (axis 1) through the lesion: a (z, x) plane of 25 × 256
    j = int(label.sum(axis=(0, 2)).argmax())
    plane = label[:, j, :]
    res = local_runtime.segment(SegmentRequest(key, SliceRef(1, j), Prompt(box=_box(plane, pad=2))))
    assert res.mask.shape == plane.shape
    assert dice(res.mask, plane) >= 0.5  # 6.5 mm slices: a coarse, hard plane
    key2 = local_runtime.set_image(image[int(label.sum(axis=(1, 2)).argmax())])
    res2 = local_runtime.segment(SegmentRequest(key2, SliceRef(0, 0), Prompt(box=Box(80, 150, 120, 210))))
    assert res2.mask.shape == (256, 256)
    with pytest.raises(InputError, match="2D image has one slice"):
        local_runtime.segment(SegmentRequest(key2, SliceRef(0, 3), Prompt(box=Box(80, 150, 120, 210))))


@pytest.mark.weights
def test_clicks_veto_a_box_mask_that_disagrees_with_them(brain1_paths, local_runtime):
    """Box + clicks: a background click on a pixel the box's mask covered removes it from the answer,
    and the foreground click stays inside (the clicks veto; they are not ignored)."""
    image, label, k = _lesion_case(brain1_paths)
    key = local_runtime.set_image(image)
    rows, cols = np.nonzero(label[k])
    box = Box(rows.min() - 6, cols.min() - 6, rows.max() + 6, cols.max() + 6)
    plain = local_runtime.segment(SegmentRequest(key, SliceRef(0, k), Prompt(box=box))).mask != 0
    dist = ndimage.distance_transform_edt(label[k])
    r, c = np.unravel_index(dist.argmax(), dist.shape)
    edge = plain & ~ndimage.binary_erosion(plain, iterations=2)
    edge[r - 8:r + 9, c - 8:c + 9] = False
    br, bc = np.argwhere(edge)[0]
    vetoed = local_runtime.segment(SegmentRequest(key, SliceRef(0, k), Prompt(
        box=box, points=(Point(r, c), Point(br, bc, 0))))).mask != 0
    assert plain[br, bc] and not vetoed[br, bc]
    assert vetoed[r, c] and dice(vetoed, label[k]) >= 0.5
