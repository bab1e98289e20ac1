"""Region alignment (ours, ``TrainConfig.align_region``): the region encoder's projection fitted in
closed form so that a region's token is the LLM's own input embedding of the structure it marks.

Why (measured, docs/region_alignment.md): the pooled LiteMedSAM features inside a region
name its structure (a linear probe: 0.82–1.00 on the held-out phantoms), yet a region encoder
trained through the frozen 30-layer LLM for 100 steps gave tokens the LLM did not read ("cyst" to
32 of 32 boxes on an unseen phantom). Regressing the projection onto the name's embedding (the
mean of its tokens' rows, with the leading space the answers use) hands the LLM a token it already
knows how to read — "the region is ≈ ' nodule'" — so the vision-language expert has only to learn
to copy or compare it. Ridge regression on the standardised pooled features, one solve: seconds.

The names come from the records: our builder writes the marked structure in each region record's
facts (``data_source.region_name``); a region on no structure is aligned with "background".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from .examples import Example
from .ridge import ridge_fit


@dataclass(frozen=True)
class AlignmentReport:
    regions: int  # region records fitted (a region asked about in two records counts twice, in the fit too)
    names: tuple[str, ...]
    nearest_name_accuracy: float  # on the fitted regions: the token's nearest name embedding (cosine) is its own


def name_embedding(model, name: str, *, option: str = "align_region") -> torch.Tensor:
    """``D``: the mean input-embedding row of ``" " + name``'s tokens (as the answers spell it); ``option``
    names the config key in the error for a word without tokens."""
    ids = model.tokenizer(" " + name, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"{option}: the word {name!r} has no tokens in the LLM's vocabulary")
    return model.llm.get_input_embeddings().weight.detach()[ids].float().mean(0)


@torch.no_grad()
def align_region_encoder(module, examples: list[Example], embed, *, ridge: float,
                         balanced: bool = False) -> AlignmentReport:
    """Fit ``module.model.region_encoder.proj`` (weight and bias) by ridge regression of the
    standardised pooled features of every named region in ``examples`` onto its name's embedding;
    ``balanced``: each name's regions weigh as much in all as another's (a structure the data names
    rarely, such as our two real lesions next to the phantoms, is not pulled towards the common ones).
    InputError when fewer than two regions or two names are given."""
    model = module.model
    encoder = model.region_encoder
    seen: set[int] = set()
    rows, names = [], []
    for ex in examples:
        name = ex.sample.region_name
        if not ex.region or name is None or id(ex.sample) in seen:
            continue
        seen.add(id(ex.sample))
        rows.append(encoder.standardise(module.region_features(ex, embed(ex.sample))).float().cpu())
        names.append(name)
    classes = tuple(sorted(set(names)))
    if len(rows) < 2 or len(classes) < 2:
        raise InputError(f"align_region needs region records that name at least 2 structures (our builder writes the "
                         f"name in each record's facts); found {len(rows)} named regions, names {list(classes)}")
    x = torch.cat(rows)  # N×C
    table = torch.stack([name_embedding(model, n) for n in classes])  # K×D
    y = table[[classes.index(n) for n in names]]  # N×D
    counts = {n: names.count(n) for n in classes}
    weights = torch.tensor([1.0 / counts[n] for n in names]) if balanced else None
    weight, bias = ridge_fit(x, y, ridge, weights)  # C×D, D
    encoder.proj.weight.copy_(weight.T.to(encoder.proj.weight))
    encoder.proj.bias.copy_(bias.to(encoder.proj.bias))
    tokens = x @ weight + bias
    nearest = (F.normalize(tokens, dim=1) @ F.normalize(table, dim=1).T).argmax(1)
    hits = sum(classes[int(i)] == n for i, n in zip(nearest, names))
    return AlignmentReport(len(rows), classes, hits / len(rows))


__all__ = ["AlignmentReport", "align_region_encoder", "name_embedding"]
