"""Image alignment (ours, ``TrainConfig.align_image``): the vision projector's output layer moved in closed
form so that every image token carries its slice's modality and body region as the LLM's own words.

Why (measured, docs/training.md "Tried: image tokens that say the slice's modality and body region"): the
projected image tokens were 98 % a part common to every image, and every glue answered the modality at
chance, on its training slices too ("MRI" to lung2's chest CT), although a linear probe on the projector's
input names the held-out phantoms' modality 18 of 18. As ``align_region`` does for a region's token, the
fit hands the LLM a direction it already reads: each token gets ``scale × (t − t̄)`` added, ``t`` the mean
input embedding of the slice's words (" CT"/" MRI", " chest", ...) and ``t̄`` its mean over the slices.
The offset is a ridge regression from the output layer's input (``gelu(fc1(x))``, one row per token)
added to ``fc2``: what the projector did before stays (the residual). Measured on the lite preset
(glue-vqa's 979 training records, 68 slices, their pixel embeddings cached as the trainer has them):
0.5 s, median of 3.

Tried in the one-hour recipe and not adopted: right on the training slices, wrong on held-out volumes (seven
training volumes teach which volume a slice is from); the option is off unless a config sets it.

The words come from the records (``modality``, and ``body_region`` where the builder wrote it); a slice
with neither (a 2D ``other`` image from a file that does not say) is left out of the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.templates import modality_word
from ..errors import InputError
from .examples import Example, TrainSample, pixel_key
from .region_alignment import name_embedding
from .ridge import ridge_fit

RIDGE = 10.0  # on ~4k token rows of 576 features (the lite preset); the offsets' fit is not sensitive to it


@dataclass(frozen=True)
class ImageAlignmentReport:
    slices: int  # distinct slices fitted
    word_sets: tuple[str, ...]  # e.g. "CT chest", "MRI brain"
    nearest_words_accuracy: float  # per slice: its tokens' mean offset is nearest (cosine) its own words' offset


def slice_words(sample: TrainSample) -> tuple[str, ...]:
    """The words a slice's tokens are aligned with: its modality's answer word, then its body region."""
    words = [] if sample.modality.lower() == "other" else [modality_word(sample.modality)]
    return tuple(words + ([sample.body_region] if sample.body_region else []))


@torch.no_grad()
def align_vision_projector(module, examples: list[Example], embed, *, scale: float,
                           ridge: float = RIDGE) -> ImageAlignmentReport:
    """Add to ``module.model.vision_projector.fc2`` the ridge fit of ``scale × (t − t̄)`` (see above) on
    every distinct slice of ``examples``. InputError when fewer than two kinds of slice (word sets) are given."""
    model = module.model
    proj = model.vision_projector
    seen: set[tuple] = set()
    rows, sets = [], []
    for ex in examples:
        words = slice_words(ex.sample)
        key = pixel_key(ex.sample.image)
        if not words or key in seen:
            continue
        seen.add(key)
        x = module.vision_features(ex, embed(ex.sample))  # N×C
        rows.append(F.gelu(proj.fc1(proj.standardise(x))).float().cpu())
        sets.append(" ".join(words))
    kinds = tuple(sorted(set(sets)))
    if len(kinds) < 2:
        raise InputError(f"align_image needs slices of at least 2 kinds (modality / body region in the records); "
                         f"found {len(rows)} slices, kinds {list(kinds)}")
    table = torch.stack([torch.stack([name_embedding(model, w, option="align_image") for w in k.split(" ")]).mean(0)
                         for k in kinds])
    per_slice = table[[kinds.index(s) for s in sets]]  # S×D
    offsets = scale * (per_slice - per_slice.mean(0))  # S×D
    h = torch.cat(rows)  # (S·N)×H
    y = torch.cat([o.expand(r.shape[0], -1) for o, r in zip(offsets, rows)])
    delta, delta_bias = ridge_fit(h, y, ridge)  # H×D, D (y has mean 0: the bias only re-centres)
    proj.fc2.weight.add_(delta.T.to(proj.fc2.weight))
    proj.fc2.bias.add_(delta_bias.to(proj.fc2.bias))
    got = torch.stack([r @ delta + delta_bias for r in rows]).mean(1)  # S×D: each slice's mean added offset
    targets = table - per_slice.mean(0)
    nearest = (F.normalize(got, dim=1) @ F.normalize(targets, dim=1).T).argmax(1)
    hits = sum(kinds[int(i)] == s for i, s in zip(nearest, sets))
    return ImageAlignmentReport(len(rows), kinds, hits / len(rows))


__all__ = ["ImageAlignmentReport", "align_vision_projector", "slice_words", "RIDGE"]
