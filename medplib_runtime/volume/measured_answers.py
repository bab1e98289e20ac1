"""Answers to quantitative questions are measured, not generated.

When a question asks for a volume, a size or diameter, a count, a position or side, or an
intensity, the number comes from the mask and the image geometry (volume/measure.py), is
stated with its unit, and names the mask it came from; the model's own text follows, marked
as the model's. Which quantity a question asks is decided by keywords (tested), not by the LLM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .measure import LabelMeasurement

_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (  # first match wins: "volume" before "size"
    ("volume", re.compile(r"\b(volume|how much (tissue|space)|ml|millilit(er|re)s?|cc|cm3|cm³)\b", re.I)),
    ("diameter", re.compile(r"\b(diameter|long(est)? axis|widest|width|length|how (long|wide))\b", re.I)),
    ("count", re.compile(r"\b(how many|number of|count)\b", re.I)),
    ("laterality", re.compile(r"\b(which side|left or right|right or left|laterality|lateral(ity)?|side)\b", re.I)),
    ("position", re.compile(r"\b(where|position|located|location|centroid|coordinates?)\b", re.I)),
    ("intensity", re.compile(r"\b(intensity|density|hounsfield|hu|attenuation|bright(ness)?|signal)\b", re.I)),
    ("size", re.compile(r"\b(how (big|large|small)|size|extent|dimensions?|measure)\b", re.I)),
)


def quantity_asked(question: str) -> str | None:
    """'volume', 'diameter', 'count', 'laterality', 'position', 'intensity', 'size' or None."""
    for kind, pattern in _PATTERNS:
        if pattern.search(question or ""):
            return kind
    return None


@dataclass(frozen=True)
class MeasuredAnswer:
    text: str  # the measured statement, then the model's text (if any)
    kind: str
    source: str  # which mask the numbers came from
    values: dict


def _name(m: LabelMeasurement) -> str:
    return f"'{m.name}' (label {m.label})" if m.name else f"label {m.label}"


def _statement(kind: str, m: LabelMeasurement) -> tuple[str, dict]:
    who = _name(m)
    if kind == "volume":
        return f"Volume of {who}: {m.volume_ml:.2f} mL ({m.voxels} voxels).", {"volume_ml": m.volume_ml}
    if kind == "diameter":
        return (f"Largest in-plane diameter of {who}: {m.largest_diameter_mm:.1f} mm (slice {m.diameter_slice}).",
                {"largest_diameter_mm": m.largest_diameter_mm})
    if kind == "size":
        ext = " × ".join(f"{e:.1f}" for e in m.extent_mm)
        return (f"Size of {who}: {m.volume_ml:.2f} mL, largest in-plane diameter {m.largest_diameter_mm:.1f} mm, "
                f"extent {ext} mm (z × y × x).", {"volume_ml": m.volume_ml, "largest_diameter_mm": m.largest_diameter_mm,
                                                  "extent_mm": m.extent_mm})
    if kind == "laterality":
        side = {"left": "on the patient's left", "right": "on the patient's right", "midline": "at the midline"}
        return (f"{who[0].upper() + who[1:]} lies {side[m.laterality]} (centroid relative to the volume's centre plane).",
                {"laterality": m.laterality})
    if kind == "position":
        x, y, z = m.centroid_ras
        return (f"Centroid of {who}: RAS ({x:.1f}, {y:.1f}, {z:.1f}) mm, slices {m.slices[0]}–{m.slices[1]}, "
                f"{m.laterality} side.", {"centroid_ras": m.centroid_ras, "centroid_lps": m.centroid_lps})
    if kind == "intensity":
        if m.intensity is None:
            return f"No image intensities were given for {who}.", {}
        s = m.intensity
        return (f"Mean intensity of {who}: {s.mean:.1f} ± {s.std:.1f} {s.unit} (range {s.min:.0f} to {s.max:.0f}).",
                {"mean": s.mean, "std": s.std, "unit": s.unit})
    raise ValueError(kind)


def measured_answer(question: str, measurements: tuple[LabelMeasurement, ...], *, model_text: str = "",
                    source: str) -> MeasuredAnswer | None:
    """The measured answer to ``question`` about ``measurements`` (None if it asks no quantity)."""
    kind = quantity_asked(question)
    if kind is None or not measurements:
        return None
    if kind == "count":
        names = ", ".join(_name(m) for m in measurements)
        text = f"{len(measurements)} labelled structure(s) in {source}: {names}."
        values = {"count": len(measurements)}
    else:
        parts = [_statement(kind, m) for m in measurements]
        text = " ".join(p[0] for p in parts)
        values = {str(m.label): p[1] for m, p in zip(measurements, parts)}
    text += f" [measured from {source}]"
    if model_text.strip():
        text += f"\nModel: {model_text.strip()}"
    return MeasuredAnswer(text, kind, source, values)
