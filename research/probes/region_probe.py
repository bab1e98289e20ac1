"""Is a region's structure name readable from what the region encoder sees?

``python research/probes/region_probe.py [--data build/glue-data] [--held-out test]``

For every region question that asks what a region is (our builder's R ``what``/``choice``
records), pools the LiteMedSAM features inside the region exactly as the region encoder does
(``RegionEncoder.pooled``: the 256 numbers its Linear maps to the LLM's region token), fits a multinomial logistic regression on train.json's
records (features standardised on train, L2-regularised, full-batch L-BFGS) and prints, per
held-out case, how often the probe names the right structure and what it names most.

A probe that cannot name a case's structure says the region token cannot carry it either: no
amount of LLM training on this data will make the model name it (docs/training.md).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medplib_runtime.data.mecovqa import read_dataset  # noqa: E402
from medplib_runtime.imaging.transforms import mask_to_model  # noqa: E402
from medplib_runtime.modeling.medplib import build_medplib  # noqa: E402
from medplib_runtime.presets import get_preset  # noqa: E402
from medplib_runtime.predictors.segmenter import SamSegmenter  # noqa: E402
from medplib_runtime.training.data_source import samples_from_json  # noqa: E402


@torch.inference_mode()
def pooled_regions(model, segmenter, path: Path) -> tuple[torch.Tensor, list[str], list[str]]:
    """→ (N×C pooled features, structure names, case names) of the region-naming records."""
    records = read_dataset(path).records
    feats, names, cases = [], [], []
    for rec, sample in zip(records, samples_from_json(path)):
        if rec.question_type != "R" or rec.extra.get("topic") not in ("what", "choice"):
            continue
        emb = segmenter.embed(sample.image)
        mask = mask_to_model(sample.region, emb.info, 256)[0, 0]
        feats.append(model.region_encoder.pooled(emb.image_embedding, mask).flatten().float())
        names.append(rec.extra["facts"]["name"])
        cases.append(str(rec.extra.get("case")))
    return torch.stack(feats), names, cases


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.Tensor:
    w = torch.zeros(x.shape[1] + 1, n_classes, requires_grad=True)
    xb = torch.cat([x, torch.ones(len(x), 1)], 1)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="build/glue-data")
    ap.add_argument("--held-out", default="test", choices=("test", "val"))
    args = ap.parse_args()
    model = build_medplib(get_preset("medplib-lite"), pretrained=True, glue=False)  # the encoder's input only
    segmenter = SamSegmenter(model.sam)
    x_tr, n_tr, _ = pooled_regions(model, segmenter, Path(args.data) / "train.json")
    x_te, n_te, c_te = pooled_regions(model, segmenter, Path(args.data) / f"{args.held_out}.json")
    classes = sorted(set(n_tr))
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    y_tr = torch.tensor([classes.index(n) for n in n_tr])
    print(f"{len(n_tr)} training regions {dict(collections.Counter(n_tr))}; {len(n_te)} {args.held_out} regions")
    print("| L2 | train acc | case | n | names right | named most |\n|---|---|---|---|---|---|")
    for l2 in (1e-3, 1e-2, 1e-1):
        w = fit_probe((x_tr - mean) / std, y_tr, len(classes), l2)
        score = lambda x: ((torch.cat([(x - mean) / std, torch.ones(len(x), 1)], 1) @ w).argmax(1))  # noqa: E731
        train_acc = float((score(x_tr) == y_tr).float().mean())
        said = [classes[i] for i in score(x_te).tolist()]
        for case in sorted(set(c_te)):
            at = [i for i, c in enumerate(c_te) if c == case]
            right = sum(said[i] == n_te[i] for i in at) / len(at)
            most = collections.Counter(said[i] for i in at).most_common(1)[0][0]
            print(f"| {l2:g} | {train_acc:.2f} | {case} | {len(at)} | {right:.2f} | {most} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
