"""Question (+ region, history) about a slice → answer text, one mask per ``<SEG>``, routing.

MedPLIB used only the first ``<SEG>``; we return every one, in order (multi-object grounding).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..conversation import build_prompt, history_text, question_for_routing, without_region
from ..devices import compute_precision
from ..glue.files import GLUE_PARTS, glue_status
from ..imaging.transforms import mask_to_model
from ..modeling.generation import Prefill, extend_prefill, greedy_generate, shared_prefix
from ..modeling.ground_head import box_from_heat
from ..modeling.medplib import MedPLIB, build_medplib
from ..modeling.moe import GROUND_EXPERT, VL_EXPERT, RoutingRecorder, force_expert
from ..modeling.question_routing import QuestionRoute, choose_expert, question_positions
from ..presets import EXPERT_NAMES, IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, MedPLIBConfig
from ..schemas import AskResult, Prompt, Turn
from .segmenter import Embedding, SamSegmenter

POINT_REGION_HALF = 20  # MedPLIB's demo: a click becomes a 41×41 square
INPUT_ONLY_TOKENS = (IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, "<im_start>", "<im_end>")
REGION_NOT_READ = "the region"
HISTORY_NOT_READ = "the earlier turns"


SINGLE_TURN_NOTE = f"answered on its own ({HISTORY_NOT_READ}: not read): this model was trained on single questions"


def grounding_note(*, region: bool, history: bool) -> str:
    """What a grounding answer left unread, in one line for the chat."""
    unread = " and ".join(n for n, on in ((REGION_NOT_READ, region), (HISTORY_NOT_READ, history)) if on)
    return f"a grounding question: the grounding expert segments from this question alone ({unread}: not read)"


class Asker:
    def __init__(self, model: MedPLIB, segmenter: SamSegmenter) -> None:
        self.model = model
        self.segmenter = segmenter
        self.device = segmenter.device  # the whole model lives where LiteMedSAM does
        self.tokenizer = model.tokenizer
        self.seg_id = model.token_ids["<SEG>"]
        self.im_end_id = model.token_ids["<im_end>"]
        self.stop_ids = {i for i in (self.tokenizer.eos_token_id,) if i is not None}
        parts = [n for n in GLUE_PARTS if n != "ground_head" or model.cfg.grounding == "box"]
        status = glue_status(model.cfg, model.glue_file) if model.glue_file else dict.fromkeys(parts, ("", False))
        self.untrained = tuple(n for n, (_, ok) in status.items() if not ok)
        # input-only tokens the model must never emit
        self.suppress_ids = tuple(model.token_ids[t] for t in INPUT_ONLY_TOKENS)
        # a chat turn continues its routing prefill's cache over the shared start (off: read it all again;
        # for measuring the difference, ``medplib bench``)
        self.reuse_routing_prefix = True

    @torch.inference_mode()
    def ask(self, embedding: Embedding, question: str, *, region: Prompt | None = None, history: tuple[Turn, ...] = (),
            max_new_tokens: int = 64, threshold: float = 0.5, image: np.ndarray | None = None,
            on_token=None) -> AskResult:
        t0 = time.perf_counter()
        m = self.model
        with compute_precision(self.device):
            clip = m.vision_tower.preprocess(image).to(self.device) \
                if image is not None and hasattr(m.vision_tower, "preprocess") else None
            image_tokens = m.image_tokens(pixel_embedding=embedding.image_embedding, clip_pixels=clip)
            region_tokens = None
            if region is not None:
                region_tokens = m.region_token(embedding.image_embedding, self.region_mask(region, embedding))
            # a glue trained on single questions answers each one on its own (measured: README, "The model")
            read = history if m.reads_history else ()
            ids, embeds = self._encode(question, read, image_tokens, region_tokens)
            recorder = RoutingRecorder(m.llm)
            notes: tuple[str, ...] = (SINGLE_TURN_NOTE,) if history and not read else ()
            try:
                with recorder.record():
                    prefilled = None
                    if m.answer_routing == "sequence":  # one expert for the whole answer, chosen from the question
                        # Routed on this turn alone: the routers learnt single-turn questions, and read after
                        # earlier yes/no turns, "Segment the lesion." went to the vision-language expert ("Yes").
                        single = self._encode(question, (), image_tokens, region_tokens) if read else (ids, embeds)
                        routed = single
                        q, has_region = question_for_routing(question, region_tokens is not None)
                        if not m.route_trailing_region and not has_region and region_tokens is not None:
                            routed = self._encode(q, (), image_tokens, None)  # as the routers were trained
                        route = self._route_question(*routed)
                        prefilled = route.prefilled
                        if prefilled is not None and routed is not single:  # the region still to read
                            recorder.restart()
                            prefilled = self._continue(prefilled, routed, single)
                        if read and prefilled is not None:
                            # that cache holds no history, but the system line and the image are the chat
                            # prompt's too: keep them, read the rest (the earlier turns and this question)
                            recorder.restart()  # routing counts the positions read for this answer
                            prefilled = self._continue(prefilled, single, (ids, embeds))
                        if route.expert == GROUND_EXPERT and (region_tokens is not None or history):
                            # Grounding questions are single-turn and carry no region (MeCoVQA-G, our data):
                            # reading a region the grounding expert answered nothing, and after earlier turns
                            # no <SEG> ("The lesion is inces."; measured on brain1). It reads the question alone.
                            ids, embeds = self._encode(without_region(question), (), image_tokens, None)
                            notes = (grounding_note(region=region_tokens is not None, history=bool(history)),)
                        if prefilled is None:
                            recorder.restart()  # the prompt is read again, by the chosen expert
                    gen = greedy_generate(m.llm, embeds, max_new_tokens=max_new_tokens, stop_ids=self.stop_ids,
                                          on_token=on_token, suppress_ids=self.suppress_ids, prefilled=prefilled)
            finally:
                if m.answer_routing == "sequence":
                    force_expert(m.llm, VL_EXPERT)  # the state the next question is read in
        masks = self.masks_for(gen.token_ids, gen.hidden, embedding, threshold)
        answer_ids = [t for t in gen.token_ids if t not in self.stop_ids]
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=False).strip()
        token_texts = ["<prompt>"] * (gen.prefill_tokens - gen.prefill_reused) + \
            [self.tokenizer.decode([t]) for t in gen.token_ids]
        routing = recorder.stats(token_texts, EXPERT_NAMES)
        n_new = max(len(gen.token_ids), 1)
        timings = {"prefill": gen.prefill_s * 1e3, "decode": gen.decode_s * 1e3,
                   "decode_tok_per_s": n_new / gen.decode_s if gen.decode_s else 0.0,
                   "total": (time.perf_counter() - t0) * 1e3}
        return AskResult(text=answer, masks=masks, routing=routing, untrained_parts=self.untrained, timings_ms=timings,
                         notes=notes)

    def _encode(self, question: str, history: tuple[Turn, ...], image_tokens: torch.Tensor,
                region_tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's token ids and input embeddings (image and region features in place)."""
        m = self.model
        text = build_prompt(question, system=m.cfg.system_prompt, n_image_tokens=m.n_image_tokens,
                            history=history, region=region_tokens is not None)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
        return ids, m.embed_inputs(ids, image_tokens=image_tokens, region_tokens=region_tokens)

    def _continue(self, routed: Prefill, single: tuple[torch.Tensor, torch.Tensor],
                  chat: tuple[torch.Tensor, torch.Tensor]) -> Prefill | None:
        """The chat prompt ``chat`` (ids, inputs) read on from the routing prefill of its single-turn
        prompt ``single``: their shared start is not run again. None when they share nothing."""
        shared = min(shared_prefix(*single, *chat), chat[0].shape[1] - 1)
        if shared <= 0 or not self.reuse_routing_prefix:
            return None
        return extend_prefill(self.model.llm, routed, chat[1], shared=shared)

    def _route_question(self, ids: torch.Tensor, embeds: torch.Tensor) -> QuestionRoute:
        """Question-level routing: the expert the routers pick from the question of a single-turn prompt
        (every layer is left forced to it), with the prompt's KV cache when that expert read it."""
        m = self.model
        before = history_text(system=m.cfg.system_prompt, n_image_tokens=m.n_image_tokens)
        turn_start = len(self.tokenizer(before, add_special_tokens=False)["input_ids"])
        at = question_positions(ids[0], turn_start=turn_start, im_end_id=self.im_end_id, end=ids.shape[1])
        if m.question_pool == "last":  # the prompt's last position has read the whole question
            at = at[-1:]
        return choose_expert(m.llm, embeds, at, threshold=m.question_threshold)

    def text_callback(self, on_text):
        """Token-id callback → text callback; stop tokens are not shown."""

        def on_token(token_id: int) -> None:
            if token_id not in self.stop_ids:
                on_text(self.tokenizer.decode([token_id], skip_special_tokens=False))

        return on_token

    @torch.inference_mode()
    def masks_for(self, token_ids: tuple[int, ...], hidden: torch.Tensor, embedding: Embedding,
                  threshold: float) -> tuple[np.ndarray, ...]:
        """One full-resolution mask per ``<SEG>`` in ``token_ids``, in order."""
        where = [i for i, t in enumerate(token_ids) if t == self.seg_id]
        if not where:
            return ()
        with compute_precision(self.device):  # the LLM side; LiteMedSAM's decoder below runs in fp32
            tokens = self.model.seg_tokens(hidden[where])
            heat = self.model.ground_head(tokens, embedding.image_embedding) if self.model.grounds_by_box else None
        if heat is not None:  # the heat map's blob → a box → the frozen decoder's own prompt
            size = self.segmenter.image_size
            boxes = np.stack([box_from_heat(h[0], model_size=size, valid_hw=embedding.info.resized) for h in heat])
            logits, _ = self.segmenter.decode_boxes(embedding, boxes)
        else:
            logits, _ = self.segmenter.decode_tokens(embedding, tokens)
        return tuple(self.segmenter.to_mask(logits[i:i + 1], embedding, threshold) for i in range(len(where)))

    def region_mask(self, region: Prompt, embedding: Embedding) -> torch.Tensor:
        """A region prompt → mask over the padded model square at the embedding's grid × 4."""
        h, w = embedding.info.original
        mask = np.zeros((h, w), np.float32)
        if region.mask is not None:
            mask = (np.asarray(region.mask) != 0).astype(np.float32)
        elif region.box is not None:
            b = region.box.normalized()
            mask[int(b.r0):int(b.r1) + 1, int(b.c0):int(b.c1) + 1] = 1
        for p in region.points:
            if p.label == 1:
                r, c = int(round(p.row)), int(round(p.col))
                mask[max(0, r - POINT_REGION_HALF):r + POINT_REGION_HALF + 1,
                     max(0, c - POINT_REGION_HALF):c + POINT_REGION_HALF + 1] = 1
        grid = embedding.image_embedding.shape[-1]
        return mask_to_model(mask, embedding.info, grid * 4)[0, 0].to(embedding.image_embedding.device)


def build_asker(cfg: MedPLIBConfig, *, segmenter: SamSegmenter, glue=None) -> Asker:
    """The full model for ``cfg``, sharing the segmenter's already loaded SAM parts; ``glue``: a
    glue file to use instead of the shipped one (e.g. a training run's adapter)."""
    # light: the inference-only LLM (no transformers import, the same answers; llama_infer.py)
    model = build_medplib(cfg, pretrained=True, sam=segmenter.model, glue=glue, light=True).to(segmenter.device)
    return Asker(model, segmenter)


__all__ = ["Asker", "build_asker"]
