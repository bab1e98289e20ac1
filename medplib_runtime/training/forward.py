"""One example through MedPLIB with gradients, teacher-forced: image tokens and region token into
``MedPLIB.forward`` (the same call the Asker's prefill makes), then ``<SEG>`` hidden states → seg
projector → mask decoder, or the lite preset's ground head's heat map; returns the weighted loss
and its parts.

Wrapped in an ``nn.Module`` so DDP can wrap it (its parameters are the model's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..devices import compute_precision
from ..imaging.transforms import mask_to_model
from ..glue.routing import GROUND_EXPERT, VL_EXPERT
from ..modeling.moe import tap_router_logits
from ..modeling.question_routing import ground_probability, question_positions
from .examples import Example
from .losses import mask_losses, routing_loss, text_loss


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    bce: float = 0.0
    dice: float = 0.0
    route: float = 0.0  # ours (stage IV): the router told which expert an answer's tokens belong to
    route_span: str = "answer"  # "answer": the positions whose outputs are the answer; "turn": the question too;
    # "question": the current question's tokens only (question-level routing decides from those)
    route_balance: tuple[float, float] = (1.0, 1.0)  # CE weight of (grounding, VL) targets: class balance
    question_pool: str = "mean"  # route_span "question": "last" keeps only the prompt's last position


class TrainModule(nn.Module):
    def __init__(self, model, weights: LossWeights, *, region_mask_fn, cache_seg_states: bool = False,
                 cache_router_inputs: bool = False) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        self.region_mask_fn = region_mask_fn  # (region (h, w), embedding) → model-space mask (Asker's)
        # a head-only run (the LLM and everything it reads frozen, no text or routing loss): each example's
        # <SEG> states never change, so the LLM runs once per example instead of once per step
        self.seg_state_cache: dict[int, torch.Tensor] | None = {} if cache_seg_states else None
        # question-level routing trains the routers alone on the vision-language expert's states, which the routers
        # do not change (every token is forced to that expert): each example's router inputs are computed once
        self.router_input_cache: dict[int, list[torch.Tensor]] | None = {} if cache_router_inputs else None
        self.seg_id = model.token_ids["<SEG>"]
        self.im_end_id = model.token_ids["<im_end>"]  # the first turn's question starts after the image
        self.question_scores: list[tuple[float, bool]] = []  # (p(grounding), is a grounding question) per example

    def forward(self, example: Example, embedding) -> tuple[torch.Tensor, dict[str, float]]:
        with compute_precision(embedding.image_embedding.device):
            return self._forward(example, embedding)

    def vision_features(self, example: Example, embedding) -> torch.Tensor:
        """``N×C``: the vision tower's tokens of the example's slice (the vision projector's standardisation's input)."""
        return self.model.vision_tower(embedding.image_embedding).flatten(0, 1)

    def region_features(self, example: Example, embedding) -> torch.Tensor:
        """``1×C``: the pooled pixel features the region encoder projects (its standardisation's input)."""
        region = self.region_mask_fn(example.sample.region, embedding)
        return self.model.region_encoder.pooled(embedding.image_embedding, region)

    def seg_states(self, example: Example, embedding) -> torch.Tensor:
        """``N×D``: the last-layer states where each ``<SEG>`` of the answer is the input (the seg
        projector's input)."""
        input_ids, labels, hidden = self._run(example, embedding)
        return hidden[0, self._seg_positions(input_ids, labels)]

    def _run(self, example: Example, embedding) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ the example's ``1×T`` ids and labels, and ``MedPLIB.forward``'s ``1×T×D`` last-layer states."""
        m = self.model
        pixel = embedding.image_embedding
        input_ids, labels = example.input_ids.to(pixel.device), example.labels.to(pixel.device)
        image_tokens = m.image_tokens(pixel_embedding=pixel)
        region_tokens = None
        if example.region:
            region_tokens = m.region_token(pixel, self.region_mask_fn(example.sample.region, embedding))
        return input_ids, labels, m(input_ids, image_tokens=image_tokens, region_tokens=region_tokens).hidden

    def _seg_positions(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ((input_ids[0] == self.seg_id) & (labels[0] != -100)).nonzero()[:, 0]

    def _forward(self, example: Example, embedding) -> tuple[torch.Tensor, dict[str, float]]:
        if self.seg_state_cache is not None:
            return self._forward_head_only(example, embedding)
        if self.router_input_cache is not None:
            return self._forward_routers_only(example, embedding)
        m = self.model
        with tap_router_logits(m.llm) as taps:
            input_ids, labels, hidden = self._run(example, embedding)  # hidden 1×T×D
        loss = hidden.new_zeros(())
        parts: dict[str, float] = {}
        if self.weights.ce:  # a router-only stage skips the LM head (49k-wide, the costliest matmul)
            ce = text_loss(hidden, labels, m.llm.lm_head)
            loss = loss + self.weights.ce * ce
            parts["ce"] = float(ce.detach())
        if self.weights.route and taps and taps[0]:
            at = self._routed_positions(input_ids[0], labels[0], example.turn_start)
            target = GROUND_EXPERT if example.masks else VL_EXPERT
            route = routing_loss([tap[0][at] for tap in taps], target)
            loss = loss + self.weights.route * self.weights.route_balance[target] * route
            parts["route"] = float(route.detach())
            if self.weights.route_span == "question":  # for the glue's decision threshold (question_routing.py)
                self.question_scores.append((ground_probability(taps, at), bool(example.masks)))
        seg_at = self._seg_positions(input_ids, labels)
        if len(seg_at) and (self.weights.bce or self.weights.dice):
            loss = loss + self._mask_loss(hidden[0, seg_at], example, embedding, parts)
        parts["loss"] = float(loss.detach())
        return loss, parts

    def _forward_head_only(self, example: Example, embedding) -> tuple[torch.Tensor, dict[str, float]]:
        """The mask losses from this example's cached ``<SEG>`` states (computed on first use)."""
        key = id(example)
        if key not in self.seg_state_cache:
            llm, was_training = self.model.llm, self.model.llm.training
            llm.eval()  # the states inference gives (no LoRA dropout): the LLM does not learn here
            try:
                with torch.no_grad():
                    self.seg_state_cache[key] = self.seg_states(example, embedding).detach()
            finally:
                llm.train(was_training)
        states = self.seg_state_cache[key]
        parts: dict[str, float] = {}
        loss = embedding.image_embedding.new_zeros((), dtype=torch.float32)
        if len(states) and (self.weights.bce or self.weights.dice):
            loss = loss + self._mask_loss(states, example, embedding, parts)
        parts["loss"] = float(loss.detach())
        return loss, parts

    def _forward_routers_only(self, example: Example, embedding) -> tuple[torch.Tensor, dict[str, float]]:
        """The routing loss of question-level routing from this example's cached router inputs (each
        layer's ``N×D`` states at the question's tokens, computed on first use with the LLM in eval
        mode, as at inference): the same loss as the full forward's, at the cost of 30 small matmuls."""
        key = id(example)
        if key not in self.router_input_cache:
            self.router_input_cache[key] = self._router_inputs(example, embedding)
        logits = [moe.router(x) for moe, x in zip(self.model.moe, self.router_input_cache[key])]
        target = GROUND_EXPERT if example.masks else VL_EXPERT
        route = routing_loss(logits, target)
        n = logits[0].shape[0]
        self.question_scores.append((ground_probability([[lg] for lg in logits], torch.arange(n)), bool(example.masks)))
        loss = self.weights.route * self.weights.route_balance[target] * route
        return loss, {"route": float(route.detach()), "loss": float(loss.detach())}

    def _router_inputs(self, example: Example, embedding) -> list[torch.Tensor]:
        """Every MoE layer's router input at the current question's tokens (``N×D`` each, detached)."""
        llm, was_training = self.model.llm, self.model.llm.training
        captured: list[torch.Tensor] = []
        hooks = [moe.router.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
                 for moe in self.model.moe]
        example = example.route or example  # the prompt the Asker routes on
        llm.eval()
        try:
            with torch.no_grad():
                input_ids, labels, _ = self._run(example, embedding)
        finally:
            llm.train(was_training)
            for h in hooks:
                h.remove()
        at = self._routed_positions(input_ids[0], labels[0], example.turn_start)
        return [x.reshape(-1, x.shape[-1])[at] for x in captured]

    def _mask_loss(self, seg_hidden: torch.Tensor, example: Example, embedding, parts: dict[str, float]) -> torch.Tensor:
        """BCE + Dice of the masks the ``N×D`` ``<SEG>`` states give against the example's masks."""
        m = self.model
        pixel = embedding.image_embedding
        tokens = m.seg_tokens(seg_hidden)  # N×1×C, the hidden state where <SEG> is the input
        if m.cfg.grounding == "box":  # the heat map is what is learnt; its box prompts the frozen decoder
            logits = m.ground_head(tokens, pixel)  # N×1×g×g
        else:
            logits = self._decode(pixel, tokens)  # N×1×L×L
        targets = torch.cat([mask_to_model(mask, embedding.info, logits.shape[-1]) for mask in example.masks])
        targets = targets.to(pixel.device)
        logits = logits.float()  # the losses' sums in fp32 under bf16 autocast
        bce, dice = mask_losses(logits, (targets > 0.5).to(logits.dtype))
        parts.update(bce=float(bce.detach()), dice=float(dice.detach()))
        return self.weights.bce * bce + self.weights.dice * dice

    def _routed_positions(self, input_ids: torch.Tensor, labels: torch.Tensor, turn_start: int) -> torch.Tensor:
        """Where the routing loss applies (``LossWeights.route_span``)."""
        if self.weights.route_span == "answer":  # the last prompt token and the answer's own
            return (labels[1:] != -100).nonzero()[:, 0]
        answer0 = int((labels != -100).nonzero()[0, 0])
        end = answer0 if self.weights.route_span == "question" else len(input_ids)
        at = question_positions(input_ids, turn_start=turn_start, im_end_id=self.im_end_id, end=end)
        return at[-1:] if self.weights.route_span == "question" and self.weights.question_pool == "last" else at

    def _decode(self, pixel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Differentiable ``<SEG>`` → logits (SamSegmenter.decode_tokens without inference_mode)."""
        pe = self.model.sam.prompt_encoder
        g = pe.image_embedding_size
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(tokens.shape[0], -1, *g)
        logits, _ = self.model.sam.mask_decoder(image_embeddings=pixel, image_pe=pe.get_dense_pe(),
                                                sparse_prompt_embeddings=tokens, dense_prompt_embeddings=dense,
                                                multimask_output=False)
        return logits
