"""``medplib bench-propagate``: what 3D propagation costs and how well it follows real lesions.

Speed: lung2 walked from slice 0 through 60 slices with the stop rules off (the same
candidates and consistency check as always), against the encoder time of those slices, timed
just before each walk (median per slice × slices; the ratio's median over walks). Quality: on
every case of the data folder, a box around the label on its middle slice → segment →
propagate → 3D Dice and volume error against the label.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from .table import Row, print_table

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pyradiomics"
def _seed(runtime, key, labels: np.ndarray):
    from ..schemas import Box, Prompt, SegmentRequest, SliceRef

    zs = np.nonzero(labels.any((1, 2)))[0]
    mid = int((zs.min() + zs.max()) // 2)
    r, c = np.nonzero(labels[mid])
    h, w = labels.shape[1:]
    box = Box(max(0, r.min() - 3), max(0, c.min() - 3), min(h - 1, r.max() + 3), min(w - 1, c.max() + 3))
    return mid, runtime.segment(SegmentRequest(key, SliceRef(0, mid), Prompt(box=box))).mask


def run(args) -> int:
    import torch

    from ..imaging.io import read_volume
    from ..imaging.windowing import apply_window
    from ..local import LocalRuntime
    from ..schemas import Box, Prompt, SegmentRequest, SliceRef
    from ..volume.propagation import PropagationSettings, propagate

    folder = Path(args.data) if args.data else SHARED
    cases = sorted(p.name[:-len("_image.nrrd")] for p in folder.glob("*_image.nrrd"))
    runtime = LocalRuntime(cache_mb=1024)
    print(f"# medplib bench-propagate — {torch.get_num_threads()} torch threads, cases from {folder}")
    rows: list[Row] = []
    for case in cases:
        image = read_volume(folder / f"{case}_image.nrrd")
        truth = read_volume(folder / f"{case}_label.nrrd").array == 1
        key = runtime.set_image(image.array)
        mid, seed = _seed(runtime, key, truth)
        result = propagate(runtime, image.array, axis=0, seed_index=mid, seed_mask=seed)
        got = result.mask.astype(bool)
        dice = 2 * (got & truth).sum() / (got.sum() + truth.sum())
        error = (got.sum() - truth.sum()) / truth.sum()
        rows.append(Row(f"{case}: 3D Dice from a box on slice {mid}", "", float(dice), float("nan"), 1,
                        f"volume error {error:+.1%}, slices {result.slices[0]}–{result.slices[-1]} "
                        f"(label {int(np.nonzero(truth.any((1, 2)))[0].min())}–"
                        f"{int(np.nonzero(truth.any((1, 2)))[0].max())}), stops {result.stopped}"))

    if "lung2" in cases:
        image = read_volume(folder / "lung2_image.nrrd")
        truth = read_volume(folder / "lung2_label.nrrd").array == 1
        segmenter = runtime.segmenter()
        window = runtime.images.get(runtime.set_image(image.array)).window
        n = min(60, image.array.shape[0] - 1)
        enc, walks, ratios = [], [], []
        for i in range(args.repeats):
            # encoder time taken right before each walk, so both see the same machine load (a shared
            # CPU made a separate, earlier encoder measurement meaningless)
            these = []
            for z in (1 + 3 * i, 2 + 3 * i, 3 + 3 * i):
                t = time.perf_counter()
                segmenter.embed(apply_window(image.array[z], window))
                these.append(time.perf_counter() - t)
            enc += these
            volume = image.array.copy()
            volume[0, 0, 0] += i + 1  # a new image key: nothing cached from the previous walk
            key = runtime.set_image(volume)
            seed = runtime.segment(SegmentRequest(key, SliceRef(0, 0), Prompt(box=Box(200, 200, 300, 300)))).mask
            if not seed.any():
                seed = np.zeros(seed.shape, bool)
                seed[230:270, 230:270] = True
            t = time.perf_counter()
            res = propagate(runtime, volume, axis=0, seed_index=0, seed_mask=seed,
                            settings=PropagationSettings.unguarded(max_slices=n))
            walks.append(time.perf_counter() - t)
            ratios.append(walks[-1] / (statistics.median(these) * len(res.steps)))
            runtime.forget(key)
        walk = statistics.median(walks)
        rows.append(Row("encoder, one slice (512² CT)", "s", statistics.median(enc), float(np.percentile(enc, 90)),
                        len(enc)))
        rows.append(Row(f"propagation through {len(res.steps)} slices", "s", walk, max(walks), len(walks),
                        f"{walk / len(res.steps):.2f} s/slice"))
        rows.append(Row("propagation / summed encoder time", "×", statistics.median(ratios), max(ratios),
                        len(ratios), "per walk, encoder timed just before it; target ≤ 1.15"))
    print_table(rows)
    runtime.close()
    return 0
