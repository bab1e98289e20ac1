"""Time one <SEG> → mask on brain1 slice 12: MedPLIB's token path vs the lite box path (median of 7).

    python research/probes/time_seg_mask.py
"""
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from medplib_runtime.local import LocalRuntime
from medplib_runtime.imaging.io import read_volume
rt = LocalRuntime(); seg, asker = rt.segmenter(), rt.asker()
vol = np.asarray(read_volume('sample_data/brain1_image.nrrd').array, np.float32)[12]
img = (vol - vol.min()) / (vol.max() - vol.min())
emb = seg.embed(img)
stream = (asker.seg_id,); hidden = torch.randn(1, asker.model.cfg.llm_hidden)
def run(box):
    asker.model.ground_head_trained = box
    ts = []
    for _ in range(7):
        t = time.perf_counter(); asker.masks_for(stream, hidden, emb, 0.1); ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3
tok, box = run(False), run(True)
print(f"| <SEG> → mask, token path (MedPLIB) | {tok:.0f} ms |\n| <SEG> → mask, box path (lite) | {box:.0f} ms |\n| ratio box/token | {box/tok:.2f} × |")
