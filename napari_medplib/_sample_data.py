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
            labels_layer_data(label, name=f"{stem.split('_')[0]} {label_name} (reference)")]


def brain1() -> list[tuple]:
    return _case("brain1", "lesion")


def lung2() -> list[tuple]:
    return _case("lung2_crop", "tumour")
