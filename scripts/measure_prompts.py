"""Dice of each prompt kind on every lesion slice (≥ 20 voxels) of the pyradiomics cases.

Run: .venv/bin/python scripts/measure_prompts.py  (needs ../shared/data beside the repo)
Prints mean/median Dice per prompt kind and the point path's decode time. docs/benchmarks.md's
"prompt quality" table comes from here.
"""

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from medplib_runtime.imaging.transforms import rc_to_model_xy
from medplib_runtime.imaging.windowing import apply_window, window_for
from medplib_runtime.modeling.litemedsam import build_litemedsam
from medplib_runtime.schemas import Box, Point, Prompt
from medplib_runtime.predictors.segmenter import SamSegmenter

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "pyradiomics"


def dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def main():
    seg = SamSegmenter(build_litemedsam())
    res = {k: [] for k in ("box@0.5", "box@0.3", "box@0.1", "naive point@0.5", "our points@0.1", "scribble@0.1")}
    point_ms = []
    for case in ("brain1", "lung2", "breast1"):
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / f"{case}_image.nrrd")))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / f"{case}_label.nrrd"))) > 0
        window = window_for(img)
        for k in np.nonzero(lab.sum((1, 2)) >= 20)[0]:
            emb, truth = seg.embed(apply_window(img[k], window)), lab[k]
            r, c = np.nonzero(truth)
            h, w = truth.shape
            box = Box(max(r.min() - 3, 0), max(c.min() - 3, 0), min(r.max() + 3, h - 1), min(c.max() + 3, w - 1))
            for th in (0.5, 0.3, 0.1):
                res[f"box@{th}"].append(dice(seg.segment(emb, Prompt(box=box), threshold=th).mask, truth))
            dist = ndimage.distance_transform_edt(truth)
            pr, pc = np.unravel_index(dist.argmax(), dist.shape)
            xy = torch.tensor(rc_to_model_xy(np.array([pr]), np.array([pc]), emb.info), dtype=torch.float32)[None]
            with torch.inference_mode():  # the bare point, as SAM would take it
                sparse, dense = seg.model.prompt_encoder(points=(xy, torch.ones(1, 1)))
                logits, _ = seg._decode(emb, sparse, dense)
            res["naive point@0.5"].append(dice(seg.to_mask(logits, emb, 0.5), truth))
            t = time.perf_counter()
            mask = seg.segment(emb, Prompt(points=(Point(pr, pc),)), threshold=0.1).mask
            point_ms.append((time.perf_counter() - t) * 1e3)
            res["our points@0.1"].append(dice(mask, truth))
            core = ndimage.binary_erosion(truth, iterations=2)
            core = core if core.sum() > 5 else truth
            res["scribble@0.1"].append(dice(seg.segment(emb, Prompt(mask=core), threshold=0.1).mask, truth))
    print(f"{'prompt':<18}{'mean Dice':>10}{'median':>8}{'n':>4}")
    for name, values in res.items():
        print(f"{name:<18}{np.mean(values):>10.3f}{np.median(values):>8.3f}{len(values):>4}")
    print(f"point path decode: median {np.median(point_ms):.0f} ms")


if __name__ == "__main__":
    main()
