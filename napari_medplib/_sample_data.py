"""File > Open Sample: real labelled volumes from pyradiomics (BSD-3, see sample_data/PROVENANCE.md)."""

from __future__ import annotations

from pathlib import Path

from medplib_runtime.imaging.io import read_volume

from ._layers import image_layer_data, labels_layer_data

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"  # a link to the top-level folder


def _case(stem: str, label_name: str) -> list[tuple]:
    image = read_volume(SAMPLE_DIR / f"{stem}_image.nrrd")
    label = read_volume(SAMPLE_DIR / f"{stem}_label.nrrd")
    return [image_layer_data(image, name=stem.split("_")[0]),
            labels_layer_data(label, name=f"{stem.split('_')[0]} {label_name} (reference)", reference=True)]


def brain1() -> list[tuple]:
    return _case("brain1", "lesion")


def lung2() -> list[tuple]:
    return _case("lung2_crop", "tumour")


MNI_LABELS = {1: "brain (other)", 2: "grey matter", 3: "white matter"}


def mni152() -> list[tuple]:
    """MNI152 2009a T1 template (2 mm) with brain / grey / white matter labels, from nilearn (offline).

    nilearn arrays are (x, y, z) in RAS; we transpose to napari's (z, y, x) and keep the affine's
    origin as translate (RAS mm — not mixed with the LPS samples above).
    """
    try:
        from nilearn import datasets
    except ImportError:
        from medplib_runtime.errors import InputError

        raise InputError("the MNI152 sample needs nilearn: pip install nilearn") from None
    import numpy as np

    template = datasets.load_mni152_template(resolution=2)
    masks = {label: datasets.load_mni152_brain_mask(resolution=2) if label == 1 else
             (datasets.load_mni152_gm_mask if label == 2 else datasets.load_mni152_wm_mask)(resolution=2)
             for label in MNI_LABELS}
    zyx = lambda img: np.asarray(img.dataobj).transpose(2, 1, 0)  # noqa: E731
    labels = np.zeros(zyx(template).shape, np.uint8)
    for label in (1, 2, 3):  # later labels win: grey and white matter inside the brain mask
        labels[zyx(masks[label]) > 0] = label
    scale = tuple(float(z) for z in reversed(template.header.get_zooms()[:3]))
    translate = tuple(float(t) for t in reversed(template.affine[:3, 3]))
    from .colours import reference_style
    from .layer_roles import REFERENCE, with_role

    meta = {"space": "MNI152 RAS mm", "medplib_label_names": dict(MNI_LABELS)}
    return [(zyx(template).astype(np.float32), {"name": "MNI152", "scale": scale, "translate": translate,
                                                 "metadata": dict(meta), "colormap": "gray"}, "image"),
            (labels, {"name": "MNI152 tissue (reference)", "scale": scale, "translate": translate,
                      "metadata": with_role(meta, REFERENCE), **reference_style()}, "labels")]
