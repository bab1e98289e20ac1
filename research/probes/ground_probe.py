"""How a glue's <SEG> becomes a mask, variant by variant, on the grounding (G) records of a dataset.

    python research/probes/ground_probe.py build/glue-data/val.json [--glue FILE] [--limit N]

Each G question is answered once; for every <SEG> the answer holds, the ground head's heat map is
turned into masks several ways and each is scored (Dice against the record's mask, MedPLIB's
per-sample metric; a missing <SEG> scores 0 in every variant). Variants: the shipped rule (box
around the heat map's strongest blob → LiteMedSAM), that box grown by 4 / 8 model pixels, the heat
map itself (upsampled, p > 0.5), and the oracle: the reference mask's own box → LiteMedSAM (what a
perfect box would give). Prints a table: variant, n, mDice, median Dice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medplib_runtime.data.mecovqa import load_masks, read_dataset, read_png  # noqa: E402
from medplib_runtime.evaluation.metrics import dice_from_iou, mask_iou  # noqa: E402
from medplib_runtime.imaging.transforms import logits_to_original, mask_to_model  # noqa: E402
from medplib_runtime.local import LocalRuntime  # noqa: E402
from medplib_runtime.modeling.ground_head import box_from_heat  # noqa: E402
from medplib_runtime.training.data_source import unit_image  # noqa: E402
from _seg_states import seg_states  # noqa: E402

VARIANTS = ("box (shipped)", "box +4 px", "box +8 px", "heat map p>0.5", "oracle box")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--glue", default=None)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--samples", default=None, help="write per-mask Dice of every variant here (JSONL)")
    args = ap.parse_args()
    runtime = LocalRuntime(glue=args.glue, device=args.device)
    segmenter, asker = runtime.segmenter(), runtime.asker()
    threshold = runtime.config.mask_threshold
    ds = read_dataset(args.data)
    records = [r for r in ds.records if r.question_type == "G"][: args.limit or None]
    if not records:
        print(f"ground_probe: {args.data} has no grounding (G) records", file=sys.stderr)
        return 2
    dice: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rows = []
    for rec in records:
        png = read_png(ds.root / rec.image, record=rec.id)
        _, truths = load_masks(rec, ds.root, png.shape)
        image = unit_image(png)
        emb = segmenter.embed(image)
        heats = _heats(asker, emb, rec.turns[0].plain_question, image)
        for i, truth in enumerate(truths):
            masks = _variants(segmenter, emb, heats[i], truth, threshold) if i < len(heats) else {}
            row = {"id": rec.id, "mask": i, "seg": i < len(heats)}
            for v in VARIANTS:
                pred = masks.get(v)
                if v == "oracle box":
                    pred = _variants(segmenter, emb, None, truth, threshold)[v]
                dice[v].append(dice_from_iou(mask_iou(pred, truth)) if pred is not None else 0.0)
                row[v] = dice[v][-1]
            if masks:  # how far the box's mask and the heat map agree (a candidate fallback rule)
                row["box_vs_heat_iou"] = mask_iou(masks["box (shipped)"], masks["heat map p>0.5"])
                row["heat_peak"] = float(torch.sigmoid(heats[i].float()).max())
            rows.append(row)
    if args.samples:
        Path(args.samples).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(records)} G questions, {len(dice[VARIANTS[0]])} reference masks ({args.data})")
    print("| variant | n | mDice | median Dice |\n|---|---|---|---|")
    for v in VARIANTS:
        d = np.array(dice[v])
        print(f"| {v} | {len(d)} | {d.mean():.3f} | {np.median(d):.3f} |")
    return 0


def _heats(asker, emb, question: str, image) -> list[torch.Tensor]:
    """The heat map of each <SEG> of the greedy answer, in order."""
    with seg_states(asker) as states:
        asker.ask(emb, question, image=image, max_new_tokens=32)
    if not states:
        return []
    with torch.inference_mode():
        heat = asker.model.ground_head(asker.model.seg_tokens(torch.stack(states)), emb.image_embedding)
    return [h[0] for h in heat]


def _variants(segmenter, emb, heat, truth: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    size, (h, w) = segmenter.image_size, emb.info.resized
    out = {}

    def decode(box):
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]).astype(np.float32)
        logits, _ = segmenter.decode_boxes(emb, box[None])
        return segmenter.to_mask(logits, emb, threshold).astype(bool)

    if heat is not None:
        box = box_from_heat(heat, model_size=size, valid_hw=(h, w))
        out["box (shipped)"] = decode(box)
        out["box +4 px"] = decode(box + np.array([-4, -4, 4, 4]))
        out["box +8 px"] = decode(box + np.array([-8, -8, 8, 8]))
        out["heat map p>0.5"] = (torch.sigmoid(logits_to_original(heat[None, None].float(), emb.info))[0, 0]
                                 > 0.5).cpu().numpy()
    rows, cols = np.nonzero(mask_to_model(truth, emb.info, size)[0, 0].numpy() > 0.5)
    if len(rows):
        out["oracle box"] = decode(np.array([cols.min(), rows.min(), cols.max(), rows.max()], np.float32))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
