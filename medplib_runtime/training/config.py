"""What a training run is: one typed config per run, read from a JSON file, and the four stages.

Stage facts from MedPLIB's ``scripts/train_stage{2,3,4}.sh``: II lr 1e-4, text loss; III lr 3e-4,
LoRA r8 α16 on gate/up/down, text + BCE (1.0) + Dice (5.0); IV lr 3e-4, router (``wg``) trained,
top-1, capacity factor 1.5, no auxiliary loss, text + BCE (2.0) + Dice (0.5). Stage I is LLaVA's
alignment (projector only, text loss).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import InputError
from ..glue.routing import STAGE_EXPERT, VL_EXPERT  # torch-free: parsing a config imports no torch
from .json_files import read_json


@dataclass(frozen=True)
class StageSpec:
    number: int
    name: str
    trains: tuple[str, ...]  # glue parts whose parameters get gradients
    forced_expert: int | None  # every token to this expert (weight 1), or None = the router decides
    lr: float
    bce_weight: float
    dice_weight: float


STAGES: dict[int, StageSpec] = {
    1: StageSpec(1, "alignment", ("vision_projector",), STAGE_EXPERT[1], 1e-3, 0.0, 0.0),
    2: StageSpec(2, "vision-language expert", ("vision_projector", "region_encoder", "expert_vl", "new_token_rows"),
                 STAGE_EXPERT[2], 1e-4, 0.0, 0.0),
    3: StageSpec(3, "grounding expert", ("expert_ground", "seg_projector", "ground_head", "new_token_rows"),
                 STAGE_EXPERT[3], 3e-4, 1.0, 5.0),
    4: StageSpec(4, "MoE adaptation", ("router", "seg_projector", "ground_head", "region_encoder", "new_token_rows"),
                 STAGE_EXPERT[4], 3e-4, 2.0, 0.5),
}


@dataclass(frozen=True)
class TrainConfig:
    stage: int
    data: tuple[str, ...]  # MeCoVQA-format JSON files
    out_dir: str
    preset: str = "medplib-lite"
    init_glue: str | None = None  # the previous stage's adapter file (None: random init, seed 0)
    steps: int = 100  # optimizer steps
    grad_accumulation: int = 8  # examples per optimizer step (per process)
    lr: float | None = None  # None: the stage's
    weight_decay: float = 0.0
    warmup_steps: int = 5
    ce_weight: float = 1.0
    bce_weight: float | None = None  # None: the stage's
    dice_weight: float | None = None
    train_mask_decoder: bool = False  # MedPLIB did; off by default so box prompts stay pure LiteMedSAM
    train_experts_in_stage4: bool = False
    max_tokens: int = 512  # longer examples are refused, not truncated (a cut answer teaches nothing)
    save_every: int = 25
    seed: int = 0
    extra_trains: tuple[str, ...] = field(default_factory=tuple)
    router_lr: float | None = None  # stage IV: the routers' own lr (None: the stage's); ours learn in 50 steps
    region_lr: float | None = None  # the region encoder's own lr (None: the stage's); ours starts from random
    # init and must grow region-to-region differences that are small next to its bias (docs/training.md)
    fit_input_stats: int = 0  # ours: when this stage first trains the vision projector, region encoder or seg projector, fit
    # its input standardisation (modeling/standardiser.py) on this many of the run's examples first; 0: off
    align_region: float = 0.0  # ours: before the first step, fit the region encoder's projection in closed form
    # (ridge regression with this penalty) so a region's token is the input embedding of the structure it marks
    # (training/region_alignment.py); 0: off. Gradient steps then train it only if it is not ``frozen``
    align_region_balanced: bool = False  # ours: that fit weighs each structure name's regions equally in all
    align_image: float = 0.0  # ours: before the first step, add to the vision projector's output layer the closed-form
    # fit that moves each image token by this scale × its slice's modality / body-region word embedding (minus their
    # mean) (training/image_alignment.py); 0: off
    top_k: int = 1  # stage IV: experts per token (MedPLIB: 1)
    capacity_factor: float = 1.5  # stage IV: training capacity factor (MedPLIB: 1.5)
    route_supervision: float = 0.0  # stage IV, ours: weight of a CE on the router (answers with <SEG> → the
    # grounding expert, others → the VL expert); MedPLIB: 0 (no routing loss at all)
    route_span: str = "answer"  # ours: where the routing loss applies: "answer" (the positions whose outputs are
    # the answer) or "turn" (the current question's text and its answer: a grounding question is then read by the
    # grounding expert, as in stage III, before its <SEG> is written)
    frozen: tuple[str, ...] = field(default_factory=tuple)  # glue parts the stage would train, kept as they are
    question_pool: str = "mean"  # routing "sequence", ours: which positions decide — "mean": every token of the
    # question (and " ASSISTANT:"), their p(grounding) averaged; "last": the prompt's last position only, whose
    # state has read the whole question (per-token routers cannot tell "Describe this image." from "Segment
    # ...": docs/training.md, "Misrouted phrasings")
    route_trailing_region: bool = True  # routing "sequence", ours: False — the routers read a question whose region
    # comes after it (the chat's form) without that region (conversation.question_for_routing); the Asker does the same
    routing: str = "token"  # stage IV: "token" (MedPLIB: the router picks an expert per token) or "sequence" (ours,
    # medplib-lite: one expert per answer, chosen from the question; stage IV then trains only the routers, as a
    # class-balanced question classifier on the vision-language expert's states: modeling/question_routing.py)
    dense_expert: int | None = None  # ablation (stage IV): this one expert for every token, no router
    question_types: tuple[str, ...] = ()  # only records of these types (G/R/C); () = all (MedPLIB's stage III: G)
    closed_repeats: int = 1  # ours: each closed-answer example (yes/no, left/right, ...) this many times per pass:
    # the states hold a yes/no answer well before the LM head says it (docs/closed_answers.md), and the readout
    # learns from these examples only
    distributed: str = "ddp"  # under torchrun (WORLD_SIZE > 1): "ddp" or "fsdp" (FSDP2, ZeRO-2-like)
    device: str = "cpu"  # "cuda": each process on its LOCAL_RANK's GPU, bf16 autocast (devices.py)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise InputError(f"stage must be 1, 2, 3 or 4; got {self.stage}")
        if self.steps < 1 or self.grad_accumulation < 1:
            raise InputError("steps and grad_accumulation must be at least 1")
        if not self.data:
            raise InputError("no training data: give at least one MeCoVQA JSON file")
        if isinstance(self.closed_repeats, bool) or not isinstance(self.closed_repeats, int) or self.closed_repeats < 1:
            raise InputError(f"closed_repeats must be a whole number >= 1; got {self.closed_repeats!r}")
        for name in ("router_lr", "region_lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise InputError(f"{name} must be > 0; got {value!r}")
        if isinstance(self.fit_input_stats, bool) or not isinstance(self.fit_input_stats, int) \
                or self.fit_input_stats == 1 or self.fit_input_stats < 0:
            raise InputError(f"fit_input_stats must be 0 (off) or a number of examples >= 2; got {self.fit_input_stats!r}")
        if isinstance(self.align_region, bool) or not isinstance(self.align_region, (int, float)) \
                or not self.align_region >= 0:
            raise InputError(f"align_region must be 0 (off) or a ridge penalty > 0; got {self.align_region!r}")
        if not isinstance(self.align_region_balanced, bool) or (self.align_region_balanced and not self.align_region):
            raise InputError(f"align_region_balanced must be true or false, and true only with an align_region penalty; "
                             f"got {self.align_region_balanced!r} with align_region {self.align_region!r}")
        if isinstance(self.align_image, bool) or not isinstance(self.align_image, (int, float)) \
                or not self.align_image >= 0:
            raise InputError(f"align_image must be 0 (off) or a scale > 0; got {self.align_image!r}")
        if self.align_image and "vision_projector" not in self.spec.trains:
            raise InputError(f"align_image moves the vision projector, which stage {self.stage} does not train")
        if self.align_region and "region_encoder" not in self.spec.trains:
            raise InputError(f"align_region fits the region encoder, which stage {self.stage} does not train")
        if self.dense_expert not in (None, 0, 1):
            raise InputError(f"dense_expert must be 0, 1 or null; got {self.dense_expert}")
        if self.top_k not in (1, 2) or not self.capacity_factor > 0:
            raise InputError(f"top_k must be 1 or 2 and capacity_factor > 0; got {self.top_k}, {self.capacity_factor}")
        if self.route_supervision < 0 or (self.route_supervision and self.forced_expert is not None
                                          and self.routing != "sequence"):
            raise InputError(f"route_supervision must be >= 0, and only for a stage-IV run with a router; "
                             f"got {self.route_supervision} at stage {self.stage}")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"device must be 'cpu' or 'cuda'; got {self.device!r}")
        if self.route_span not in ("answer", "turn", "question"):
            raise InputError(f"route_span must be 'answer', 'turn' or 'question'; got {self.route_span!r}")
        if self.routing not in ("token", "sequence"):
            raise InputError(f"routing must be 'token' or 'sequence'; got {self.routing!r}")
        if self.question_pool not in ("mean", "last") or (self.question_pool != "mean" and self.routing != "sequence"):
            raise InputError(f"question_pool must be 'mean' or 'last', and 'last' only with routing 'sequence'; "
                             f"got {self.question_pool!r}")
        if not self.route_trailing_region and (self.routing != "sequence" or self.trains != ("router",)):
            raise InputError("route_trailing_region false is for a stage-IV run with routing 'sequence' that "
                             "trains the routers alone (their inputs are then read from the question without it)")
        if self.routing == "sequence" and (self.stage != 4 or self.dense_expert is not None
                                           or not self.route_supervision):
            raise InputError("routing 'sequence' is a stage-IV setting that needs route_supervision > 0 "
                             "(the routers learn from it alone) and no dense_expert")
        unknown = sorted(set(self.frozen) - set(self.spec.trains) - set(self.extra_trains) - {"mask_decoder"})
        if unknown:
            raise InputError(f"frozen names parts stage {self.stage} does not train: {unknown} "
                             f"(it trains {list(self.spec.trains)})")
        if self.distributed not in ("ddp", "fsdp"):
            raise InputError(f"distributed must be 'ddp' or 'fsdp'; got {self.distributed!r}")
        bad = sorted(set(self.question_types) - {"G", "R", "C"})
        if bad:
            raise InputError(f"question_types must be among G, R, C; got {bad}")
        weights = self.resolved()
        if not any(weights[k] for k in ("ce_weight", "bce_weight", "dice_weight", "route_supervision")):
            raise InputError(f"stage {self.stage}: every loss weight is 0 (ce, bce, dice, route_supervision), "
                             f"so nothing would be learnt")

    @property
    def spec(self) -> StageSpec:
        return STAGES[self.stage]

    @property
    def forced_expert(self) -> int | None:
        """The expert every token goes to in this run (None: the router decides). Question-level routing
        trains the routers on the vision-language expert's states, the ones it decides from."""
        if self.stage == 4 and self.routing == "sequence":
            return VL_EXPERT
        return self.dense_expert if self.stage == 4 and self.dense_expert is not None else self.spec.forced_expert

    @property
    def trains(self) -> tuple[str, ...]:
        if self.routing == "sequence":  # the experts are stages II and III's, as trained: only the routers learn
            return tuple(dict.fromkeys(["router"] + [p for p in self.extra_trains if p not in self.frozen]))
        parts = list(self.spec.trains) + list(self.extra_trains)
        if self.train_mask_decoder and self.stage in (3, 4):
            parts.append("mask_decoder")
        if self.train_experts_in_stage4 and self.stage == 4:
            parts += ["expert_ground", "expert_vl"]
        if self.forced_expert is not None and "router" in parts:  # a dense run never uses the router
            parts.remove("router")
        parts = [p for p in parts if p not in self.frozen]
        if "ground_head" in parts and not _grounds_by_box(self.preset):  # MedPLIB's token path has no head
            parts.remove("ground_head")
        return tuple(dict.fromkeys(parts))

    def resolved(self) -> dict:
        """The effective values (stage defaults filled in), for logs and the adapter's recipe."""
        out = asdict(self)
        if self.routing == "sequence":  # the routers learn from the routing loss alone
            out.update(ce_weight=0.0, bce_weight=0.0, dice_weight=0.0, route_span="question",
                       lr=self.lr or self.spec.lr, trains=list(self.trains), stage_name=self.spec.name)
            return out
        out.update(lr=self.lr or self.spec.lr, bce_weight=self.spec.bce_weight if self.bce_weight is None
                   else self.bce_weight, dice_weight=self.spec.dice_weight if self.dice_weight is None
                   else self.dice_weight, trains=list(self.trains), stage_name=self.spec.name)
        return out


def _grounds_by_box(preset: str) -> bool:
    from ..presets import PRESETS

    return preset not in PRESETS or PRESETS[preset].grounding == "box"


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """A TrainConfig from a JSON file (unknown keys refused, naming them), then ``overrides``."""
    raw = read_json(path, "training config", expect=dict)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"training config {path}: unknown keys {unknown}")
    raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("data", "extra_trains", "question_types", "frozen"):
        if key in raw:
            raw[key] = (raw[key],) if isinstance(raw[key], str) else tuple(raw[key])
    try:
        return TrainConfig(**raw)
    except TypeError as exc:
        raise InputError(f"training config {path}: {exc}") from None


__all__ = ["STAGES", "StageSpec", "TrainConfig", "load_config", "replace"]
