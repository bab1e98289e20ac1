"""Does the vision-language expert know a yes/no answer that it does not say?

``python research/probes/yesno_probe.py GLUE [--data build/glue-pairs] [--held-out val] [--threads 2]``

For every closed record answered "yes" or "no", runs the question through the LLM with every
token on the vision-language expert (what a routed VL question gets), teacher-forced up to the
answer, and keeps the hidden states at the last prompt position (the one whose output is the
first answer token) of a few layers. Then:

* a linear probe (logistic regression, features standardised on train, L2, class-balanced,
  full-batch L-BFGS) fitted on train.json's records, scored on the held-out split: whether the
  answer is in the states at all;
* the model's own readout: the LM head's " yes" − " no" logit margin, as ROC AUC (does it rank
  the answers right?) and how often it is > 0 (what greedy decoding says).

A probe far above the model's readout says the information reaches the answer position and only
the readout lags: a training problem, not an architecture one (docs/closed_answers.md).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medplib_runtime.data.mecovqa import read_dataset  # noqa: E402
from medplib_runtime.imaging.transforms import mask_to_model  # noqa: E402
from medplib_runtime.modeling.medplib import build_medplib  # noqa: E402
from medplib_runtime.modeling.moe import force_expert  # noqa: E402
from medplib_runtime.presets import get_preset  # noqa: E402
from medplib_runtime.predictors.segmenter import SamSegmenter  # noqa: E402
from medplib_runtime.training.data_source import samples_from_json  # noqa: E402
from medplib_runtime.training.examples import IGNORE, encode  # noqa: E402
from medplib_runtime.glue.recipe import VL_EXPERT  # noqa: E402

LAYERS = (10, 15, 20, 25, 30)


@torch.inference_mode()
def answer_states(model, segmenter, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """→ (N×(layers·D) states, N truths (yes = True), N yes−no margins, N topics) of the yes/no records."""
    records = read_dataset(path).records
    tok = model.tokenizer
    yes, no = (tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    grid = model.sam.prompt_encoder.image_embedding_size[0]
    embeddings: dict[bytes, object] = {}
    feats, truths, margins, topics = [], [], [], []
    for rec, sample in zip(records, samples_from_json(path)):
        answer = rec.turns[0].plain_answer.strip().lower()
        if rec.answer_type != "closed" or answer not in ("yes", "no") or len(rec.turns) != 1:
            continue
        key = sample.image.tobytes()
        if key not in embeddings:
            embeddings[key] = segmenter.embed(sample.image)
        emb = embeddings[key]
        (ex,) = encode(sample, tok, system=model.cfg.system_prompt, n_image_tokens=model.n_image_tokens,
                       seg_id=model.token_ids["<SEG>"], max_tokens=2048)
        pixel = emb.image_embedding
        region = None
        if ex.region:
            region = model.region_token(pixel, mask_to_model(sample.region, emb.info, grid * 4)[0, 0])
        embeds = model.embed_inputs(ex.input_ids, image_tokens=model.image_tokens(pixel_embedding=pixel),
                                    region_tokens=region)
        pos = int((ex.labels[0] != IGNORE).nonzero()[0, 0]) - 1  # its output is the first answer token
        out = model.llm.model(inputs_embeds=embeds[:, :pos + 1], output_hidden_states=True)
        feats.append(torch.cat([out.hidden_states[k][0, pos] for k in LAYERS]).float().numpy())
        logits = model.llm.lm_head(out.last_hidden_state[0, pos])
        margins.append(float(logits[yes] - logits[no]))
        truths.append(answer == "yes")
        topics.append(str(rec.extra.get("topic")))
    return np.array(feats), np.array(truths), np.array(margins), topics


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced L2 logistic regression (L-BFGS) → (weights, bias) on standardised features."""
    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.float32)
    pos = yt.mean().clamp(1e-3, 1 - 1e-3)
    sample_w = torch.where(yt > 0, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, weight=sample_w)
                + l2 * (w ** 2).sum() / len(yt))
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (ties: half)."""
    pos, neg = score[y], score[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("glue", help="the glue file to probe (its vision-language expert)")
    ap.add_argument("--data", default="build/glue-pairs")
    ap.add_argument("--held-out", default="val")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = build_medplib(get_preset("medplib-lite"), pretrained=True, glue=args.glue)
    model.eval()
    force_expert(model.llm, VL_EXPERT)
    segmenter = SamSegmenter(model.sam)
    xtr, ytr, mtr, ttr = answer_states(model, segmenter, Path(args.data) / "train.json")
    xva, yva, mva, tva = answer_states(model, segmenter, Path(args.data) / f"{args.held_out}.json")
    print(f"{len(ytr)} train / {len(yva)} {args.held_out} yes-no questions ('yes' {ytr.mean():.2f} / {yva.mean():.2f}),"
          f" states in {time.perf_counter() - t0:.0f} s")
    d = xtr.shape[1] // len(LAYERS)
    print(f"{'probe on layer':<16}{'l2':>6}{'train':>8}{args.held_out:>8}{'balanced':>10}")
    for j, layer in enumerate(LAYERS):
        part = slice(j * d, (j + 1) * d)
        mu, sd = xtr[:, part].mean(0), xtr[:, part].std(0) + 1e-6
        for l2 in (10.0, 100.0):
            w, b = fit_probe((xtr[:, part] - mu) / sd, ytr, l2)
            said = lambda x: ((torch.tensor((x[:, part] - mu) / sd) @ w + b) > 0).numpy()  # noqa: E731
            ptr, pva = said(xtr), said(xva)
            bal = np.mean([np.mean(pva[yva == v] == v) for v in (True, False) if (yva == v).any()])
            print(f"{layer:<16}{l2:>6g}{np.mean(ptr == ytr):>8.3f}{np.mean(pva == yva):>8.3f}{bal:>10.3f}")
    print(f"{'LM readout':<16}{'n':>6}{'AUC':>8}{'says yes':>10}")
    for split, m, y, topics in (("train", mtr, ytr, ttr), (args.held_out, mva, yva, tva)):
        print(f"{split:<16}{len(y):>6}{auc(y, m):>8.3f}{np.mean(m > 0):>10.3f}")
        for topic, n in sorted(collections.Counter(topics).items()):
            sel = np.array([t == topic for t in topics])
            print(f"  {topic:<14}{n:>6}{auc(y[sel], m[sel]):>8.3f}{np.mean(m[sel] > 0):>10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
