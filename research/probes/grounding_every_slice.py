"""Text → mask on every slice of a volume, not only the lesion's: how often a mask comes back, and how often
it is right, on slices with and without the lesion.

    python research/probes/grounding_every_slice.py [--question "Segment the lesion."] [CASE ...]

CASE: a name whose ``NAME_image.nrrd`` and ``NAME_label.nrrd`` are in sample_data/ or ../shared/data/pyradiomics/
(default: brain1 lung2_crop breast1, the volumes the glue was trained near). One ask per slice through the
runtime's own path (LocalRuntime.ask: abstention included). Prints one JSON line per slice, then per case:
lesion slices with a mask returned and how many of those have Dice ≥ 0.5, and no-lesion slices with a mask
returned (every one of those is wrong), with their confidences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from medplib_runtime.imaging.io import read_volume  # noqa: E402
from medplib_runtime.local import LocalRuntime  # noqa: E402
from medplib_runtime.schemas import AskRequest, SliceRef  # noqa: E402

FOLDERS = (ROOT / "sample_data", ROOT.parent / "shared" / "data" / "pyradiomics")


def _pair(name: str) -> tuple[Path, Path]:
    for folder in FOLDERS:
        if (folder / f"{name}_image.nrrd").is_file():
            return folder / f"{name}_image.nrrd", folder / f"{name}_label.nrrd"
    raise SystemExit(f"{name}: no {name}_image.nrrd in {', '.join(map(str, FOLDERS))}")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", default=["brain1", "lung2_crop", "breast1"])
    ap.add_argument("--question", default="Segment the lesion.")
    args = ap.parse_args()
    rt = LocalRuntime()
    summary = []
    for name in args.cases:
        image_path, label_path = _pair(name)
        volume, label = read_volume(image_path), read_volume(label_path).array > 0
        key = rt.set_image(volume.array, spacing=volume.spacing)
        rows = []
        for z in range(volume.array.shape[0]):
            r = rt.ask(AskRequest(image_key=key, slice=SliceRef(0, z), question=args.question, max_new_tokens=24))
            rows.append({"case": name, "z": z, "lesion_px": int(label[z].sum()), "returned": bool(r.masks),
                         "dice": _dice(r.masks[0], label[z]) if r.masks else None, "confidence": r.confidence})
            print(json.dumps(rows[-1]), flush=True)
        lesion = [r for r in rows if r["lesion_px"]]
        empty = [r for r in rows if not r["lesion_px"]]
        back = [r for r in lesion if r["returned"]]
        wrong = [r for r in empty if r["returned"]]
        sure = ", ".join(f"{r['confidence']:.2f}" for r in wrong) or "-"
        summary.append(f"{name}: lesion slices {len(lesion)}, mask returned on {len(back)}, Dice ≥ 0.5 on "
                       f"{sum(r['dice'] >= 0.5 for r in back)}; no-lesion slices {len(empty)}, mask returned on "
                       f"{len(wrong)} (confidence {sure})")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
