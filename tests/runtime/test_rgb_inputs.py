"""Every image MedPLIB takes: 2D grey and RGB pictures (PNG/JPEG/TIFF, colour DICOM) through read_volume, the
runtimes (local and remote) and the CLI, on real images: skimage's immunohistochemistry (ihc.png) and retina
photographs, and a lung2 CT slice saved the way MedPLIB's examples save CT (windowed to uint8, replicated to
RGB) with its tumour label."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medplib_runtime.cli import main
from medplib_runtime.errors import InputError
from medplib_runtime.imaging.io import Volume, read_volume, write_labels
from medplib_runtime.imaging.windowing import CT_SOFT_TISSUE, apply_window, rgb_window
from medplib_runtime.schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef
from medplib_runtime.validation import check_image, is_rgb
from medplib_runtime.wire import image_key, pack_bytes, slice_key

REPO = Path(__file__).resolve().parents[2]
SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"  # shipped in the wheel, read offline
IHC = SKIMAGE_DATA / "ihc.png"  # immunohistochemistry (DAB + haematoxylin), 512×512 RGB
RETINA = SKIMAGE_DATA / "retina.jpg"  # fundus photograph, 1411×1411 RGB


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _box(mask: np.ndarray, pad: int = 3) -> Box:
    r, c = np.nonzero(mask)
    h, w = mask.shape
    return Box(max(r.min() - pad, 0), max(c.min() - pad, 0), min(r.max() + pad, h - 1), min(c.max() + pad, w - 1))


@pytest.fixture(scope="module")
def ct_png(tmp_path_factory, lung2_paths) -> tuple[Path, np.ndarray, np.ndarray]:
    """(path, RGB pixels, tumour mask): lung2's slice with the most tumour, soft-tissue window → uint8 → RGB PNG."""
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(lung2_paths[0])))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(lung2_paths[1]))) > 0
    k = int(label.sum(axis=(1, 2)).argmax())
    lo, hi = CT_SOFT_TISSUE
    grey = np.round(np.clip((image[k] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    path = tmp_path_factory.mktemp("rgb") / "lung2_ct.png"
    Image.fromarray(rgb).save(path)
    return path, rgb, label[k]


# -- reading ------------------------------------------------------------------------------------------
def test_rgb_pictures_read_as_yx3_volumes_in_pixels():
    for path, size in ((IHC, (512, 512)), (RETINA, (1411, 1411))):
        v = read_volume(path)
        assert v.is_rgb and v.array.shape == size + (3,) and v.array.dtype == np.uint8
        assert v.shape == size and v.ndim == 2 and v.spacing == (1.0, 1.0)
        assert not v.spacing_known and v.unit == "px" and v.metadata["colour"] == "RGB"
        assert np.array_equal(v.array, np.asarray(Image.open(path).convert("RGB")))
    grey = read_volume(SKIMAGE_DATA / "camera.png")
    assert grey.array.shape == (512, 512) and not grey.is_rgb and grey.unit == "px"


def test_rgb_with_equal_channels_is_grey(ct_png):
    path, rgb, _ = ct_png
    v = read_volume(path)
    assert not v.is_rgb and v.array.shape == rgb.shape[:2] and np.array_equal(v.array, rgb[..., 0])


def test_16bit_grey_png_keeps_its_values(tmp_path):
    values = (np.asarray(Image.open(SKIMAGE_DATA / "camera.png"), np.uint16) * 257)
    Image.fromarray(values).save(tmp_path / "g16.png")
    v = read_volume(tmp_path / "g16.png")
    assert v.array.dtype == np.uint16 and np.array_equal(v.array, values) and not v.is_rgb
    colour = np.asarray(Image.open(IHC).convert("RGB"), np.uint16) * 257  # 16-bit RGB: Pillow would cut it to 8
    sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), str(tmp_path / "c16.png"))
    v = read_volume(tmp_path / "c16.png")
    assert v.is_rgb and v.array.dtype == np.uint16 and np.array_equal(v.array, colour)


def test_palette_png_becomes_rgb(tmp_path):
    Image.open(IHC).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    v = read_volume(tmp_path / "p.png")
    assert v.is_rgb and np.array_equal(v.array, np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))
    assert "palette image converted to RGB" in v.metadata["notes"]


def test_rgba_drops_alpha_and_says_so(tmp_path):
    rgba = np.dstack([np.asarray(Image.open(IHC).convert("RGB")), np.full((512, 512), 255, np.uint8)])
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "a.png")
    v = read_volume(tmp_path / "a.png")
    assert v.is_rgb and np.array_equal(v.array, rgba[..., :3])
    assert v.metadata["notes"] == ["alpha channel dropped (5,120 of 262,144 pixels were transparent: "
                                   "their colour is used as it is)"]


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.open(IHC).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    v = read_volume(tmp_path / "cmyk.jpg")
    assert v.is_rgb and v.array.shape == (512, 512, 3) and "CMYK image converted to RGB" in v.metadata["notes"]
    ihc = np.asarray(Image.open(IHC).convert("RGB"), float)
    assert np.abs(v.array - ihc).mean() < 6  # JPEG's loss only, not a channel mix-up


def test_exif_rotation_is_applied(tmp_path):
    pixels = np.asarray(Image.open(IHC).convert("RGB"))[:, :300]  # 512 rows × 300 columns
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    v = read_volume(tmp_path / "rot.jpg")
    assert v.array.shape == (300, 512, 3)
    from PIL import ImageOps

    assert np.array_equal(v.array, np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg"))))
    assert any("EXIF orientation 6" in n for n in v.metadata["notes"])


def test_too_small_and_animated_pictures_are_refused(tmp_path):
    Image.fromarray((np.zeros((1, 300, 3)) + [10, 20, 30]).astype(np.uint8)).save(tmp_path / "line.png")
    with pytest.raises(InputError, match=r"is 1×300 pixels: too small .* at least 5×5") as e:
        read_volume(tmp_path / "line.png")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"has 24 frames \(animated\); one 2D image is needed"):
        read_volume(SKIMAGE_DATA / "no_time_for_that_tiny.gif")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="is not a readable image"):
        read_volume(tmp_path / "junk.png")
    with pytest.raises(InputError, match="a 3D volume is needed here"):
        read_volume(IHC, allow_2d=False)


def test_colour_dicom_reads_as_rgb():
    from pydicom.data import get_testdata_file

    v = read_volume(get_testdata_file("SC_rgb_rle.dcm"))
    assert v.is_rgb and v.array.shape == (100, 100, 3) and v.spacing_known and v.unit == "mm"
    with pytest.raises(InputError, match="colour DICOM of 2 frames"):
        read_volume(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    with pytest.raises(InputError, match="3×3 pixels: too small"):
        read_volume(get_testdata_file("SC_rgb_small_odd.dcm"))


def test_rgb_volumes_in_itk_formats_stay_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30, 3), np.uint8), isVector=True), str(tmp_path / "c.mha"))
    with pytest.raises(InputError, match=r"3 channels \(RGB\) per voxel; colour is read from 2D pictures"):
        read_volume(tmp_path / "c.mha")


def test_rgb_volume_geometry_and_png_labels_round_trip(tmp_path):
    v = read_volume(IHC)
    labels = np.zeros(v.shape, np.uint8)
    labels[100:150, 200:260] = 3
    write_labels(labels, like=v, path=tmp_path / "l.png")
    assert np.array_equal(read_volume(tmp_path / "l.png").array, labels)
    assert v.with_array(labels).shape == v.shape and not v.with_array(labels).is_rgb
    assert v.to_sitk().GetNumberOfComponentsPerPixel() == 3
    with pytest.raises(InputError, match=r"labels have shape \(512, 512, 3\), but the image is \(512, 512\)"):
        write_labels(np.zeros((512, 512, 3), np.uint8), like=v, path=tmp_path / "x.png")
    three_d = Volume.from_array(np.zeros((4, 8, 8), np.int16))
    with pytest.raises(InputError, match=r"cannot write x.png: .*a PNG holds the labels of one 2D image"):
        write_labels(np.zeros((4, 8, 8), np.uint8), like=three_d, path=tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png"]


# -- runtime pieces ------------------------------------------------------------------------------------
def test_check_image_takes_rgb_and_refuses_rgba():
    rgb = np.asarray(Image.open(IHC).convert("RGB"))
    check_image(rgb)
    check_image(rgb.astype(np.float32) / 255)
    assert is_rgb(rgb) and not is_rgb(np.zeros((4, 64, 3))) and not is_rgb(np.zeros((25, 64, 80)))
    with pytest.raises(InputError, match="looks like RGBA: drop the alpha channel"):
        check_image(np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(InputError, match="an RGB image needs at least 5×5"):
        check_image(np.zeros((64, 3, 3), np.uint8))


def test_rgb_window_is_min_max_and_keeps_channels():
    rgb = np.asarray(Image.open(IHC).convert("RGB"))
    w = rgb_window(rgb)
    assert (w.lo, w.hi, w.modality) == (float(rgb.min()), float(rgb.max()), "RGB")
    unit = apply_window(rgb, w)
    assert unit.shape == rgb.shape and unit.min() == 0.0 and unit.max() == 1.0
    with pytest.raises(InputError, match="constant"):
        rgb_window(np.full((8, 8, 3), 7, np.uint8))


def test_rgb_resizes_with_its_own_channels():
    import torch

    from medplib_runtime.imaging.transforms import resize_longest_and_pad

    rgb = np.random.default_rng(0).random((40, 80, 3)).astype(np.float32)
    x, info = resize_longest_and_pad(rgb, 256)
    assert x.shape == (1, 3, 256, 256) and info.original == (40, 80) and info.resized == (128, 256)
    assert not torch.equal(x[0, 0], x[0, 1])  # not a grey image replicated
    grey, _ = resize_longest_and_pad(rgb[..., 1], 256)
    assert torch.allclose(x[0, 1], grey[0, 0])  # each channel takes the grey path


def test_keys_and_uploads_carry_rgb():
    from medplib_runtime.server.uploads import check_size, decode_slice

    rgb = np.asarray(Image.open(IHC).convert("RGB"))
    assert image_key(rgb) != image_key(np.ascontiguousarray(rgb[..., 0]))
    key = slice_key(rgb, lo=0.0, hi=255.0, modality="RGB")
    got = decode_slice(pack_bytes(rgb), dtype="uint8", rows=512, cols=512, lo=0.0, hi=255.0, modality="RGB",
                       channels=3)
    assert got.key == key and np.array_equal(got.plane, rgb)
    assert check_size("uint8", 512, 512, max_pixels=2**20, max_bytes=2**30, channels=3) == 512 * 512 * 3
    with pytest.raises(InputError, match="1 \\(grey\\) or 3 \\(RGB\\) channels"):
        check_size("uint8", 512, 512, max_pixels=2**20, max_bytes=2**30, channels=4)
    with pytest.raises(InputError, match="holds 524288 bytes, but uint8\\[512, 512, 3\\] needs 786432"):
        decode_slice(pack_bytes(rgb[..., :2].copy()), dtype="uint8", rows=512, cols=512, lo=0.0, hi=255.0,
                     modality="RGB", channels=3)


# -- CLI: refusals before any model loads ---------------------------------------------------------------
def _run(capsys, argv) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_refuses_bad_pictures_in_one_line(capsys, tmp_path, lung2_paths):
    Image.fromarray(np.zeros((1, 300), np.uint8)).save(tmp_path / "line.png")
    out = str(tmp_path / "m.png")
    cases = [
        (["segment", str(tmp_path / "line.png"), "--box", "0,0,0,5", "--out", out], "too small"),
        (["segment", str(SKIMAGE_DATA / "no_time_for_that_tiny.gif"), "--box", "1,1,5,5", "--out", out],
         "24 frames (animated)"),
        (["segment", str(IHC), "--slice", "1", "--box", "1,1,5,5", "--out", out], "a 2D image has one slice"),
        (["segment", str(lung2_paths[0]), "--box", "1,1,5,5", "--out", str(tmp_path / "m.nrrd")],
         "is a 3D volume (36, 256, 256): give --slice K (0–35 along --axis 0)"),
        (["segment", str(lung2_paths[0]), "--slice", "3", "--box", "1,1,5,5", "--out", out],
         "cannot write m.png: a PNG holds the labels of one 2D image"),
        (["segment", str(IHC), "--box", "1,1,5,5", "--propagate", "--out", out], "--propagate needs a 3D volume"),
        (["segment", str(IHC), "--box", "1,1,600,5", "--out", out], "outside"),
    ]
    for argv, said in cases:
        code, err = _run(capsys, argv)
        assert code == 2 and err.startswith("medplib: error:") and said in err and "\n" not in err, (argv, err)
    assert not (tmp_path / "m.png").exists()


# -- the model on real RGB images -----------------------------------------------------------------------
@pytest.mark.weights
def test_box_dice_on_the_rgb_ct_png_through_the_cli(ct_png, tmp_path):
    path, _, truth = ct_png
    b = _box(truth)
    out = tmp_path / "mask.png"
    run = subprocess.run([sys.executable, "-m", "medplib_runtime.cli", "segment", str(path),
                          "--box", f"{b.r0},{b.c0},{b.r1},{b.c1}", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert "area_px" in summary and "area_mm2" not in summary  # a picture's spacing is not mm
    mask = np.asarray(Image.open(out))
    assert mask.shape == truth.shape and set(np.unique(mask)) <= {0, 1}
    score = dice(mask, truth)
    print(f"box Dice on the RGB CT PNG (CLI): {score:.4f}")
    assert score >= 0.80


@pytest.mark.weights
def test_rgb_pixel_path_dice_and_ask(ct_png, local_runtime):
    """The RGB array itself (not collapsed to grey: the runtime's own RGB path, min-max over channels)."""
    _, rgb, truth = ct_png
    key = local_runtime.set_image(rgb)
    assert key != local_runtime.set_image(rgb[..., 0])
    result = local_runtime.segment(SegmentRequest(key, SliceRef(0, 0), Prompt(box=_box(truth))))
    assert result.mask.shape == truth.shape
    score = dice(result.mask, truth)
    print(f"box Dice on the RGB CT array (runtime RGB path): {score:.4f}")
    assert score >= 0.80
    ihc = local_runtime.set_image(read_volume(IHC).array)
    answer = local_runtime.ask(AskRequest(ihc, SliceRef(0, 0), "What is shown in this image?", max_new_tokens=8))
    assert answer.text.strip()


@pytest.mark.weights
def test_rgb_masks_are_identical_local_and_remote(local_runtime, remote_runtime):
    ihc = read_volume(IHC).array
    keys = [rt.set_image(ihc) for rt in (local_runtime, remote_runtime)]
    assert keys[0] == keys[1]
    req = SegmentRequest(keys[0], SliceRef(0, 0), Prompt(box=Box(150, 150, 300, 300)))
    local, remote = (rt.segment(req) for rt in (local_runtime, remote_runtime))
    assert remote.mask.shape == (512, 512) and np.array_equal(local.mask, remote.mask) and local.mask.any()
    assert local.score == remote.score


@pytest.mark.weights
def test_cli_ask_on_an_rgba_picture_says_what_it_dropped(tmp_path):
    rgba = np.dstack([np.asarray(Image.open(IHC).convert("RGB")), np.full((512, 512), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "ihc_rgba.png")
    run = subprocess.run([sys.executable, "-m", "medplib_runtime.cli", "ask", str(tmp_path / "ihc_rgba.png"),
                          "What is shown?", "--max-new-tokens", "8"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert "medplib: note: " in run.stderr and "alpha channel dropped" in run.stderr
    assert run.stdout.strip()
