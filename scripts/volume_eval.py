"""Measure 3D propagation on real labelled volumes: one box → guarded walk, and three seed slices.

Cases: brain1, lung2, breast1 (tuning set: ../shared/data/pyradiomics or $MEDPLIB_SHARED_DATA) and
brain2, lung1 (held out, never tuned on: fetch them with scripts/fetch_pyradiomics_cases.py into
build/pyradiomics-extra). Protocols, against the label (value 1) along axis 0:

* ``box``: the label's bounding box on its largest cross-section, padded by 5 % of its size per
  side → Segment on that slice → ``propagate`` with the default (guarded) settings;
* ``seeds``: the label's own mask on three slices (the quartiles and the middle of its slice range;
  fewer when the range is short) → ``propagate_from_seeds``.

Columns: 3D Dice, volume error, slices found vs the label's, unsure slices, seconds, and seconds
over the encoder time of the slices the run embedded (encoder timed on the seed slice, one sample:
indicative on a shared CPU). Usage: python scripts/volume_eval.py [--cases brain1,lung2] [--detail]

``--protocols past`` (tuning cases only) prints what set the stops past the outermost seed: from
seeds at the quartiles and at the label's ends, each walk outwards with the stops recorded but not
obeyed, per slice the old verdict (propagation.py's first stops), the new one (``taper``,
``seed_intensity``), voxels outside the previous mask / its area, area / the seed's, the median.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDPLIB_SHARED_DATA") or ROOT.parent / "shared" / "data") / "pyradiomics"
EXTRA = ROOT / "build" / "pyradiomics-extra"
CASES = {"brain1": SHARED, "lung2": SHARED, "breast1": SHARED, "brain2": EXTRA, "lung1": EXTRA}
HELD_OUT = {"brain2", "lung1"}


def label_box(truth2d: np.ndarray, pad: float = 0.05):
    from medplib_runtime.schemas import Box

    r, c = np.nonzero(truth2d)
    h, w = truth2d.shape
    pr, pc = pad * (np.ptp(r) + 1), pad * (np.ptp(c) + 1)
    return Box(max(0.0, r.min() - pr), max(0.0, c.min() - pc), min(h - 1.0, r.max() + pr), min(w - 1.0, c.max() + pc))


def seed_indices(truth: np.ndarray) -> list[int]:
    """The quartiles and the middle of the label's slice range; the quartiles round outwards, so a
    structure on three slices gets all three (rounding to nearest gave brain2 two)."""
    zs = np.nonzero(truth.any((1, 2)))[0]
    lo, hi = int(zs.min()), int(zs.max())
    span = hi - lo
    return sorted({lo + int(np.floor(0.25 * span)), lo + int(np.floor(0.5 * span + 0.5)),
                   lo + int(np.ceil(0.75 * span))})


def score(got: np.ndarray, truth: np.ndarray) -> dict:
    zs, zt = np.nonzero(got.any((1, 2)))[0], np.nonzero(truth.any((1, 2)))[0]
    return {"dice": 2 * (got & truth).sum() / (got.sum() + truth.sum()),
            "error": (got.sum() - truth.sum()) / truth.sum(),
            "found": f"{zs.min()}–{zs.max()}" if zs.size else "none", "label": f"{zt.min()}–{zt.max()}"}


def run_box(rt, image: np.ndarray, truth: np.ndarray) -> dict:
    from medplib_runtime.schemas import Prompt, SegmentRequest, SliceRef
    from medplib_runtime.volume.propagation import propagate

    z = int(np.argmax(truth.sum((1, 2))))
    key = rt.set_image(image)
    seg = rt.segment(SegmentRequest(key, SliceRef(0, z), Prompt(box=label_box(truth[z]))))
    encoder = seg.timings_ms.get("embed_wait", float("nan")) / 1e3
    res = propagate(rt, image, axis=0, seed_index=z, seed_mask=seg.mask)
    got = res.mask.astype(bool)
    return {**score(got, truth), "protocol": f"box on {z}", "unsure": list(res.unsure), "seconds": res.seconds,
            "ratio": res.seconds / (encoder * max(1, len(res.steps))), "stopped": res.stopped,
            "detail": [(s.index, s.voxels, int(truth[s.index].sum()), round(s.score, 2), round(s.confidence, 2),
                        s.reason or "kept") for s in res.steps]}


def run_seeds(rt, image: np.ndarray, truth: np.ndarray) -> dict:
    from medplib_runtime.volume.seeded import propagate_from_seeds

    picks = seed_indices(truth)
    seeds = np.zeros(truth.shape, np.uint8)
    seeds[picks] = truth[picks]
    t = time.perf_counter()
    rt.set_image(image)
    res = propagate_from_seeds(rt, image, seeds, label=1, axis=0)
    got = res.mask.astype(bool)
    embedded = max(1, sum(1 for s in res.source.values() if s != "seed") + 1)
    return {**score(got, truth), "protocol": f"seeds {','.join(map(str, picks))}", "unsure": list(res.unsure),
            "seconds": time.perf_counter() - t, "ratio": float("nan"), "stopped": res.stopped, "embedded": embedded,
            "detail": [(i, int(got[i].sum()), int(truth[i].sum()), res.source[i], round(res.confidence[i], 2),
                        round(2 * (got[i] & truth[i]).sum() / max(1, got[i].sum() + truth[i].sum()), 2))
                       for i in res.slices]}


def run_past(rt, image: np.ndarray, truth: np.ndarray) -> list[str]:
    """Rows of the walks past the outer seeds, every stop recorded but none obeyed (see the docstring)."""
    from medplib_runtime.schemas import SliceRef
    from medplib_runtime.volume.propagation import (BeyondSeeds, PropagationSettings, _best_candidate, _judge,
                                                    _past_the_seeds)

    s, key = PropagationSettings(), rt.set_image(image)
    zs = np.nonzero(truth.any((1, 2)))[0]
    rows = []
    for name, picks in (("quartiles", seed_indices(truth)), ("ends", [zs.min(), (zs.min() + zs.max()) // 2, zs.max()])):
        values = np.concatenate([image[i][truth[i]] for i in picks]).astype(np.float64)
        look, reference = BeyondSeeds.of(values, s), (values.mean(), values.std() + 1e-6)
        for start, step in ((max(picks), 1), (min(picks), -1)):
            seed = previous = truth[start]
            index, fired = start + step, set()
            while 0 <= index < len(image) and len(fired) < 2 and previous.any():
                limit = min(s.max_growth * previous.sum(), s.max_seed_growth * seed.sum())
                mask, score = _best_candidate(rt, key, SliceRef(0, index), previous, s, limit)
                old = _judge(rt, key, SliceRef(0, index), step, mask, score, previous, seed, image[index], reference, s)
                new = _past_the_seeds(mask, previous, seed, image[index], look, s) if mask.any() else "empty"
                fired |= {"old"} if old.reason else set()
                fired |= {"new"} if new else set()
                dice = 2 * (mask & truth[index]).sum() / max(1, mask.sum() + truth[index].sum())
                outside = (mask & ~previous).sum() / max(1, previous.sum())
                median = float(np.median(image[index][mask])) if mask.any() else float("nan")
                rows.append(f"| {name} {'up' if step > 0 else 'down'} from {start} | {index} | {int(mask.sum())} "
                            f"({int(truth[index].sum())}) | {dice:.2f} | {old.reason or 'kept'} | {new or 'kept'} "
                            f"| {outside:.2f} | {mask.sum() / seed.sum():.2f} "
                            f"| {median:.0f} ({look.low:.0f}–{look.high:.0f}) |")
                previous, index = mask, index + step
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--protocols", default="box,seeds",
                        help="box, seeds, and past: the walks past the outer seeds that set its stops (tuning cases)")
    parser.add_argument("--detail", action="store_true", help="per-slice rows as well")
    args = parser.parse_args()

    import torch

    from medplib_runtime.imaging.io import read_volume
    from medplib_runtime.local import LocalRuntime

    rt = LocalRuntime(cache_mb=2048)
    print(f"# volume_eval — torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs\n")
    for case in args.cases.split(","):
        folder = CASES[case]
        if not (folder / f"{case}_image.nrrd").exists():
            print(f"## {case}: missing ({folder}); run scripts/fetch_pyradiomics_cases.py\n")
            continue
        image = read_volume(folder / f"{case}_image.nrrd").array
        truth = read_volume(folder / f"{case}_label.nrrd").array == 1
        print(f"## {case}{' (held out)' if case in HELD_OUT else ''}: {image.shape}, label {int(truth.sum())} voxels\n")
        details, protocols = [], [p for p in args.protocols.split(",") if p != "past"]
        if "past" in args.protocols.split(","):
            if case in HELD_OUT:
                print(f"(past: tuning cases only, {case} is held out)\n")
            else:
                print("| walk | slice | voxels (label) | 2D Dice | old stops | new stops | outside / previous "
                      "| area / seed | median (seeds' 10–90 %) |\n|---|---|---|---|---|---|---|---|---|")
                print("\n".join(run_past(rt, image, truth)) + "\n", flush=True)
        if protocols:
            print("| protocol | 3D Dice | volume error | slices found (label) | unsure | seconds | s / encoder-s "
                  "| stopped |\n|---|---|---|---|---|---|---|---|")
        for protocol in protocols:
            r = (run_box if protocol == "box" else run_seeds)(rt, image, truth)
            unsure = ",".join(map(str, r["unsure"])) or "–"
            ratio = "–" if np.isnan(r["ratio"]) else f"{r['ratio']:.2f}×"
            stops = ", ".join(f"{k}: {v}" for k, v in r["stopped"].items())
            print(f"| {r['protocol']} | {r['dice']:.3f} | {r['error']:+.1%} | {r['found']} ({r['label']}) | {unsure} "
                  f"| {r['seconds']:.1f} | {ratio} | {stops} |", flush=True)
            details.append((r["protocol"], r["detail"]))
        if args.detail:
            for name, rows in details:
                print(f"\n{name}: " + "; ".join(" ".join(map(str, row)) for row in rows))
        print()
        rt.forget(rt.set_image(image))
    rt.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
