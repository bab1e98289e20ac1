"""Source volumes with exact labels for datasets and tests: ellipsoid phantoms, and MNI152 (nilearn).

Each writer puts ``{id}_image``/``{id}_label`` files and returns a :class:`CaseSpec`. Phantom
arrays are ``(z, y, x)`` with spacing ``(3, 1, 1)`` mm and identity direction: a body ellipse with a
bright "nodule" and a dark "cyst" (ellipsoids with random centres, one per patient side), CT in HU
or MR in arbitrary units, with mild Gaussian noise. Labels are exact by construction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..imaging.io import Volume, write_labels, write_volume
from .cases import CaseSpec

PHANTOM_LABELS = {1: "nodule", 2: "cyst"}
_INTENSITY = {"CT": {"air": -1000.0, "body": 40.0, "nodule": 120.0, "cyst": 0.0, "noise": 10.0},
              "MR": {"air": 0.0, "body": 300.0, "nodule": 700.0, "cyst": 100.0, "noise": 15.0}}


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    zz, yy, xx = np.ogrid[tuple(slice(0, s) for s in shape)]
    return (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2) <= 1.0


def write_phantom_case(folder: str | Path, index: int, *, modality: str = "CT", seed: int = 0,
                       shape: tuple[int, int, int] = (20, 96, 96), split: str | None = None) -> CaseSpec:
    """Write phantom ``index`` (NRRD) into ``folder``; deterministic for (index, modality, seed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, index, 0 if modality == "CT" else 1])
    z, y, x = shape
    spacing = (3.0, 1.0, 1.0)
    body = _ellipsoid(shape, (z / 2, y / 2, x / 2), (z * 0.9, y * 0.42, x * 0.46))
    labels = np.zeros(shape, np.uint8)
    side = rng.choice([-1, 1])  # nodule on one side of the patient, cyst on the other
    for lab, s in ((1, side), (2, -side)):
        centre = (rng.uniform(0.35, 0.65) * z, rng.uniform(0.35, 0.65) * y, x / 2 + s * rng.uniform(0.18, 0.28) * x)
        radii = (rng.uniform(2.0, 4.0), rng.uniform(5.0, 11.0), rng.uniform(5.0, 11.0))
        labels[_ellipsoid(shape, centre, radii) & body & (labels == 0)] = lab
    tab = _INTENSITY[modality]
    image = np.where(body, tab["body"], tab["air"])
    image[labels == 1], image[labels == 2] = tab["nodule"], tab["cyst"]
    image = (image + rng.normal(0, tab["noise"], shape)).astype(np.float32)
    origin = tuple(-(n - 1) * s / 2 for n, s in zip((x, y, z), spacing[::-1]))  # centre at 0 (ITK x, y, z)
    vol = Volume.from_array(image, spacing=spacing, origin=origin)
    cid = f"phantom{modality.lower()}{index:02d}"
    img_path, lab_path = folder / f"{cid}_image.nrrd", folder / f"{cid}_label.nrrd"
    write_volume(vol, img_path)
    write_labels(labels, like=vol, path=lab_path)
    present = {k: v for k, v in PHANTOM_LABELS.items() if (labels == k).any()}
    return CaseSpec(cid, img_path, lab_path, modality, "phantom", present, "phantom", split)


MNI_LABELS = {1: "other brain tissue", 2: "grey matter", 3: "white matter"}


def write_mni152_case(folder: str | Path, *, split: str | None = None) -> CaseSpec:
    """MNI152 2009a T1 template (2 mm) with brain-minus-GM/WM, grey and white matter labels (nilearn,
    offline). Later labels win where nilearn's masks overlap. Written as NIfTI so ITK's LPS holds."""
    import nibabel as nib
    from nilearn import datasets

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = datasets.load_mni152_template(resolution=2)
    labels = np.zeros(template.shape[:3], np.uint8)
    for lab, load in ((1, datasets.load_mni152_brain_mask), (2, datasets.load_mni152_gm_mask),
                      (3, datasets.load_mni152_wm_mask)):
        labels[np.asarray(load(resolution=2).dataobj) > 0] = lab
    img_path, lab_path = folder / "mni152_image.nii.gz", folder / "mni152_label.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(template.dataobj, dtype=np.float32), template.affine), img_path)
    nib.save(nib.Nifti1Image(labels, template.affine), lab_path)
    return CaseSpec("mni152", img_path, lab_path, "MR", "brain", dict(MNI_LABELS), "nilearn", split)


LESION_LABELS = {1: "lesion"}


def write_mni152_lesion_case(folder: str | Path, index: int, *, seed: int = 0,
                             split: str | None = None) -> CaseSpec:
    """MNI152 with a synthetic lesion (``index``-th, deterministic for (seed, index)), labelled
    "lesion" alone, as a real lesion case is: a blob of 2–3 overlapping ellipsoids (6–16 mm radii) in
    one hemisphere's brain, solid bright, ring (bright rim, dark core) or dark against the template,
    with noise. Why: the real volumes hold two lesions (breast, lung) and no brain one, so a brain
    lesion on a held-out MR read as the phantoms' bright "nodule" or dark "cyst"."""
    import nibabel as nib
    from nilearn import datasets

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, index, 152])
    template = datasets.load_mni152_template(resolution=2)
    image = np.asarray(template.dataobj, dtype=np.float32).copy()
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    inner = np.argwhere(brain)
    side = rng.choice([-1, 1])
    mid = image.shape[0] / 2
    candidates = inner[(inner[:, 0] - mid) * side > 8]  # array axis 0 is x: one hemisphere, off the midline
    centre = candidates[rng.integers(len(candidates))].astype(float)
    blob = np.zeros(image.shape, bool)
    for _ in range(rng.integers(2, 4)):
        offset = rng.normal(0, 2.0, 3)
        blob |= _ellipsoid(image.shape, centre + offset, rng.uniform(3.0, 8.0, 3))
    blob &= brain
    kind = rng.choice(["bright", "ring", "dark"])
    wm = float(np.median(image[brain]))
    if kind == "dark":
        value = np.full(image.shape, wm * rng.uniform(0.35, 0.55), np.float32)
    else:
        value = np.full(image.shape, wm * rng.uniform(1.25, 1.6), np.float32)
    if kind == "ring":  # a dark core inside the bright rim: the blob shrunk by its own distance
        from scipy.ndimage import binary_erosion
        value[binary_erosion(blob, iterations=2)] = wm * rng.uniform(0.35, 0.55)
    image[blob] = value[blob] + rng.normal(0, 0.04 * wm, int(blob.sum()))
    labels = blob.astype(np.uint8)
    cid = f"mni152lesion{index:02d}"
    img_path, lab_path = folder / f"{cid}_image.nii.gz", folder / f"{cid}_label.nii.gz"
    nib.save(nib.Nifti1Image(image, template.affine), img_path)
    nib.save(nib.Nifti1Image(labels, template.affine), lab_path)
    return CaseSpec(cid, img_path, lab_path, "MR", "brain", dict(LESION_LABELS), "synthetic", split)
