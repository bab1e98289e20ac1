"""Does the glue keep *which* structure was asked for? Two measurements on a dataset's phantom-style
slices that hold two labelled structures (default: the test split's two-target grounding records).

    python research/probes/class_signal_probe.py build/glue-data/test.json [--glue FILE] [--limit 6]
        [--linear-probe build/glue-data/train.json]

1. ``<SEG>``: on each slice, "Segment the A." and "Segment the B." are answered; for the first
   ``<SEG>`` of each answer it prints the cosine of the two last-layer states, of the two ground-head
   queries (the seg projector's outputs), the query norm, the correlation of the two heat maps and
   their peaks. A query that carries the class gives two different heat maps.
2. Region tokens: for the first naming / choice / "is it" region questions, the region token (what
   the LLM reads between <region></region>): its norm, and the mean cosine between tokens of regions
   of the same structure and of different structures.
3. With ``--linear-probe TRAIN``: is the class in the ``<SEG>`` state at all? The teacher-forced
   last-layer ``<SEG>`` states of TRAIN's grounding records (grounding expert, no dropout) fit a
   linear classifier of the structure asked for (standardised by TRAIN's statistics); it prints
   its accuracy on TRAIN and on the dataset's grounding records of the classes TRAIN holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medplib_runtime.data.mecovqa import read_dataset, read_png  # noqa: E402
from medplib_runtime.imaging.transforms import mask_to_model  # noqa: E402
from medplib_runtime.local import LocalRuntime  # noqa: E402
from medplib_runtime.training.data_source import unit_image  # noqa: E402
from _seg_states import seg_states  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--glue", default=None)
    ap.add_argument("--limit", type=int, default=6, help="slices for part 1 (part 2 reads 16 regions)")
    ap.add_argument("--linear-probe", metavar="TRAIN", default=None,
                    help="part 3: fit a linear classifier of the asked structure on TRAIN's <SEG> states")
    args = ap.parse_args()
    runtime = LocalRuntime(glue=args.glue)
    segmenter, asker = runtime.segmenter(), runtime.asker()
    ds = read_dataset(args.data)
    pairs = [r for r in ds.records if r.question_type == "G" and len(r.extra.get("targets", [])) == 2]
    print(f"1. <SEG> for two structures on one slice ({args.data}, glue {args.glue or 'shipped'})")
    print("| slice | cos(states) | cos(queries) | |query| | heat-map corr | peaks (row, col) |\n|---|---|---|---|---|---|")
    for rec in pairs[: args.limit]:
        image = unit_image(read_png(ds.root / rec.image, record=rec.id))
        emb = segmenter.embed(image)
        states = [_seg_state(asker, emb, image, f"Segment the {name}.") for name in rec.extra["targets"]]
        if any(s is None for s in states):
            print(f"| {rec.id} | no <SEG> in an answer | | | | |")
            continue
        with torch.inference_mode():
            queries = asker.model.seg_tokens(torch.stack(states))
            heat = torch.sigmoid(asker.model.ground_head(queries, emb.image_embedding)[:, 0].float())
        peaks = [tuple(int(v) for v in np.unravel_index(int(h.argmax()), h.shape)) for h in heat]
        corr = float(np.corrcoef(heat[0].flatten().numpy(), heat[1].flatten().numpy())[0, 1])
        print(f"| {rec.id.split('--')[2]} z{rec.extra.get('slice')} | {_cos(*states):.4f} | "
              f"{_cos(queries[0], queries[1]):.4f} | {float(queries[0].norm()):.0f} | {corr:.3f} | {peaks} |")
    tokens, names = [], []
    for rec in ds.records:
        turn = rec.turns[0]
        if rec.question_type != "R" or rec.extra.get("topic") not in ("what", "choice", "is") \
                or not turn.region_paths or rec.extra.get("region_mode") == "background":
            continue
        image = unit_image(read_png(ds.root / rec.image, record=rec.id))
        emb = segmenter.embed(image)
        region = read_png(ds.root / turn.region_paths[0], record=rec.id) > 0
        with torch.inference_mode():
            model_mask = mask_to_model(region, emb.info, segmenter.image_size)[0, 0]
            tokens.append(asker.model.region_token(emb.image_embedding, model_mask)[0, 0].float())
        facts = rec.extra.get("facts", {})
        names.append(facts.get("name") or facts.get("truth"))
        if len(tokens) == 16:
            break
    if len(tokens) > 1:
        t = torch.stack(tokens)
        cos = F.cosine_similarity(t[:, None], t[None], dim=-1)
        same = [float(cos[i, j]) for i in range(len(t)) for j in range(i) if names[i] == names[j]]
        other = [float(cos[i, j]) for i in range(len(t)) for j in range(i) if names[i] != names[j]]
        norms = t.norm(dim=1)
        print(f"\n2. region tokens ({len(t)} regions: {sorted(set(names))}): norm {float(norms.min()):.2f}–"
              f"{float(norms.max()):.2f}; mean cosine, same structure {np.mean(same):.3f}, "
              f"different structures {np.mean(other):.3f}")
    if args.linear_probe:
        _linear_probe(asker.model, segmenter, args.linear_probe, args.data)
    return 0


def _teacher_forced_states(model, segmenter, path: str) -> tuple[torch.Tensor, list[str]]:
    """``N×D`` last-layer ``<SEG>`` states of every grounding answer in ``path`` and the structure each asks for."""
    from medplib_runtime.glue.routing import GROUND_EXPERT
    from medplib_runtime.modeling.moe import force_expert
    from medplib_runtime.training.data_source import samples_from_json
    from medplib_runtime.training.examples import encode
    from medplib_runtime.training.forward import LossWeights, TrainModule

    force_expert(model.llm, GROUND_EXPERT)  # where a grounding question is routed
    module = TrainModule(model, LossWeights(), region_mask_fn=None)
    records = [r for r in read_dataset(path).records if r.question_type == "G"]
    states, names = [], []
    for rec, sample in zip(records, samples_from_json(path, question_types=("G",))):
        emb = segmenter.embed(sample.image)
        for ex in encode(sample, model.tokenizer, system=model.cfg.system_prompt, n_image_tokens=model.n_image_tokens,
                         seg_id=model.token_ids["<SEG>"], max_tokens=512):
            with torch.inference_mode():
                found = module.seg_states(ex, emb).float()
            states.append(found)
            names += rec.extra["targets"][: len(found)]
    return torch.cat(states), names


def _linear_probe(model, segmenter, train_path: str, test_path: str) -> None:
    xa, ya = _teacher_forced_states(model, segmenter, train_path)
    xb, yb = _teacher_forced_states(model, segmenter, test_path)
    classes = sorted(set(ya))
    mean, std = xa.mean(0), xa.std(0).clamp_min(1e-3)
    w = torch.zeros(xa.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    target = torch.tensor([classes.index(n) for n in ya])
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(((xa - mean) / std) @ w + b, target) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = float(((((xa - mean) / std) @ w + b).argmax(1) == target).float().mean())
        keep = [i for i, n in enumerate(yb) if n in classes]
        pred = ((((xb[keep] - mean) / std) @ w + b).argmax(1)).tolist()
    right = sum(classes[p] == yb[i] for p, i in zip(pred, keep))
    print(f"\n3. linear probe of the <SEG> state ({len(classes)} classes: {classes}): {train_acc:.3f} on "
          f"{len(ya)} train states; {right}/{len(keep)} = {right / max(1, len(keep)):.3f} on {test_path}")


def _seg_state(asker, emb, image, question: str) -> torch.Tensor | None:
    """The last-layer state where the answer's first <SEG> is the input, or None without a <SEG>."""
    with seg_states(asker) as states:
        asker.ask(emb, question, image=image, max_new_tokens=16)
    return states[0] if states else None


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


if __name__ == "__main__":
    raise SystemExit(main())
