"""Image alignment (ours, ``TrainConfig.align_image``): the vision projector's output layer moved in closed
form so that every image token carries its slice's modality and body region as the LLM's own words.

Why (measured, docs/training.md "Image tokens that say what the slice is"): the projected image tokens were
98 % a part common to every image, and every glue answered the modality at chance, on its training slices
too ("MRI" to lung2's chest CT), although a linear probe on the projector's input names the held-out
phantoms' modality 18 of 18. As ``align_region`` does for a region's token, the fit hands the LLM a
direction it already reads: each token gets ``scale × (t − t̄)`` added, ``t`` the mean input embedding of the
slice's words (" CT"/" MRI", " chest", ...) and ``t̄`` its mean over the slices. The offset is a ridge
regression from the output layer's input (``gelu(fc1(x))``, one row per token) added to ``fc2``: what the
projector did before stays (the residual), and one solve takes a second.

The words come from the records (``modality``, and ``body_region`` where the builder wrote it); a slice
with neither (a 2D ``other`` image from a file that does not say) is left out of the fit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.templates import modality_word
from ..errors import InputError
from .examples import Example, TrainSample
from .region_alignment import name_embedding

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
    seen: set[bytes] = set()
    rows, sets = [], []
    for ex in examples:
        words = slice_words(ex.sample)
        key = hashlib.blake2b(ex.sample.image.tobytes(), digest_size=16).digest()
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
    table = torch.stack([torch.stack([name_embedding(model, w) for w in k.split(" ")]).mean(0) for k in kinds])
    per_slice = table[[kinds.index(s) for s in sets]]  # S×D
    offsets = scale * (per_slice - per_slice.mean(0))  # S×D
    h = torch.cat(rows)  # (S·N)×H
    y = torch.cat([o.expand(r.shape[0], -1) for o, r in zip(offsets, rows)])
    h_mean = h.mean(0)
    hc = h - h_mean
    delta = torch.linalg.solve(hc.T @ hc + ridge * torch.eye(h.shape[1]), hc.T @ y)  # H×D; y has mean 0
    proj.fc2.weight.add_(delta.T.to(proj.fc2.weight))
    proj.fc2.bias.sub_((h_mean @ delta).to(proj.fc2.bias))
    got = torch.stack([(r - h_mean) @ delta for r in rows]).mean(1)  # S×D: each slice's mean added offset
    targets = table - per_slice.mean(0)
    nearest = (F.normalize(got, dim=1) @ F.normalize(targets, dim=1).T).argmax(1)
    hits = sum(kinds[int(i)] == s for i, s in zip(nearest, sets))
    return ImageAlignmentReport(len(rows), kinds, hits / len(rows))


__all__ = ["ImageAlignmentReport", "align_vision_projector", "slice_words", "RIDGE"]
