"""`medplib propagate IMAGE --seeds LABELS --out OUT` as a subprocess on real volumes: three seed slices
drawn as a user would (the structure's mask on its top-quartile, middle and bottom-quartile slices) →
the lesion in 3D, unsure slices listed, provenance beside the output; bad seeds → one line, before
the model loads, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from medplib_runtime.imaging.io import read_volume, write_labels
from medplib_runtime.provenance import read_sidecar


def medplib(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medplib_runtime.cli", *args], capture_output=True, text=True,
                          timeout=600)


def three_seeds(label: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The label on three slices of its range: top quartile, middle, bottom quartile (distinct slices)."""
    z = np.nonzero(label.any(axis=(1, 2)))[0]
    lo, hi = int(z.min()), int(z.max())
    picks = sorted({lo + (hi - lo) // 4, (lo + hi) // 2, hi - (hi - lo) // 4})
    seeds = np.zeros_like(label, dtype=np.uint8)
    for k in picks:
        seeds[k] = label[k] > 0
    return seeds, picks


def dice(a, b) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.weights
def test_three_seed_slices_give_the_brain1_lesion_in_3d(brain1_paths, tmp_path):
    """The README's example: sample_data/brain1_seeds.nrrd is the label on three slices, as drawn."""
    truth = read_volume(brain1_paths[1]).array > 0
    seeds, picks = three_seeds(truth)
    seeds_path = brain1_paths[0].parent / "brain1_seeds.nrrd"
    assert np.array_equal(read_volume(seeds_path).array, seeds), "the shipped seeds are the label on 12, 14, 16"
    out = tmp_path / "lesion.nii.gz"
    run = medplib("propagate", str(brain1_paths[0]), "--seeds", str(seeds_path), "--out", str(out))
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    got = read_volume(out).array == 1
    assert dice(got, truth) >= 0.83  # measured 0.863 (scripts/volume_eval.py)
    assert abs(got.sum() - truth.sum()) / truth.sum() <= 0.10
    assert summary["seeds"] == picks and summary["voxels"] == int(got.sum())
    for k in picks:
        assert np.array_equal(got[k], truth[k]), "seed slices are kept exactly as drawn"
    sources = {s["index"]: s["source"] for s in summary["per_slice"]}
    assert {sources[k] for k in picks} == {"seed"} and set(sources.values()) <= {"seed", "interpolated", "propagated"}
    assert all(0.0 <= s["confidence"] <= 1.0 for s in summary["per_slice"])
    assert isinstance(summary["unsure"], list)
    provenance = read_sidecar(out)
    assert [p.index for p in provenance.prompts] == picks and provenance.preset == "medplib-lite"


@pytest.mark.parametrize("case", ["empty", "other shape", "other geometry", "two labels", "missing label", "dcm"])
def test_bad_seeds_are_one_line_and_write_nothing(case, lung2_paths, tmp_path):
    image = read_volume(lung2_paths[0])
    label = read_volume(lung2_paths[1]).array
    seeds = np.zeros(image.shape, np.uint8)
    seeds[17] = label[17] > 0
    extra: list[str] = []
    out = tmp_path / "out.nii.gz"
    if case == "empty":
        seeds[:] = 0
        expect = "the seeds are empty"
    elif case == "other shape":
        seeds = seeds[:, :-1]
        expect = "shape"
    elif case == "two labels":
        seeds[20] = 2 * (label[20] > 0)
        expect = "pick one (--label N)"
    elif case == "missing label":
        extra = ["--label", "5"]
        expect = "label 5 is not in the seeds"
    elif case == "dcm":
        out = tmp_path / "out.dcm"
        expect = "DICOM-SEG needs an image read from a DICOM series"
    else:
        expect = "do not share the image's geometry"
    if case == "other shape":
        path = tmp_path / "seeds.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(seeds), str(path))
    elif case == "other geometry":
        moved = sitk.GetImageFromArray(seeds)
        moved.CopyInformation(image.to_sitk())
        moved.SetOrigin(tuple(o + 5.0 for o in moved.GetOrigin()))
        path = tmp_path / "seeds.nrrd"
        sitk.WriteImage(moved, str(path))
    else:
        path = write_labels(seeds, like=image, path=tmp_path / "seeds.nrrd")
    run = medplib("propagate", str(lung2_paths[0]), "--seeds", str(path), "--out", str(out), *extra)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and expect in run.stderr, run.stderr
    assert not out.exists() and run.stdout == ""
