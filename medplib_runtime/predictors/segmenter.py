"""The direct prompt → mask path (no LLM), segment-anything's predictor split.

``embed`` runs the encoder once per slice (the expensive part, cached by the runtime);
``segment`` is cheap: prompt encoder + mask decoder on the cached embedding.

LiteMedSAM was trained with boxes only; single points give near-empty masks. Points are
therefore turned into boxes: candidate boxes of several sizes around the clicks are decoded
in one batch, candidates whose mask misses a foreground click or covers a background click
are rejected, the best by predicted IoU wins, and its mask's own bounding box is decoded
once more (a box that fits the structure is what the model was trained on). A free-form
region mask (scribble) becomes its padded bounding box.

The same predictor serves medplib-7b's SAM-Med2D (``sam_normalise``: its input is SAM-normalised, 0–255
scale with ImageNet mean and std, padding left at 0 as MedPLIB's datasets pad after normalising).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..devices import module_device
from ..imaging.transforms import ResizeInfo, logits_to_original, rc_to_model_xy, resize_longest_and_pad
from ..modeling.litemedsam import SamParts
from ..schemas import Box, Prompt, SegmentResult

POINT_BOX_HALF_SIZES = (6, 10, 16, 24, 36)  # model pixels (256² space) around a click
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM / SAM-Med2D / MedPLIB, on the 0–255 scale
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Embedding:
    """One slice's image embedding ``1×C×g×g`` and how the slice maps into model space."""

    image_embedding: torch.Tensor
    info: ResizeInfo

    @property
    def nbytes(self) -> int:
        return self.image_embedding.numel() * self.image_embedding.element_size()


class SamSegmenter:
    def __init__(self, model: SamParts, *, sam_normalise: bool = False) -> None:
        self.model = model
        self.sam_normalise = sam_normalise  # SAM-Med2D (medplib-7b); LiteMedSAM takes [0, 1] as it is
        self.image_size = model.image_size
        self.device = module_device(model)  # inputs are moved here; masks come back to the CPU
        with torch.inference_mode():
            self._dense_pe = model.prompt_encoder.get_dense_pe()

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        """``(h, w)`` grey or ``(h, w, 3)`` RGB float32 slice in [0, 1] → Embedding."""
        x, info = resize_longest_and_pad(image, self.image_size)
        if self.sam_normalise:
            x = _sam_normalised(x, info)
        return Embedding(self.model.image_encoder(x.to(self.device)), info)

    @torch.inference_mode()
    def decode_boxes(self, embedding: Embedding, boxes_xy: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``B×4`` model-space xyxy boxes → (``B×1×L×L`` logits, ``B`` predicted IoU)."""
        boxes = torch.as_tensor(boxes_xy, dtype=torch.float32, device=self.device).reshape(-1, 4)
        sparse, dense = self.model.prompt_encoder(boxes=boxes)
        return self._decode(embedding, sparse, dense)

    @torch.inference_mode()
    def decode_tokens(self, embedding: Embedding, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Extra sparse prompt tokens ``B×N×C`` (e.g. the LLM's ``<SEG>`` projection), dense = no-mask."""
        g = self.model.prompt_encoder.image_embedding_size
        dense = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(tokens.shape[0], -1, *g)
        return self._decode(embedding, tokens.to(self._dense_pe.dtype), dense)

    def _decode(self, embedding: Embedding, sparse: torch.Tensor, dense: torch.Tensor):
        logits, iou = self.model.mask_decoder(image_embeddings=embedding.image_embedding, image_pe=self._dense_pe,
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                              multimask_output=False)
        return logits, iou[:, 0]

    def to_mask(self, logits: torch.Tensor, embedding: Embedding, threshold: float) -> np.ndarray:
        """``1×1×L×L`` logits → full-resolution ``uint8`` mask of the slice."""
        probs = torch.sigmoid(logits_to_original(logits, embedding.info))
        return (probs[0, 0] > threshold).cpu().numpy().astype(np.uint8)

    def segment(self, embedding: Embedding, prompt: Prompt, *, threshold: float = 0.5) -> SegmentResult:
        t0 = time.perf_counter()
        if prompt.mask is not None:
            box = _mask_box(np.asarray(prompt.mask) != 0)
            logits, iou = self.decode_boxes(embedding, self._box_xy(box, embedding.info))
        elif prompt.box is not None:
            logits, iou = self.decode_boxes(embedding, self._box_xy(prompt.box, embedding.info))
            if prompt.points:
                logits, iou = self._respect_points(embedding, prompt, logits, iou, threshold)
        else:
            logits, iou = self._segment_points(embedding, prompt, threshold)
        mask = self.to_mask(logits[:1], embedding, threshold)
        return SegmentResult(mask=mask, score=float(iou[0]), prompt_kind=prompt.kind,
                             timings_ms={"decoder": (time.perf_counter() - t0) * 1e3})

    # -- prompts --------------------------------------------------------------------------------
    @staticmethod
    def _box_xy(box: Box, info: ResizeInfo) -> np.ndarray:
        b = box.normalized()
        xy = rc_to_model_xy(np.array([b.r0, b.r1]), np.array([b.c0, b.c1]), info)
        return np.array([[xy[0, 0], xy[0, 1], xy[1, 0], xy[1, 1]]])

    def _segment_points(self, embedding: Embedding, prompt: Prompt, threshold: float):
        info = embedding.info
        fg = [p for p in prompt.points if p.label == 1]
        rows = np.array([p.row for p in fg])
        cols = np.array([p.col for p in fg])
        xy = rc_to_model_xy(rows, cols, info)
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        limit = np.array([info.resized[1] - 1, info.resized[0] - 1, info.resized[1] - 1, info.resized[0] - 1])
        candidates = np.array([[x0 - h, y0 - h, x1 + h, y1 + h] for h in POINT_BOX_HALF_SIZES])
        candidates = np.clip(candidates, 0, limit)
        logits, iou = self.decode_boxes(embedding, candidates)
        best = self._pick(embedding, prompt, logits, iou, threshold)
        mask = self.to_mask(logits[best:best + 1], embedding, threshold)
        if not mask.any():
            return logits[best:best + 1], iou[best:best + 1]
        refit = self._box_xy(_mask_box(mask.astype(bool), pad_frac=0.05), info)
        refit_logits, refit_iou = self.decode_boxes(embedding, refit)
        if self._admissible(self.to_mask(refit_logits, embedding, threshold), prompt):
            return refit_logits, refit_iou
        return logits[best:best + 1], iou[best:best + 1]

    def _respect_points(self, embedding: Embedding, prompt: Prompt, logits: torch.Tensor, iou: torch.Tensor,
                        threshold: float):
        """Box + points: the box's mask stands when it agrees with every click (foreground clicks
        inside, background clicks outside). Otherwise the clicks veto it: boxes around the
        foreground clicks, kept inside the user's box, are decoded and the best admissible one wins."""
        if self._admissible(self.to_mask(logits[:1], embedding, threshold), prompt):
            return logits, iou
        fg = [p for p in prompt.points if p.label == 1]
        if not fg:
            return logits, iou  # only background clicks and no box variant can honour them better
        box = self._box_xy(prompt.box, embedding.info)[0]
        xy = rc_to_model_xy(np.array([p.row for p in fg]), np.array([p.col for p in fg]), embedding.info)
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        candidates = np.array([box] + [[x0 - h, y0 - h, x1 + h, y1 + h] for h in POINT_BOX_HALF_SIZES])
        candidates[:, 0::2] = np.clip(candidates[:, 0::2], box[0], box[2])  # inside the user's box
        candidates[:, 1::2] = np.clip(candidates[:, 1::2], box[1], box[3])
        logits, iou = self.decode_boxes(embedding, candidates)
        best = self._pick(embedding, prompt, logits, iou, threshold)
        return logits[best:best + 1], iou[best:best + 1]

    def _pick(self, embedding: Embedding, prompt: Prompt, logits: torch.Tensor, iou: torch.Tensor,
              threshold: float) -> int:
        scores = iou.clone()
        for i in range(logits.shape[0]):
            if not self._admissible(self.to_mask(logits[i:i + 1], embedding, threshold), prompt):
                scores[i] -= 10.0  # keep as a fallback, ranked below every admissible candidate
        return int(torch.argmax(scores))

    @staticmethod
    def _admissible(mask: np.ndarray, prompt: Prompt) -> bool:
        h, w = mask.shape
        for p in prompt.points:
            inside = bool(mask[min(int(round(p.row)), h - 1), min(int(round(p.col)), w - 1)])
            if inside != (p.label == 1):
                return False
        return True


def _sam_normalised(x: torch.Tensor, info: ResizeInfo) -> torch.Tensor:
    """``1×3×S×S`` in [0, 1], the slice at the top left → SAM-normalised there, 0 in the padding."""
    h, w = info.resized
    mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    out = torch.zeros_like(x)
    out[..., :h, :w] = (x[..., :h, :w] * 255.0 - mean) / std
    return out


def _mask_box(mask: np.ndarray, pad_frac: float = 0.1, min_pad: float = 2.0) -> Box:
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    pr = max(min_pad, pad_frac * (r1 - r0 + 1))
    pc = max(min_pad, pad_frac * (c1 - c0 + 1))
    return Box(max(0.0, r0 - pr), max(0.0, c0 - pc), min(h - 1.0, r1 + pr), min(w - 1.0, c1 + pc))
