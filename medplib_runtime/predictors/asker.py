"""Question (+ region, history) about a slice → answer text, one mask per ``<SEG>``, routing.

MedPLIB used only the first ``<SEG>``; we return every one, in order (multi-object grounding).
A released medplib-7b (``model.weights_folder``) reads the question as written, its image and region tokens
from the CLIP features of the slice (clip_frame.py), each ``<SEG>``'s state where ``MedPLIB.seg_positions``
says, and decodes it with the checkpoint's SAM-Med2D as a sparse prompt token.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..conversation import PHANTOM_NOTE, build_prompt, history_text, question_for_routing, without_phantom, without_region
from ..devices import compute_precision
from ..errors import ModelError
from ..glue.files import GLUE_PARTS, glue_status
from ..glue.routing import GROUND_EXPERT, VL_EXPERT, RoutingConfig
from ..imaging.transforms import mask_to_model
from ..modeling.generation import GenerationOutput, Prefill, extend_prefill, greedy_generate, shared_prefix
from ..modeling.ground_head import box_from_heat, heat_scores, strongest_blob
from ..modeling.medplib import MedPLIB, build_medplib
from ..modeling.moe import RoutingRecorder, expert_forced
from ..modeling.question_routing import QuestionRoute, choose_expert, question_positions
from ..modeling.vision_tower import PooledPixelFeatures
from ..presets import EXPERT_NAMES, IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, MedPLIBConfig
from ..schemas import AskResult, Prompt, Turn
from .clip_frame import clip_grid_mask, clip_pixels
from .grounding_trust import (ABSTAIN_BELOW, Grounded, GroundingEvidence, Verdict, abstention_text, confidence,
                              grid_agreement, judge)
from .phrasing import grounding_ask
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


@dataclass(frozen=True)
class _Features:
    """What stands behind a prompt's placeholders: ``1×N×D`` image tokens, the region's ``1×1×D`` token."""

    image: torch.Tensor
    region: torch.Tensor | None


@dataclass(frozen=True)
class _Prompt:
    ids: torch.Tensor  # 1×T
    embeds: torch.Tensor  # 1×T×D, features in their placeholders
    features: _Features


@dataclass(frozen=True)
class _Plan:
    """How an answer is written: from ``prompt``, continuing ``prefilled`` when its cache holds it, with
    every layer forced to ``expert`` (None: the layers as the glue's recipe set them)."""

    prompt: _Prompt
    prefilled: Prefill | None
    expert: int | None
    notes: tuple[str, ...]


class Asker:
    def __init__(self, model: MedPLIB, segmenter: SamSegmenter) -> None:
        self.model = model
        self.segmenter = segmenter
        self.device = segmenter.device  # the whole model lives where LiteMedSAM does
        self.tokenizer = model.tokenizer
        self.routing: RoutingConfig = model.routing  # the glue's recipe's, read once when the model was built
        self.released = model.weights_folder is not None  # a released checkpoint: every part trained, no glue
        self.seg_id = model.token_ids["<SEG>"]
        self.im_end_id = model.token_ids["<im_end>"]
        self.stop_ids = {i for i in (self.tokenizer.eos_token_id,) if i is not None}
        parts = [n for n in GLUE_PARTS if n != "ground_head" or model.cfg.grounding == "box"]
        status = glue_status(model.cfg, model.glue_file) if model.glue_file else dict.fromkeys(parts, ("", False))
        self.untrained = () if self.released else tuple(n for n, (_, ok) in status.items() if not ok)
        # input-only tokens the model must never emit
        self.suppress_ids = tuple(model.token_ids[t] for t in INPUT_ONLY_TOKENS)
        # a chat turn continues its routing prefill's cache over the shared start (off: read it all again;
        # for measuring the difference, ``medplib bench``)
        self.reuse_routing_prefix = True
        # grounding confidence under which no mask is returned (0: never abstain); calibrated on the lite glue's
        # heat maps, which a released checkpoint has none of
        self.abstain_below = 0.0 if self.released else ABSTAIN_BELOW

    @torch.inference_mode()
    def ask(self, embedding: Embedding, question: str, *, region: Prompt | None = None, history: tuple[Turn, ...] = (),
            max_new_tokens: int = 64, threshold: float = 0.5, image: np.ndarray | None = None,
            on_token=None) -> AskResult:
        t0 = time.perf_counter()
        # the lite glue reads one phrasing of a request for a mask (phrasing.py); MedPLIB's own, the user's
        asked = None if self.released else grounding_ask(question)
        read = asked.canonical if asked else question
        recorder = RoutingRecorder(self.model.llm)
        with compute_precision(self.device), recorder.record():
            plan = self._plan(read, history, self._features(embedding, region, image), recorder)
            with self._experts(plan.expert):
                prefilled = plan.prefilled or self._prefill(plan.prompt)
                gen = greedy_generate(self.model.llm, plan.prompt.embeds, max_new_tokens=max_new_tokens,
                                      stop_ids=self.stop_ids, on_token=on_token, suppress_ids=self.suppress_ids,
                                      prefilled=prefilled)
        before = prefilled.last_hidden if self.model.cfg.seg_state_offset < 0 else None
        found = self.grounded(gen.token_ids, gen.hidden, embedding, threshold, prompt_last=before)
        return self._result(gen, found, recorder, plan.notes, t0, structure=asked.structure if asked else None)

    def _features(self, embedding: Embedding, region: Prompt | None, image: np.ndarray | None) -> _Features:
        m = self.model
        if not isinstance(m.vision_tower, PooledPixelFeatures):  # medplib-7b's CLIP tower reads the slice itself
            return self._clip_features(embedding, region, image)
        image_tokens = m.image_tokens(pixel_embedding=embedding.image_embedding)  # pooled from the embedding
        region_token = None
        if region is not None:
            region_token = m.region_token(embedding.image_embedding, self.region_mask(region, embedding))
        return _Features(image_tokens, region_token)

    def _clip_features(self, embedding: Embedding, region: Prompt | None, image: np.ndarray | None) -> _Features:
        """medplib-7b: image tokens and the region token both from the slice's CLIP patch features."""
        if image is None:
            raise ModelError(f"{self.model.cfg.preset}: the CLIP tower needs the slice image (Asker.ask(image=...))")
        m, size = self.model, self.model.vision_tower.image_size
        features = m.vision_features(pixel_embedding=embedding.image_embedding,
                                     clip_pixels=clip_pixels(image, size).to(self.device))
        region_token = None
        if region is not None:
            mask = clip_grid_mask(self.region_slice_mask(region, embedding.info.original), size, m.cfg.vision_grid)
            region_token = m.region_token(embedding.image_embedding, mask.to(self.device), vision_features=features)
        return _Features(m.image_tokens(pixel_embedding=embedding.image_embedding, features=features), region_token)

    def _plan(self, question: str, history: tuple[Turn, ...], features: _Features,
              recorder: RoutingRecorder) -> _Plan:
        # a glue trained on single questions answers each one on its own (measured: README, "The model")
        read = history if self.routing.reads_history else ()
        notes = (SINGLE_TURN_NOTE,) if history and not read else ()
        chat = self._encode(question, read, features)
        if not self.routing.per_question:
            return _Plan(chat, None, None, notes)
        # Routed on this turn alone: the routers learnt single-turn questions, and read after earlier
        # yes/no turns, "Segment the lesion." went to the vision-language expert ("Yes").
        single = self._encode(question, (), features) if read else chat
        routed = self._routing_prompt(question, single)
        route = self._route_question(routed)
        if route.expert == GROUND_EXPERT:
            recorder.restart()  # the prompt is read again, by the grounding expert
            return self._grounding_plan(question, history, chat, notes)
        with expert_forced(self.model.llm, VL_EXPERT):  # the expert whose cache is continued
            prefilled = self._read_on(route.prefilled, (routed, single, chat), recorder)
        return _Plan(chat, prefilled, VL_EXPERT, notes)

    def _routing_prompt(self, question: str, single: _Prompt) -> _Prompt:
        """The prompt the routers read: the single-turn one, or, for routers trained on questions
        without the region after them (``route_trailing_region`` false), that question alone."""
        q, has_region = question_for_routing(question, single.features.region is not None)
        if self.routing.route_trailing_region or has_region or single.features.region is None:
            return single
        return self._encode(q, (), replace(single.features, region=None))  # as the routers were trained

    def _grounding_plan(self, question: str, history: tuple[Turn, ...], chat: _Prompt,
                        notes: tuple[str, ...]) -> _Plan:
        """Grounding questions are single-turn and carry no region (MeCoVQA-G, our data): reading a region
        the grounding expert answered nothing, and after earlier turns no <SEG> ("The lesion is inces.";
        measured on brain1). It reads the question alone."""
        region = chat.features.region is not None
        if not region and not history:
            return _Plan(chat, None, GROUND_EXPERT, notes)
        alone = self._encode(without_region(question), (), replace(chat.features, region=None))
        return _Plan(alone, None, GROUND_EXPERT, (grounding_note(region=region, history=bool(history)),))

    def _read_on(self, prefilled: Prefill | None, prompts: tuple[_Prompt, ...],
                 recorder: RoutingRecorder) -> Prefill | None:
        """The routing prefill of ``prompts[0]`` read on to the last prompt, step by step, over what each
        shares with the one before (system line, image): the region still to read, the earlier turns.
        None where a step shares nothing (the last prompt is then read whole)."""
        for before, after in zip(prompts, prompts[1:]):
            if before is after or prefilled is None:
                continue
            recorder.restart()  # routing counts the positions read for this answer
            prefilled = self._continue(prefilled, before, after)
        if prefilled is None:
            recorder.restart()  # the prompt is read again
        return prefilled

    def _experts(self, expert: int | None):
        """Every layer forced to this call's ``expert``; None: the layers as the glue's recipe set them."""
        return nullcontext() if expert is None else expert_forced(self.model.llm, expert)

    def _prefill(self, prompt: _Prompt) -> Prefill:
        f = prompt.features
        return self.model.prefill(prompt.ids, image_tokens=f.image, region_tokens=f.region)

    def _encode(self, question: str, history: tuple[Turn, ...], features: _Features) -> _Prompt:
        """The prompt's token ids and input embeddings (image and region features in place)."""
        m = self.model
        text = build_prompt(question, system=m.cfg.system_prompt, n_image_tokens=m.n_image_tokens,
                            history=history, region=features.region is not None)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
        return _Prompt(ids, m.embed_inputs(ids, image_tokens=features.image, region_tokens=features.region), features)

    def _continue(self, routed: Prefill, single: _Prompt, chat: _Prompt) -> Prefill | None:
        """The prompt ``chat`` read on from the prefill of ``single``: their shared start is not run
        again. None when they share nothing."""
        shared = min(shared_prefix(single.ids, single.embeds, chat.ids, chat.embeds), chat.ids.shape[1] - 1)
        if shared <= 0 or not self.reuse_routing_prefix:
            return None
        return extend_prefill(self.model.llm, routed, chat.embeds, shared=shared)

    def _route_question(self, prompt: _Prompt) -> QuestionRoute:
        """Question-level routing: the expert the routers pick from the question of a single-turn prompt,
        with the prompt's KV cache when that expert read it."""
        m = self.model
        before = history_text(system=m.cfg.system_prompt, n_image_tokens=m.n_image_tokens)
        turn_start = len(self.tokenizer(before, add_special_tokens=False)["input_ids"])
        at = question_positions(prompt.ids[0], turn_start=turn_start, im_end_id=self.im_end_id, end=prompt.ids.shape[1])
        if self.routing.question_pool == "last":  # the prompt's last position has read the whole question
            at = at[-1:]
        return choose_expert(m.llm, lambda: self._prefill(prompt), at, threshold=self.routing.question_threshold)

    def _result(self, gen: GenerationOutput, found: tuple[Grounded, ...], recorder: RoutingRecorder,
                notes: tuple[str, ...], t0: float, *, structure: str | None = None) -> AskResult:
        answer_ids = [t for t in gen.token_ids if t not in self.stop_ids]
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=False).strip()
        answer, masks, notes, verdict = self._checked(answer, found, notes, structure)
        token_texts = ["<prompt>"] * (gen.prefill_tokens - gen.prefill_reused) + \
            [self.tokenizer.decode([t]) for t in gen.token_ids]
        routing = recorder.stats(token_texts, EXPERT_NAMES)
        n_new = max(len(gen.token_ids), 1)
        timings = {"prefill": gen.prefill_s * 1e3, "decode": gen.decode_s * 1e3,
                   "decode_tok_per_s": n_new / gen.decode_s if gen.decode_s else 0.0,
                   "total": (time.perf_counter() - t0) * 1e3}
        return AskResult(text=answer, masks=masks, routing=routing, untrained_parts=self.untrained, timings_ms=timings,
                         notes=notes, confidence=verdict.confidence, abstained=verdict.abstained)

    def _checked(self, answer: str, found: tuple[Grounded, ...], notes: tuple[str, ...],
                 structure: str | None) -> tuple[str, tuple[np.ndarray, ...], tuple[str, ...], Verdict]:
        """The answer as the user gets it: never the training data's "phantom", never a mask the model is not
        sure of (then the text says so; grounding_trust.py)."""
        answer, said_phantom = without_phantom(answer)
        notes = notes + ((PHANTOM_NOTE,) if said_phantom else ())
        verdict = judge(found, below=self.abstain_below)
        if not verdict.abstained:
            return answer, tuple(g.mask for g in found), notes, verdict
        return abstention_text(structure, verdict.confidence), (), notes + (
            f"no mask returned: grounding confidence {verdict.confidence:.2f} is under the threshold "
            f"{self.abstain_below:.2f}",), verdict

    def text_callback(self, on_text):
        """Token-id callback → text callback; stop tokens are not shown."""

        def on_token(token_id: int) -> None:
            if token_id not in self.stop_ids:
                on_text(self.tokenizer.decode([token_id], skip_special_tokens=False))

        return on_token

    def masks_for(self, token_ids: tuple[int, ...], hidden: torch.Tensor, embedding: Embedding,
                  threshold: float) -> tuple[np.ndarray, ...]:
        """One full-resolution mask per ``<SEG>`` in ``token_ids``, in order (whatever their confidence)."""
        return tuple(g.mask for g in self.grounded(token_ids, hidden, embedding, threshold))

    @torch.inference_mode()
    def grounded(self, token_ids: tuple[int, ...], hidden: torch.Tensor, embedding: Embedding,
                 threshold: float, *, prompt_last: torch.Tensor | None = None) -> tuple[Grounded, ...]:
        """One full-resolution mask per ``<SEG>`` in ``token_ids``, in order, each with its confidence.
        ``hidden[i]``: the state where token i was the input; ``prompt_last``: the prompt's last state (the
        one that predicted token 0), needed where the preset reads the state before each ``<SEG>``."""
        where = self.model.seg_positions(token_ids)
        if not where:
            return ()
        states = hidden
        if prompt_last is not None:  # position −1 (the prompt's last) becomes row 0
            states, where = torch.cat([prompt_last.reshape(1, -1).to(hidden.dtype), hidden]), [i + 1 for i in where]
        if min(where) < 0:
            raise ModelError("a <SEG> is the first token: its state is in the prompt (pass prompt_last)")
        with compute_precision(self.device):  # the LLM side; LiteMedSAM's decoder below runs in fp32
            tokens = self.model.seg_tokens(states[where])
            heat = self.model.ground_head(tokens, embedding.image_embedding) if self.model.grounds_by_box else None
        blobs = [] if heat is None else [strongest_blob(h[0]) for h in heat]
        if heat is not None:  # the heat map's blob → a box → the frozen decoder's own prompt
            size = self.segmenter.image_size
            boxes = np.stack([box_from_heat(h[0], model_size=size, valid_hw=embedding.info.resized) for h in heat])
            logits, iou = self.segmenter.decode_boxes(embedding, boxes)
        else:
            logits, iou = self.segmenter.decode_tokens(embedding, tokens)
        out = []
        for i in range(len(where)):
            mask = self.segmenter.to_mask(logits[i:i + 1], embedding, threshold)
            scores, agreement = None, 0.0
            if blobs:
                prob, blob = blobs[i]
                on_grid = torch.nn.functional.adaptive_avg_pool2d(
                    (torch.sigmoid(logits[i:i + 1].float()) > threshold).float(), blob.shape)[0, 0].cpu().numpy() > 0.5
                logit_map = heat[i, 0].detach().float().cpu().numpy()
                scores, agreement = heat_scores(prob, blob, logit_map), grid_agreement(blob, on_grid)
            evidence = GroundingEvidence(scores, float(iou[i]), agreement, float(mask.mean()))
            out.append(Grounded(mask, evidence, confidence(evidence)))
        return tuple(out)

    def region_mask(self, region: Prompt, embedding: Embedding) -> torch.Tensor:
        """A region prompt → mask over the padded model square at the embedding's grid × 4."""
        mask = self.region_slice_mask(region, embedding.info.original)
        grid = embedding.image_embedding.shape[-1]
        return mask_to_model(mask, embedding.info, grid * 4)[0, 0].to(embedding.image_embedding.device)

    @staticmethod
    def region_slice_mask(region: Prompt, shape: tuple[int, int]) -> np.ndarray:
        """A region prompt → ``(h, w)`` float32 mask of the slice (MedPLIB's demo: a click → 41×41 square)."""
        h, w = shape
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
        return mask


def build_asker(cfg: MedPLIBConfig, *, segmenter: SamSegmenter, glue=None) -> Asker:
    """The full model for ``cfg``, sharing the segmenter's already loaded SAM parts; ``glue``: a
    glue file to use instead of the shipped one (e.g. a training run's adapter)."""
    # light: the inference-only LLM (no transformers import, the same answers; llama_infer.py)
    model = build_medplib(cfg, pretrained=True, sam=segmenter.model, glue=glue, light=True).to(segmenter.device)
    return Asker(model, segmenter)


__all__ = ["Asker", "build_asker"]
