"""Where an eval record's image comes from: a real scan or a synthetic phantom (ours).

Phantoms (ellipsoids with exact labels) and the synthetic MNI152 lesions are cheap to label and easy to
score well on; they are not evidence of quality on real images (docs/design.md). ``medplib eval`` reports
the two apart, real first, so a headline number is never a phantom's. Our builder records each case's
``dataset`` ("phantom", "synthetic" for the MNI152 lesions, "pyradiomics", "nilearn" — the MNI152 template,
an average of real scans); MeCoVQA's own records carry none and are real images.
"""

from __future__ import annotations

SOURCES = ("real", "phantom")  # the report's order: real first
SYNTHETIC_DATASETS = ("phantom", "synthetic")
_SYNTHETIC_CASE_PREFIXES = ("phantom", "mni152lesion")


def image_source(rec) -> str:
    """"phantom" for a synthetic image (our phantoms, the MNI152 synthetic lesions), else "real"."""
    dataset = str(rec.extra.get("dataset") or "").lower()
    case = str(rec.extra.get("case") or "").lower()
    synthetic = dataset in SYNTHETIC_DATASETS or case.startswith(_SYNTHETIC_CASE_PREFIXES)
    return "phantom" if synthetic else "real"


__all__ = ["SOURCES", "SYNTHETIC_DATASETS", "image_source"]
