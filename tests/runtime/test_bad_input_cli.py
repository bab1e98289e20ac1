"""Issue #33, the CLI and file half: each red-team case, run as the user runs it (``medplib`` in a
subprocess, on brain1 or on a small file written here), is refused with exactly one line
``medplib: error: ...`` on stderr, exit 2, nothing on stdout, no traceback, and every file it could
touch (inputs, an existing --out, the folder's listing) unchanged. Every check runs before the
model loads, so no case needs the weights."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import Turn
from medplib_runtime.validation import MAX_HISTORY_CHARS, check_question, fitting_history

from _bad_input_files import (BOX, MEDPLIB, SAMPLE, SEG, brain1, brain1_variant, cut, dicom_series,
                              label1, nifti_with_pixdim, nrrd_with_spacings, snapshot, truncated)

pytestmark = pytest.mark.process  # each test starts processes: a tier of its own (conftest)

# ----------------------------------------------------------------------------------------- cases
# each builder writes what it needs into tmp and returns the command line after `medplib`

def _out_onto_image(t):
    img = brain1(t)
    return ["segment", img, *SEG, "--out", img]


def _out_onto_image_force(t):
    img = brain1(t)
    return ["segment", img, *SEG, "--out", img, "--force"]


def _out_onto_existing_label(t):
    return ["segment", brain1(t), *SEG, "--out", label1(t)]


def _out_symlink_to_image(t):
    img = brain1(t)
    (t / "link.nrrd").symlink_to(img)
    return ["segment", img, *SEG, "--out", str(t / "link.nrrd"), "--force"]


def _out_hardlink_to_image(t):
    img = brain1(t)
    os.link(img, t / "hard.nrrd")
    return ["segment", img, *SEG, "--out", str(t / "hard.nrrd"), "--force"]


def _out_image_by_other_spelling(t):
    img = brain1(t)
    (t / "sub").mkdir()
    return ["segment", img, *SEG, "--out", str(t / "sub" / ".." / "brain1.nrrd"), "--force"]


def _out_onto_region_mask(t):
    mask = brain1_variant(t, "region.nrrd", lambda a: (a > 0).astype(np.uint8), like="brain1_label")
    return ["segment", brain1(t), "--slice", "16", "--region-mask", mask, "--out", mask, "--force"]


def _out_onto_dicom_slice(t):
    files = dicom_series(t / "dcm")
    files[2].rename(t / "dcm" / "slice.nrrd")  # GDCM reads a series by content, whatever the names
    return ["segment", str(t / "dcm"), "--slice", "2", "--box", "2,2,20,20", "--out", str(t / "dcm" / "slice.nrrd"),
            "--force"]


def _ask_out_onto_image(t):
    img = brain1(t)
    return ["ask", img, "--slice", "16", "Segment the lesion.", "--out", img]


def _ask_out_onto_existing(t):
    return ["ask", brain1(t), "--slice", "16", "Segment the lesion.", "--out", label1(t, "old_masks.nrrd")]


def _ask_out_onto_labels(t):
    lab = label1(t)
    return ["ask", brain1(t), "--slice", "16", "How big is the lesion?", "--labels", lab, "--out", lab, "--force"]


def _trunc_nii_gz(t):
    return ["segment", truncated(t, "b.nii.gz"), *SEG, "--out", str(t / "o.nii.gz")]


def _trunc_nii(t):
    return ["segment", truncated(t, "b.nii", compress=False), *SEG, "--out", str(t / "o.nii.gz")]


def _trunc_nrrd_gzip(t):
    return ["segment", truncated(t, "b.nrrd"), *SEG, "--out", str(t / "o.nii.gz")]


def _trunc_nrrd_raw(t):
    return ["segment", truncated(t, "b.nrrd", compress=False), *SEG, "--out", str(t / "o.nii.gz")]


def _trunc_mha(t):
    return ["segment", truncated(t, "b.mha"), *SEG, "--out", str(t / "o.nii.gz")]


def _trunc_nii_gz_labels(t):
    return ["measure", brain1(t), truncated(t, "lab.nii.gz", keep=0.9)]


def _trunc_region_mask(t):
    mask = brain1_variant(t, "region.nii.gz", lambda a: (a > 0).astype(np.uint8), like="brain1_label")
    cut(Path(mask), 0.5)
    return ["segment", brain1(t), "--slice", "16", "--region-mask", mask, "--out", str(t / "o.nii.gz")]


def _nan_on_slice(t):
    def poke(a):
        a = a.astype(np.float32)
        a[16, 150:170, 90:110] = np.nan
        return a
    return ["segment", brain1_variant(t, "nan.nrrd", poke), *SEG, "--out", str(t / "o.nii.gz")]


def _inf_on_slice(t):
    def poke(a):
        a = a.astype(np.float32)
        a[16, 0, 0] = np.inf
        return a
    return ["ask", brain1_variant(t, "inf.nrrd", poke), "--slice", "16", "What is this?"]


def _nan_elsewhere_propagate(t):
    def poke(a):
        a = a.astype(np.float32)
        a[20] = np.nan
        return a
    return ["segment", brain1_variant(t, "nan20.nrrd", poke), *SEG, "--propagate", "--out", str(t / "o.nii.gz")]


def _values_near_1e300(t):
    return ["segment", brain1_variant(t, "huge.nrrd", lambda a: a.astype(np.float64) * 1e297), *SEG,
            "--out", str(t / "o.nii.gz")]


def _region_npy_some_nan(t):
    mask = np.zeros((256, 256), np.float32)
    mask[160:200, 90:110] = 1
    mask[0, 0] = np.nan
    np.save(t / "m.npy", mask)
    return ["segment", brain1(t), "--slice", "16", "--region-mask", str(t / "m.npy"), "--out", str(t / "o.nii.gz")]


def _region_npy_all_nan(t):
    np.save(t / "m.npy", np.full((256, 256), np.nan))
    return ["ask", brain1(t), "--slice", "16", "--region-mask", str(t / "m.npy"), "What is <region>?"]


def _region_volume_nan(t):
    def poke(a):
        a = (a > 0).astype(np.float32)
        a[16, 0, :] = np.nan
        return a
    mask = brain1_variant(t, "region.nrrd", poke, like="brain1_label")
    return ["segment", brain1(t), "--slice", "16", "--region-mask", mask, "--out", str(t / "o.nii.gz")]


def _region_volume_other(what):
    def moved(img: sitk.Image) -> None:
        if what == "spacing":
            img.SetSpacing([s * 1.5 for s in img.GetSpacing()])
        elif what == "origin":
            img.SetOrigin([o + 20.0 for o in img.GetOrigin()])
        else:
            d = np.array(img.GetDirection()).reshape(3, 3)
            img.SetDirection(tuple((d @ np.diag([-1.0, 1.0, -1.0])).ravel()))

    def build(t):
        mask = brain1_variant(t, "region.nrrd", lambda a: (a > 0).astype(np.uint8), like="brain1_label",
                              geometry=moved)
        return ["segment", brain1(t), "--slice", "16", "--region-mask", mask, "--out", str(t / "o.nii.gz")]
    return build


def _dicom_truncated_middle(t):
    files = dicom_series(t / "dcm")
    cut(files[3], 0.9)
    return ["segment", str(t / "dcm"), "--slice", "2", "--box", "2,2,20,20", "--out", str(t / "o.nii.gz")]


def _dicom_truncated_last(t):
    files = dicom_series(t / "dcm")
    cut(files[-1], 0.9)  # at an end: no gap, the series would just be one slice short
    return ["segment", str(t / "dcm"), "--slice", "2", "--box", "2,2,20,20", "--out", str(t / "o.nii.gz")]


def _dicom_duplicate_position(t):
    dicom_series(t / "dcm", positions=(0, 2.5, 5, 5, 7.5, 10))
    return ["segment", str(t / "dcm"), "--slice", "2", "--box", "2,2,20,20", "--out", str(t / "o.nii.gz")]


def _dicom_gap(t):
    dicom_series(t / "dcm", positions=(0, 2.5, 5, 10, 12.5, 15))
    return ["segment", str(t / "dcm"), "--slice", "2", "--box", "2,2,20,20", "--out", str(t / "o.nii.gz")]


def _dicom_zero_pixel_spacing(t):
    import pydicom  # [dev]: ITK cannot write a zero spacing, so the files are edited after writing

    for path in dicom_series(t / "dcm"):
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0, 0]
        ds.save_as(path)
    return ["segment", str(t / "dcm"), "--slice", "2", "--box", "2,2,20,20", "--out", str(t / "o.nii.gz")]


def _threshold(value):
    return lambda t: ["segment", brain1(t), *SEG, "--threshold", value, "--out", str(t / "o.nii.gz")]


def _ask_threshold_nan(t):
    return ["ask", brain1(t), "--slice", "16", "Segment the lesion.", "--threshold", "nan"]


def _measure_other_direction(t):
    def flip(img):
        d = np.array(img.GetDirection()).reshape(3, 3)
        img.SetDirection(tuple((d @ np.diag([-1.0, 1.0, 1.0])).ravel()))
    return ["measure", brain1(t), brain1_variant(t, "lab.nrrd", lambda a: a, like="brain1_label", geometry=flip)]


def _measure_negative_ids(t):
    return ["measure", brain1(t), brain1_variant(t, "lab.nrrd", lambda a: -a.astype(np.int16), like="brain1_label")]


def _measure_nan_labels(t):
    def poke(a):
        a = a.astype(np.float32)
        a[0, 0, :5] = np.nan
        return a
    return ["measure", brain1(t), brain1_variant(t, "lab.nrrd", poke, like="brain1_label")]


def _measure_negative_label_arg(t):
    return ["measure", brain1(t), label1(t), "--label", "-1"]


def _ask_labels_other_direction(t):
    return ["ask", brain1(t), "--slice", "16", "How big is the lesion?", "--labels", _measure_other_direction(t)[2]]


def _pixdim(value):
    return lambda t: ["segment", nifti_with_pixdim(t, value), "--slice", "2", "--box", "2,2,20,20",
                      "--out", str(t / "o.nii.gz")]


def _nrrd_nan_spacing(t):
    return ["segment", nrrd_with_spacings(t, "nan 1 2"), "--slice", "2", "--box", "2,2,20,20",
            "--out", str(t / "o.nii.gz")]


def _mha_zero_spacing(t):
    arr = np.zeros((6, 32, 32), np.int16).tobytes()
    header = ("ObjectType = Image\nNDims = 3\nElementSpacing = 0 1 2\nDimSize = 32 32 6\nElementType = MET_SHORT\n"
              "ElementDataFile = LOCAL\n")
    (t / "z.mha").write_bytes(header.encode() + arr)
    return ["segment", str(t / "z.mha"), "--slice", "2", "--box", "2,2,20,20", "--out", str(t / "o.nii.gz")]


def _question(text, *extra):
    return lambda t: ["ask", brain1(t), "--slice", "16", text, *extra]


def _max_new_tokens(value):
    return lambda t: ["ask", brain1(t), "--slice", "16", "What is this?", "--max-new-tokens", value]


def _argv(*args):
    return lambda t: [*(brain1(t) if a == "IMG" else a for a in args)]


def _serve_port_in_use(t):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    probe.listen()
    _KEEP.append(probe)  # listening while the command runs; closed by the test
    return ["serve", "--port", str(probe.getsockname()[1]), "--preload", "none"]


def _path_with_newline(t):
    return ["segment", str(t / "scan\nmedplib: ok"), *SEG, "--out", str(t / "o.nii.gz")]


def _path_with_ansi(t):
    return ["segment", brain1(t), *SEG, "--out", str(t / "\x1b[2J\x1b[31mmissing" / "o.nii.gz")]


_KEEP: list[socket.socket] = []

CASES = [
    # (id, builder, what the one line must say)
    ("segment-out-onto-image", _out_onto_image, "is the command's input IMAGE"),
    ("segment-out-onto-image-force", _out_onto_image_force, "is the command's input IMAGE"),
    ("segment-out-onto-existing-label", _out_onto_existing_label, "already exists: pass --force to replace it"),
    ("segment-out-symlink-to-image", _out_symlink_to_image, "is the command's input IMAGE"),
    ("segment-out-hardlink-to-image", _out_hardlink_to_image, "is the command's input IMAGE"),
    ("segment-out-image-other-spelling", _out_image_by_other_spelling, "is the command's input IMAGE"),
    ("segment-out-onto-region-mask", _out_onto_region_mask, "is the command's input --region-mask"),
    ("segment-out-onto-dicom-file", _out_onto_dicom_slice, "is a file of the command's input IMAGE"),
    ("ask-out-onto-image", _ask_out_onto_image, "is the command's input IMAGE"),
    ("ask-out-onto-existing", _ask_out_onto_existing, "already exists: pass --force"),
    ("ask-out-onto-labels", _ask_out_onto_labels, "is the command's input --labels"),
    ("truncated-nii-gz", _trunc_nii_gz, "is truncated"),
    ("truncated-nii", _trunc_nii, "is truncated"),
    ("truncated-nrrd-gzip", _trunc_nrrd_gzip, "truncated"),
    ("truncated-nrrd-raw", _trunc_nrrd_raw, "truncated"),
    ("truncated-mha", _trunc_mha, "truncated"),
    ("truncated-labels-nii-gz", _trunc_nii_gz_labels, "is truncated"),
    ("truncated-region-mask", _trunc_region_mask, "is truncated"),
    ("nan-on-slice", _nan_on_slice, "slice 16 (axis 0) holds 400 NaN/inf voxels"),
    ("inf-on-slice", _inf_on_slice, "slice 16 (axis 0) holds 1 NaN/inf voxel"),
    ("nan-elsewhere-propagate", _nan_elsewhere_propagate, "NaN/inf voxels"),
    ("values-near-1e300", _values_near_1e300, "float32 arithmetic overflows"),
    ("region-npy-some-nan", _region_npy_some_nan, "--region-mask"),
    ("region-npy-all-nan", _region_npy_all_nan, "holds 65,536 NaN/inf voxels"),
    ("region-volume-nan", _region_volume_nan, "NaN/inf voxels"),
    ("region-volume-other-spacing", _region_volume_other("spacing"), "(different spacing)"),
    ("region-volume-other-origin", _region_volume_other("origin"), "(different origin)"),
    ("region-volume-other-direction", _region_volume_other("direction"), "(different direction)"),
    ("dicom-truncated-middle-file", _dicom_truncated_middle, "s003.dcm belongs to the series but cannot be read"),
    ("dicom-truncated-last-file", _dicom_truncated_last, "s005.dcm belongs to the series but cannot be read"),
    ("dicom-duplicate-position", _dicom_duplicate_position, "s002.dcm and s003.dcm are both at position 5 mm"),
    ("dicom-gap", _dicom_gap, "a slice is missing"),
    ("dicom-zero-pixel-spacing", _dicom_zero_pixel_spacing, "PixelSpacing"),
    ("threshold-2", _threshold("2"), "threshold must lie strictly between 0 and 1; got 2.0"),
    ("threshold-nan", _threshold("nan"), "threshold must lie strictly between 0 and 1; got nan"),
    ("threshold-minus-1", _threshold("-1"), "threshold must lie strictly between 0 and 1; got -1.0"),
    ("threshold-0", _threshold("0"), "threshold must lie strictly between 0 and 1; got 0.0"),
    ("ask-threshold-nan", _ask_threshold_nan, "threshold must lie strictly between 0 and 1"),
    ("measure-other-direction", _measure_other_direction, "(different direction)"),
    ("measure-negative-ids", _measure_negative_ids, "negative ids"),
    ("measure-nan-labels", _measure_nan_labels, "NaN/inf voxels"),
    ("measure-negative-label-arg", _measure_negative_label_arg, "label -1 cannot be measured"),
    ("ask-labels-other-direction", _ask_labels_other_direction, "(different direction)"),
    ("nifti-pixdim-nan", _pixdim(float("nan")), "pixdim) nan"),
    ("nifti-pixdim-0", _pixdim(0.0), "pixdim) 0"),
    ("nifti-pixdim-negative", _pixdim(-1.0), "pixdim) -1"),
    ("nrrd-spacings-nan", _nrrd_nan_spacing, "spacings 'nan 1 2'"),
    ("mha-spacing-0", _mha_zero_spacing, "zero or unreadable voxel spacing"),
    *[(f"question-token-{tok.strip('<>/')}{'-close' if '/' in tok else ''}", _question(f"Where is the {tok} here?"),
       f"holds {tok}") for tok in ("<SEG>", "<ref>", "</ref>", "<sr>", "</sr>", "<mask>", "</mask>", "</region>")],
    ("question-region-without-region", _question("Is <region> the lesion?"), "no region was given"),
    ("question-region-twice", _question("Is <region> like <region>?", "--box", BOX), "<region> 2 times"),
    ("question-100k-characters", _question("Is this the lesion? " * 5000), "the limit is 2,000"),
    ("max-new-tokens-0", _max_new_tokens("0"), "from 1 to 512; got 0"),
    ("max-new-tokens-minus-5", _max_new_tokens("-5"), "from 1 to 512; got -5"),
    ("max-new-tokens-huge", _max_new_tokens("100000"), "from 1 to 512"),
    ("argparse-unknown-option", _argv("segment", "IMG", *SEG, "--out", "o.nii.gz", "--bogus"),
     "unrecognized arguments: --bogus"),
    ("argparse-missing-required", _argv("segment", "IMG"), "the following arguments are required: --out"),
    ("argparse-bad-choice", _argv("segment", "IMG", "--slice", "1", "--axis", "5", "--out", "o.nii.gz"),
     "argument --axis: invalid choice"),
    ("argparse-not-an-int", _argv("segment", "IMG", "--slice", "x", "--out", "o.nii.gz"), "invalid int value: 'x'"),
    ("argparse-no-command", _argv(), "the following arguments are required: command"),
    ("serve-port-99999", _argv("serve", "--port", "99999"), "99999 is not a port number (1-65535)"),
    ("serve-port-in-use", _serve_port_in_use, "is already in use by another program"),
    ("serve-max-connections", _argv("serve", "--max-connections", "3"), "--max-connections must be at least 8"),
    ("serve-header-timeout", _argv("serve", "--header-timeout-s", "-1"), "--header-timeout-s must be positive"),
    ("path-with-newline", _path_with_newline, "scan\\nmedplib: ok does not exist"),
    ("path-with-ansi-escape", _path_with_ansi, "\\x1b[2J\\x1b[31mmissing"),
]


def run_medplib(argv: list[str], cwd: Path, *, env: dict | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k != "MEDPLIB_DEBUG"}
    return subprocess.run([MEDPLIB, *argv], cwd=cwd, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, env=env)


@pytest.mark.parametrize("build, message", [pytest.param(b, m, id=i) for i, b, m in CASES])
def test_refused_in_one_line_and_nothing_lost(tmp_path, build, message):
    work = tmp_path / "work"
    work.mkdir()
    try:
        argv = build(work)
        before = snapshot(work, SAMPLE)
        proc = run_medplib(argv, cwd=work)
    finally:
        while _KEEP:
            _KEEP.pop().close()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.split("\n")
    assert len(lines) == 2 and lines[1] == "" and lines[0].startswith("medplib: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not proc.stdout
    assert all(c.isprintable() for c in lines[0]), "control characters are shown escaped"
    assert message in lines[0], lines[0]
    assert snapshot(work, SAMPLE) == before, "every input, an existing --out and the folder are unchanged"


def test_cases_are_many_and_distinct():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------------------- what still works

def test_force_replaces_an_existing_out_and_the_good_files_still_read(tmp_path):
    """--force is accepted (the refusal that follows here is the prompt's, before any write); the
    untouched formats and a good DICOM series still read."""
    from medplib_runtime.imaging.io import read_volume

    img = brain1(tmp_path)
    old = label1(tmp_path, "old.nrrd")
    proc = run_medplib(["segment", img, "--slice", "16", "--box", "1,1,1,5", "--out", old, "--force"], cwd=tmp_path)
    assert proc.returncode == 2 and "degenerate" in proc.stderr  # got past the --out check
    for name, compress in (("b.nii.gz", True), ("b.nii", False), ("b.mha", True), ("b.nrrd", False)):
        sitk.WriteImage(sitk.ReadImage(img), str(tmp_path / name), compress)
        assert read_volume(tmp_path / name).shape == (25, 256, 256)
    raw = gzip.decompress((tmp_path / "b.nii.gz").read_bytes())
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))  # two gzip members
    assert read_volume(tmp_path / "two.nii.gz").shape == (25, 256, 256)
    dicom_series(tmp_path / "dcm")
    (tmp_path / "dcm" / "notes.txt").write_text("not DICOM")
    assert read_volume(tmp_path / "dcm").shape == (6, 32, 32)


def test_truncated_dicom_found_without_pydicom(tmp_path, monkeypatch):
    """pydicom is a [dev] extra: without it, the left-out file is still named (its series UID as text)."""
    from medplib_runtime.imaging.io import read_volume

    files = dicom_series(tmp_path / "dcm")
    cut(files[0], 0.8)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now raises ImportError
    with pytest.raises(InputError, match="s000.dcm belongs to the series but cannot be read"):
        read_volume(tmp_path / "dcm")


def test_history_is_capped_and_trimmed_to_fit():
    """The runtime check every transport uses (local, remote, server, chat): the earlier turns' length is capped."""
    turn = Turn("What is this?", "x" * 990)
    long = (turn,) * (MAX_HISTORY_CHARS // 1000 + 1)
    with pytest.raises(InputError, match=f"the limit is {MAX_HISTORY_CHARS:,}"):
        check_question("And now?", history=long)
    kept = fitting_history(long)
    check_question("And now?", history=kept)
    assert 0 < len(kept) < len(long) and kept == long[-len(kept):]
    with pytest.raises(InputError, match="earlier turn 1's question holds <mask>"):
        check_question("And now?", history=(Turn("a <mask> b", "c"),))
