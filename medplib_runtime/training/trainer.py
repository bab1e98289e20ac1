"""The training loop for one stage: AdamW on the stage's parameters, gradient accumulation,
warmup then linear decay, a JSONL loss log, resumable checkpoints, and DDP or FSDP2 when launched
by ``torchrun`` (gloo on CPU, nccl on GPU; rank 0 writes; distributed.py).

Deterministic given the seed: the example order is a function of (seed, epoch), the learning
rate a function of the step, and the RNG state is saved with each checkpoint, so a resumed run
continues exactly where the interrupted one was (tested bit for bit).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..imaging.transforms import mask_to_model
from ..modeling.glue_weights import load_glue, read_glue_metadata, save_glue
from ..modeling.moe import RoutingRecorder, set_routing
from ..modeling.question_routing import best_threshold
from . import distributed, new_rows
from .config import TrainConfig
from .examples import Example, TrainSample, encode, pixel_key
from .forward import LossWeights, TrainModule
from .params import param_groups, prepare_stage

ADAPTER = "adapter.safetensors"
CHECKPOINT_DIR = "checkpoint"
HEAD_PARTS = {"seg_projector", "ground_head", "mask_decoder"}  # what turns <SEG> states into masks


@dataclass(frozen=True)
class TrainReport:
    stage: int
    steps: int
    examples: int  # distinct training examples (all processes)
    losses: tuple[float, ...]  # mean loss per optimizer step (this process)
    adapter: str
    seconds: float
    trainable_parameters: int
    resumed_from: int  # step the run continued from (0 = fresh)
    routing: tuple[float, ...]  # share of tokens per expert in the last step (stage IV: the router's choice)


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _device(cfg: TrainConfig) -> torch.device:
    """cpu, or this process's GPU (torchrun's LOCAL_RANK), checked before any work is done."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    from ..devices import check_device

    local = int(os.environ.get("LOCAL_RANK", "0"))
    check_device(f"cuda:{local}")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _lr(step: int, cfg: TrainConfig, base: float) -> float:
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    return base * max(0.0, 1 - (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))


def _order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class _Embedder:
    """Frozen pixel encoder: each distinct image embedded once per process (it is the slow part), keyed
    by its pixels (``examples.pixel_key``)."""

    def __init__(self, model) -> None:
        from ..predictors.segmenter import SamSegmenter

        self.segmenter = SamSegmenter(model.sam)
        self.cache: dict[tuple, object] = {}

    def __call__(self, sample: TrainSample):
        key = pixel_key(sample.image)
        if key not in self.cache:
            emb = self.segmenter.embed(sample.image)  # made under inference_mode: autograd may not save it,
            # and the ground head's key convolution must (its weights learn from the embedding)
            self.cache[key] = replace(emb, image_embedding=emb.image_embedding.clone())
        return self.cache[key]


def train(cfg: TrainConfig, samples: list[TrainSample], *, model=None, embedder=None,
          progress: bool = True, rows_as_delta: bool | None = None) -> TrainReport:
    """Train ``cfg.stage`` on ``samples``; writes ``out_dir/adapter.safetensors`` and returns a report.
    ``rows_as_delta``: how the new token rows train (new_rows.py); None: as a delta on one process and
    under DDP, through the embedding under FSDP2 (which shards it). The same numbers either way."""
    t0 = time.perf_counter()
    rank, world = _dist()
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    if model is None:
        from ..modeling.medplib import build_medplib
        from ..presets import get_preset

        model = build_medplib(get_preset(cfg.preset), pretrained=True, glue=False)  # init_glue or random
    out = Path(cfg.out_dir)
    ckpt = out / CHECKPOINT_DIR
    resumed = 0
    resumed_run = (ckpt / "state.pt").is_file()
    if resumed_run:
        load_glue(model, ckpt / ADAPTER)
    elif cfg.init_glue:
        load_glue(model, cfg.init_glue)
    model.to(device)  # in place: parameters keep their identity, so the stage's choice below still holds
    history = read_glue_metadata(cfg.init_glue) if cfg.init_glue else {"trained_parts": (), "recipe": {}}
    trained_parts = tuple(dict.fromkeys(tuple(history["trained_parts"]) + cfg.trains))  # all stages so far
    if rows_as_delta is None:
        rows_as_delta = world == 1 or cfg.distributed == "ddp"
    chosen = prepare_stage(model, cfg.trains, cfg.forced_expert, rows_as_delta=rows_as_delta)
    if cfg.forced_expert is None:  # stage IV: the router decides, with the run's top-k and capacity
        set_routing(model.llm, top_k=cfg.top_k, capacity_factor=cfg.capacity_factor)
    model.train()
    model.sam.eval()  # the frozen SAM parts keep eval behaviour; only the trained glue is in train mode
    resolved = cfg.resolved()
    # answers that follow earlier turns: a glue trained on none answers each chat question on its own
    resolved["history_examples"] = sum(max(0, len(s.turns) - 1) for s in samples)
    recipe = {"stages": list(history["recipe"].get("stages", [])) + [resolved]}
    examples = _examples(model, samples, cfg)
    weights = LossWeights(resolved["ce_weight"], resolved["bce_weight"], resolved["dice_weight"], cfg.route_supervision,
                          resolved["route_span"], _route_balance(examples) if cfg.routing == "sequence" else (1.0, 1.0),
                          cfg.question_pool)
    grid = model.sam.prompt_encoder.image_embedding_size[0]
    examples = _examples_with_a_loss(examples, weights, cfg)
    cached = head_only(cfg, weights)
    module = TrainModule(model, weights, region_mask_fn=lambda region, emb: mask_to_model(region, emb.info,
                                                                                           grid * 4)[0, 0].to(device),
                         cache_seg_states=cached, cache_router_inputs=routers_only(cfg))
    embed = embedder or _Embedder(model)
    # before wrapping: every process fits the same
    fitted = _fit_input_stats(module, examples, embed, cfg, trained_before=tuple(history["trained_parts"]))
    if cfg.align_region and not resumed_run:  # a checkpoint holds the aligned projection already
        fitted.append(_align_region(module, examples, embed, cfg))
    if cfg.align_image and not resumed_run:
        fitted.append(_align_image(module, examples, embed, cfg))
    runner, chosen = distributed.wrap(module, cfg.distributed, cfg.trains, chosen, world)
    optimizer = torch.optim.AdamW(param_groups(chosen, lr=resolved["lr"], weight_decay=cfg.weight_decay,
                                               router_lr=cfg.router_lr, region_lr=cfg.region_lr))
    start = 0
    if (ckpt / "state.pt").is_file():
        # weights_only: a checkpoint folder may come from elsewhere; unpickling arbitrary objects would run code.
        # What we save is plain (tensors, numbers, strings, tuples, dicts, lists), so nothing else is needed.
        state = torch.load(ckpt / "state.pt", weights_only=True, map_location=device)
        if not _same_run(state["config"], cfg):
            raise InputError(f"{ckpt} holds a run with another config: use a new --out-dir or delete it")
        distributed.load_optimizer_state(optimizer, new_rows.moments_for(optimizer, state["optimizer"]))
        torch.set_rng_state(distributed.own_rng_state(state))
        start = resumed = int(state["step"])

    mine = [i for i in range(len(examples)) if i % world == rank]
    if not mine:
        raise InputError(f"no training examples for process {rank} of {world}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
        if fitted:
            print(f"medplib train: fitted before the first step: {'; '.join(fitted)}", file=sys.stderr)
        if module.seg_state_cache is not None:
            print("medplib train: head-only run: each example's <SEG> states come from the frozen LLM once",
                  file=sys.stderr)
    log = open(out / "train_log.jsonl", "a") if rank == 0 else None
    losses: list[float] = []
    recorder = RoutingRecorder(model.llm)
    routing: tuple[float, ...] = ()
    bar = _bar(cfg.steps, start, rank == 0 and progress)
    for step in range(start, cfg.steps):
        if step == cfg.steps - cfg.steps // 4:  # the threshold is set from the last quarter's questions
            module.question_scores.clear()
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg, resolved["lr"]) * group.get("lr_scale", 1.0)
        parts_sum: dict[str, float] = {}
        with recorder.record():
            for micro in range(cfg.grad_accumulation):
                i = step * cfg.grad_accumulation + micro
                epoch, pos = divmod(i, len(mine))
                ex = examples[mine[int(_order(len(mine), cfg.seed, epoch)[pos])]]
                with distributed.grad_sync(runner, micro == cfg.grad_accumulation - 1):
                    loss, parts = runner(ex, embed(ex.sample))
                    (loss / cfg.grad_accumulation).backward()
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.grad_accumulation
        routing = _routing_share(recorder)
        distributed.clip_grad_norm_([p for _, p in chosen], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(parts_sum["loss"])
        if log is not None:
            # a head-only run's LLM runs only in its first epoch (cached states after): no routing to log then
            log.write(json.dumps({"step": step + 1, "lr": optimizer.param_groups[0]["lr"], **parts_sum,
                                  **({"routing": list(routing)} if routing else {})}) + "\n")
            log.flush()
        bar(step + 1, parts_sum["loss"])
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:  # every process: FSDP gathers
            _set_question_threshold(resolved, module, cfg)
            new_rows.fold(model)  # the rows' trained values into the embedding the glue is read from
            _save_checkpoint(model, optimizer, cfg, step + 1, ckpt, trained_parts, recipe, write=rank == 0)
    adapter = out / ADAPTER
    new_rows.detach(model)
    save_glue(model, adapter, trained_parts=trained_parts, recipe=recipe,
              include_mask_decoder="mask_decoder" in trained_parts, write=rank == 0)
    if log is not None:
        log.close()
    if world > 1:
        torch.distributed.barrier()
    if cfg.forced_expert is None:
        set_routing(model.llm, top_k=cfg.top_k, capacity_factor=None)  # back to the preset's eval capacity
    model.eval()
    return TrainReport(cfg.stage, cfg.steps, len(examples), tuple(losses), str(adapter), time.perf_counter() - t0,
                       sum(p.numel() for _, p in chosen), resumed, routing)


def _examples_with_a_loss(examples: list[Example], weights: LossWeights, cfg: TrainConfig) -> list[Example]:
    """The examples some loss of the run applies to: without a text or routing loss only ``<SEG>``
    answers teach anything (a head-only run; a stage III with ``ce_weight`` 0; TrainConfig refuses a
    run with every weight 0). InputError when no example is left."""
    if weights.ce or weights.route:
        return examples
    kept = [ex for ex in examples if ex.masks]
    if not kept:
        raise InputError(f"stage {cfg.stage} has no text or routing loss, so it learns from <SEG> masks alone, but "
                         f"no answer in the data holds a <SEG> with a mask")
    return kept


def head_only(cfg: TrainConfig, weights: LossWeights) -> bool:
    """A run that trains only what reads the ``<SEG>`` states (seg projector, ground head, mask
    decoder) with no text or routing loss: the LLM's states are then fixed, and computed once."""
    return set(cfg.trains) <= HEAD_PARTS and not weights.ce and not weights.route


def _examples(model, samples: list[TrainSample], cfg: TrainConfig) -> list[Example]:
    out: list[Example] = []
    for sample in samples:
        out += encode(sample, model.tokenizer, system=model.cfg.system_prompt, n_image_tokens=model.n_image_tokens,
                      seg_id=model.token_ids["<SEG>"], max_tokens=cfg.max_tokens,
                      route_trailing_region=cfg.route_trailing_region)
    if not out:
        raise InputError("the training data holds no conversation turns")
    if cfg.closed_repeats > 1:  # the extra copies sit after the rest: the seeded order per pass shuffles them in
        out += [ex for ex in out if ex.sample.answer_type == "closed"] * (cfg.closed_repeats - 1)
    if cfg.stage in (3, 4) and not any(ex.masks for ex in out) and cfg.spec.dice_weight:
        print("medplib train: warning: no <SEG> answers in the data; the grounding losses stay at 0", file=sys.stderr)
    return out


@torch.no_grad()
def _fit_input_stats(module: TrainModule, examples: list[Example], embed, cfg: TrainConfig, *,
                     trained_before: tuple[str, ...] = ()) -> list[str]:
    """The first stage that trains the vision projector, region encoder or seg projector fits its input
    standardisation on ``cfg.fit_input_stats`` examples (the run's seeded order, so they span the
    cases) before its first step; a part fitted before (init glue, checkpoint) keeps its statistics, and
    a part an earlier stage trained without them (``trained_before``, the init glue's parts) is left as
    it is: its weights were learnt on the unstandardised input."""
    if not cfg.fit_input_stats:
        return []
    m, order = module.model, _order(len(examples), cfg.seed, 0)
    fits = {"vision_projector": (m.vision_projector.standardise, lambda ex: True, module.vision_features),
            "region_encoder": (m.region_encoder.standardise, lambda ex: ex.region, module.region_features),
            "seg_projector": (m.seg_projector.standardise, lambda ex: ex.masks, module.seg_states)}
    done = []
    for part, (standardiser, usable, features) in fits.items():
        if part not in cfg.trains or standardiser.fitted or part in trained_before:
            continue
        chosen = [examples[int(i)] for i in order if usable(examples[int(i)])][: cfg.fit_input_stats]
        rows = [features(ex, embed(ex.sample)).float().cpu() for ex in chosen]
        samples = torch.cat(rows) if rows else torch.zeros(0)
        if samples.shape[0] < 2:
            raise InputError(f"fit_input_stats: stage {cfg.stage} trains {part}, but the data has fewer than 2 "
                             f"examples that feed it")
        standardiser.fit(samples.to(standardiser.mean.device))
        done.append(f"{part} ({samples.shape[0]} samples)")
    return done


def _align_region(module: TrainModule, examples: list[Example], embed, cfg: TrainConfig) -> str:
    """The region encoder's projection aligned with the name embeddings (region_alignment.py), from
    every example of the run (each process the same, as the fit of the standardisation)."""
    from .region_alignment import align_region_encoder

    report = align_region_encoder(module, examples, embed, ridge=float(cfg.align_region),
                                  balanced=cfg.align_region_balanced)
    balanced = " (names balanced)" if cfg.align_region_balanced else ""
    return (f"region encoder aligned{balanced} with the names {', '.join(report.names)} ({report.regions} regions, "
            f"nearest name right on {report.nearest_name_accuracy:.2f})")


def _align_image(module: TrainModule, examples: list[Example], embed, cfg: TrainConfig) -> str:
    """The vision projector's tokens moved towards their slices' words (image_alignment.py)."""
    from .image_alignment import align_vision_projector

    report = align_vision_projector(module, examples, embed, scale=float(cfg.align_image))
    return (f"image tokens aligned with {', '.join(report.word_sets)} ({report.slices} slices, nearest words right "
            f"on {report.nearest_words_accuracy:.2f})")


def _set_question_threshold(resolved: dict, module: TrainModule, cfg: TrainConfig) -> None:
    """Question-level routing: the decision threshold from the questions of the run's last quarter of
    steps (the routers have settled by then; question_routing.best_threshold), into the recipe; a
    checkpoint before that quarter gets one from the questions so far."""
    if cfg.routing != "sequence" or not module.question_scores:
        return
    resolved["question_threshold"] = round(best_threshold(module.question_scores), 6)


def _route_balance(examples: list[Example]) -> tuple[float, float]:
    """(grounding, VL) weights that give both targets the same total weight: grounding answers are the
    minority (a fifth of the default data), and a router trained on the raw mix learns the prior."""
    n_ground = sum(1 for ex in examples if ex.masks)
    n_vl = len(examples) - n_ground
    if not n_ground or not n_vl:
        return (1.0, 1.0)
    return (len(examples) / (2 * n_ground), len(examples) / (2 * n_vl))


def routers_only(cfg: TrainConfig) -> bool:
    """Question-level routing that trains the routers and nothing else: the states they read never
    change, so each example's router inputs can be cached. With ``extra_trains`` (a region encoder,
    say) the states move with each step and the full forward runs."""
    return cfg.routing == "sequence" and cfg.trains == ("router",)


# options added after runs were checkpointed: left out of the fingerprint while off, so those runs resume
OFF_WHEN_FALSY = ("fit_input_stats", "align_region", "align_region_balanced")


def _fingerprint(cfg: TrainConfig) -> str:
    # steps may grow on resume; ddp/fsdp checkpoints are the same file (full tensors)
    keep = {k: v for k, v in cfg.resolved().items() if k not in ("steps", "save_every", "distributed", "device", "out_dir")
            and not (k == "region_lr" and v is None) and not (k in OFF_WHEN_FALSY and not v)
            and not (k == "closed_repeats" and v == 1)}
    return json.dumps(keep, sort_keys=True, default=str)


def _same_run(stored: str, cfg: TrainConfig) -> bool:
    """Whether a checkpoint's fingerprint is this config's. The run folder is not part of the run: a
    run moved or renamed resumes there (fingerprints written before 2026-12-01 hold ``out_dir``)."""
    try:
        held = json.loads(stored)
    except ValueError:
        return False
    held.pop("out_dir", None)
    return json.dumps(held, sort_keys=True, default=str) == _fingerprint(cfg)


def _save_checkpoint(model, optimizer, cfg: TrainConfig, step: int, ckpt: Path, trained_parts: tuple[str, ...],
                     recipe: dict, *, write: bool) -> None:
    """Adapter + optimizer + RNG, written to a temp folder and swapped in (never half a checkpoint).
    Every process calls it (sharded tensors are gathered); only ``write`` writes."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    optim, rng = distributed.full_optimizer_state(optimizer), distributed.rng_entries()
    save_glue(model, tmp / ADAPTER, trained_parts=trained_parts, recipe=recipe,
              include_mask_decoder="mask_decoder" in trained_parts, write=write)
    if not write:
        return
    torch.save({"step": step, "optimizer": optim, **rng, "config": _fingerprint(cfg)}, tmp / "state.pt")
    if ckpt.exists():
        old = ckpt.with_name(ckpt.name + ".old")
        ckpt.replace(old)
        tmp.replace(ckpt)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.replace(ckpt)


def _routing_share(recorder: RoutingRecorder) -> tuple[float, ...]:
    choices = recorder.choices()
    if choices.numel() == 0:
        return ()
    n = recorder.layers[0].cfg.num_experts
    return tuple(float((choices == e).float().mean()) for e in range(n))


def _bar(total: int, start: int, enabled: bool):
    if not enabled:
        return lambda step, loss: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step == total:
            bar.close()

    return update


__all__ = ["TrainReport", "train"]
