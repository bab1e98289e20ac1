"""Labelled volumes → a MeCoVQA-format dataset (``medplib build-data``).

Output folder::

    images/{mod}_00--{dataset}--{case}--z_{k:04d}.png   windowed 8-bit slice (axis 0), MedPLIB's naming
    masks/{image stem}--{label}.png                      ground truth of a <SEG> (0/255)
    masks/{image stem}--r{j}.png                         region prompt of an R question (0/255)
    masks/{image stem}--g-{label}.png                    region of a G question asked with one (--g-region)
    train.json, val.json, test.json                      records (data/mecovqa.py)
    manifest.json                                        config, cases with their split and facts, counts

Splits are by volume (a case = a patient), never by slice: every record of a case lands in the
case's split. Cases are stratified by modality so each modality with ≥ 2 volumes has one in test.
Everything is deterministic for a seed: each case draws from its own generator seeded by
``(seed, crc32(case id))``, so adding a case does not change the others' questions.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..imaging.io import read_volume
from ..imaging.windowing import apply_window, window_for
from . import templates as T
from .cases import SPLITS, CaseSpec
from .facts import SliceLabelFacts, check_case, slice_facts, volume_facts
from .mecovqa import SEG, Record, Turn, write_dataset, write_png
from .regions import MODES, background_square, make_region


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test (of volumes)
    max_slices_per_volume: int = 12  # labelled slices, evenly spaced through the labelled range
    empty_slices_per_volume: int = 2  # slices without any label: "no" answers, C questions
    min_pixels: int = 10  # a label smaller than this on a slice gets no questions there
    r_per_label: int = 2
    c_per_slice: int = 4
    r_is_per_label: int = 0  # extra closed "is the region the X?" questions per label, on a free-form region
    # inside it; the default set has few: its "is" questions are mostly on background squares, so nearly all "no"
    r_is_pairs: int = 0  # "is the region the X?" asked twice per label and slice with opposite answers: on one
    # region inside the structure with its own name ("yes") and another structure's ("no"; with no other name
    # in the case, its own name on a background square) — so that only comparing the region with the name tells
    r_is_modes: tuple[str, ...] = ("freeform",)  # the region kinds the pairs are asked on, one drawn per pair: a
    # napari user marks a box or a point, and a model that saw "is" on free-form regions only reads a box otherwise
    region_after: float = 0.0  # the share of region questions written with the region in words and its token after
    # the question, as the chat and `medplib ask --box` send a question that does not say <region>; drawn per
    # record from a hash of its id (not from the case's generator: the questions stay the same)
    g_region: float = 0.0  # the share of single-structure G questions asked a second time with a region on that
    # structure after the question, as the napari chat sends "Segment the lesion." with a box picked: the answer is
    # the same mask, so the router learns that a region does not make a question a region question. Drawn from a
    # hash of the slice and structure, with its own generator: every other record stays the same

    def __post_init__(self) -> None:
        counts = {"max_slices_per_volume": self.max_slices_per_volume, "empty_slices_per_volume":
                  self.empty_slices_per_volume, "r_per_label": self.r_per_label, "c_per_slice": self.c_per_slice,
                  "r_is_per_label": self.r_is_per_label, "r_is_pairs": self.r_is_pairs,
                  "min_pixels": self.min_pixels}
        bad = {k: v for k, v in counts.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise InputError(f"build config: counts must be non-negative integers, got {bad}")
        wrong = [m for m in self.r_is_modes if m not in MODES]
        if wrong or not self.r_is_modes:
            raise InputError(f"build config: r_is_modes must name some of {', '.join(MODES)}, got {list(self.r_is_modes)}")
        for name in ("region_after", "g_region"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise InputError(f"build config: {name} must be a share between 0 and 1, got {share}")


@dataclass(frozen=True)
class BuildReport:
    out_dir: Path
    splits: dict[str, tuple[str, ...]]  # split → case ids
    counts: dict[str, dict[str, int]]  # split → {"G", "R", "C", "open", "closed", "records", "images"}
    seconds: float


def assign_splits(cases: list[CaseSpec], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Case id → split. Pinned cases keep theirs; the rest are shuffled per modality and cut by
    ``fractions``, with ≥ 1 test volume in a modality of ≥ 2 volumes and ≥ 1 val volume at ≥ 3."""
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise InputError(f"split fractions must be three non-negative numbers, got {fractions}")
    f_train, f_val, f_test = (f / sum(fractions) for f in fractions)
    out = {c.id: c.split for c in cases if c.split}
    groups: dict[str, list[str]] = {}
    for c in cases:
        if not c.split:
            groups.setdefault(c.modality, []).append(c.id)
    rng = np.random.default_rng(seed)
    for modality in sorted(groups):
        ids = sorted(groups[modality])
        rng.shuffle(ids)
        n = len(ids)
        n_test = max(1 if (n >= 2 and f_test > 0) else 0, round(n * f_test))
        n_val = max(1 if (n >= 3 and f_val > 0) else 0, round(n * f_val))
        if f_train > 0:
            n_val = min(n_val, max(0, n - n_test - 1))
        for i, cid in enumerate(ids):
            out[cid] = "test" if i < n_test else ("val" if i < n_test + n_val else "train")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _png8(plane: np.ndarray, window) -> np.ndarray:
    return np.round(apply_window(plane, window) * 255.0).astype(np.uint8)


def _covers(region: np.ndarray, plane: np.ndarray, names: dict[int, str], name: str, share: float = 0.1) -> bool:
    """Whether over ``share`` of ``region``'s pixels are structure ``name`` (in the label ``plane``)."""
    labels = [lab for lab, n in names.items() if n == name]
    return bool(np.isin(plane[region], labels).mean() > share) if region.any() else False


def _pick_slices(labels: np.ndarray, names: dict[int, str], cfg: BuildConfig, rng,
                 shown: np.ndarray) -> tuple[list[int], list[int]]:
    """Evenly spaced labelled slices and a few random unlabelled ones; ``shown`` (z,) is False where
    the windowed slice is one flat value (outside the head: the runtime refuses such an image)."""
    counts = np.stack([(labels == lab).reshape(labels.shape[0], -1).sum(1) for lab in names])  # labels × z
    labelled = np.flatnonzero((counts >= cfg.min_pixels).any(0))
    if len(labelled) > cfg.max_slices_per_volume:
        even = np.round(np.linspace(0, len(labelled) - 1, cfg.max_slices_per_volume)).astype(int)
        labelled = labelled[np.unique(even)]
    empty = np.flatnonzero(~(labels != 0).reshape(labels.shape[0], -1).any(1) & shown)
    if len(empty) > cfg.empty_slices_per_volume:
        empty = np.sort(rng.choice(empty, cfg.empty_slices_per_volume, replace=False))
    return [int(k) for k in labelled], [int(k) for k in empty]


class _CaseWriter:
    """Writes one case's PNGs and collects its records (one question each, as MeCoVQA)."""

    def __init__(self, case: CaseSpec, split: str, root: Path, cfg: BuildConfig) -> None:
        self.case, self.split, self.root, self.cfg = case, split, root, cfg
        self.rng = np.random.default_rng([cfg.seed, zlib.crc32(case.id.encode())])
        self.records: list[Record] = []
        self.images = 0

    def run(self) -> None:
        case = self.case
        image, labels_vol = read_volume(case.image, allow_2d=False), read_volume(case.label, allow_2d=False)
        check_case(image, labels_vol, case.labels, case=case.id)
        labels = np.asarray(labels_vol.array).astype(np.int64)
        try:
            window = window_for(image.array, case.modality if case.modality in ("CT", "MR") else "auto")
        except InputError as exc:
            raise InputError(f"case {case.id}: {exc}") from None
        self.vf = volume_facts(image, labels_vol, case.labels, modality=case.modality, body_region=case.body_region)
        flat = np.asarray(image.array).reshape(labels.shape[0], -1)
        shown = np.array([np.ptp(_png8(row, window)) > 0 for row in flat], dtype=bool)
        labelled, empty = _pick_slices(labels, case.labels, self.cfg, self.rng, shown)
        for k in labelled + empty:
            stem = f"{case.modality.lower()}_00--{_slug(case.dataset)}--{case.id}--z_{k:04d}"
            img_path = self.root / "images" / f"{stem}.png"
            write_png(_png8(np.asarray(image.array)[k], window), img_path)
            self.images += 1
            facts = slice_facts(image, labels, k, case.labels, modality=case.modality)
            present = tuple(f for f in facts if f.pixels >= self.cfg.min_pixels)
            absent = tuple(n for lab, n in case.labels.items() if not (labels[k] == lab).any())
            self._slice(k, stem, _rel(img_path, self.root), labels[k], present, absent)

    # ------------------------------------------------------------------------------- per slice

    def _slice(self, k: int, stem: str, image_rel: str, plane: np.ndarray,
               present: tuple[SliceLabelFacts, ...], absent: tuple[str, ...]) -> None:
        rng, n = self.rng, Counter()
        for lab in present:
            mask_rel = self._mask(plane == lab.label, f"{stem}--{_slug(lab.name)}")
            qa = T.grounding(rng, lab, self.case.modality)
            self._add(stem, k, image_rel, qa, masks=[mask_rel], n=n)
            self._grounding_with_region(stem, k, image_rel, lab, qa, mask_rel, n)
        if len(present) >= 2:
            chosen = present[:3]
            masks = [f"masks/{stem}--{_slug(lab.name)}.png" for lab in chosen]
            self._add(stem, k, image_rel, T.grounding_multi(rng, chosen), masks=masks, n=n)
        names = list(self.case.labels.values())
        for lab in present:
            for _ in range(self.cfg.r_per_label):
                self._region_question(stem, k, image_rel, lab, names, n)
        for lab in present:
            for _ in range(self.cfg.r_is_per_label):
                self._region_is_question(stem, k, image_rel, lab, names, n)
        for lab in present:
            for _ in range(self.cfg.r_is_pairs):
                self._region_is_pair(stem, k, image_rel, lab, names, plane, n)
        if present and rng.random() < 0.5:  # a region on no structure: a "no" answer
            bg = background_square(plane != 0, rng)
            if bg is not None:
                rel = self._new_region(bg, stem, n)
                self._add(stem, k, image_rel, T.region_is(rng, str(rng.choice(names)), None), region=rel, n=n,
                          extra={"region_mode": "background"})
        pool = T.complex_questions(rng, self.vf, present, absent)
        for i in rng.choice(len(pool), min(self.cfg.c_per_slice, len(pool)), replace=False):
            self._add(stem, k, image_rel, pool[int(i)], n=n)

    def _region_question(self, stem, k, image_rel, lab: SliceLabelFacts, names: list[str], n: Counter) -> None:
        rng = self.rng
        comp = lab.largest
        mode = MODES[int(rng.integers(len(MODES)))]
        others = [x for x in names if x != lab.name]
        topics = ["what", "where", "size"] + (["choice"] if others else []) + (["is"] if mode == "freeform" else [])
        topic = topics[int(rng.integers(len(topics)))]
        if topic == "what":
            qa = T.region_what(rng, lab.name)
        elif topic == "where":
            qa = T.region_where(rng, lab.name, comp)
        elif topic == "size":
            qa = T.region_size(rng, lab.name, comp)
        elif topic == "choice":
            qa = T.region_choice(rng, lab.name, str(rng.choice(others)))
        else:  # a free-form region lies inside the structure, so "is it X?" has one true answer
            asked = lab.name if (not others or rng.random() < 0.5) else str(rng.choice(others))
            qa = T.region_is(rng, asked, lab.name)
        rel = self._new_region(make_region(mode, comp.mask, comp.bbox, rng), stem, n)
        self._add(stem, k, image_rel, qa, region=rel, n=n, extra={"region_mode": mode})

    def _region_is_question(self, stem, k, image_rel, lab: SliceLabelFacts, names: list[str], n: Counter) -> None:
        # "yes" 3 times in 4: the background squares of the slice add the "no" answers (about one per two slices)
        rng, others = self.rng, [x for x in names if x != lab.name]
        asked = lab.name if (not others or rng.random() < 0.75) else str(rng.choice(others))
        rel = self._new_region(make_region("freeform", lab.largest.mask, lab.largest.bbox, rng), stem, n)
        self._add(stem, k, image_rel, T.region_is(rng, asked, lab.name), region=rel, n=n,
                  extra={"region_mode": "freeform"})

    def _region_is_pair(self, stem, k, image_rel, lab: SliceLabelFacts, names: list[str], plane: np.ndarray,
                        n: Counter) -> None:
        rng, modes = self.rng, self.cfg.r_is_modes
        mode = modes[0] if len(modes) == 1 else modes[int(rng.integers(len(modes)))]  # one mode: no draw (old sets rebuild)
        region = make_region(mode, lab.largest.mask, lab.largest.bbox, rng)
        # a box or a point square may take in another structure: its name is then no clear "no"
        others = [x for x in names if x != lab.name and not _covers(region, plane, self.case.labels, x)]
        rel = self._new_region(region, stem, n)
        self._add(stem, k, image_rel, T.region_is(rng, lab.name, lab.name), region=rel, n=n,
                  extra={"region_mode": mode, "pair": "yes"})
        if others:  # the same region, another structure's name
            self._add(stem, k, image_rel, T.region_is(rng, str(rng.choice(others)), lab.name), region=rel, n=n,
                      extra={"region_mode": mode, "pair": "no"})
            return
        bg = background_square(plane != 0, rng)  # no other name fits: the same name on no structure
        if bg is not None:
            self._add(stem, k, image_rel, T.region_is(rng, lab.name, None), region=self._new_region(bg, stem, n), n=n,
                      extra={"region_mode": "background", "pair": "no"})

    def _grounding_with_region(self, stem, k, image_rel, lab: SliceLabelFacts, qa: T.QA, mask_rel: str,
                               n: Counter) -> None:
        """``qa`` again with a region on the structure (a point, box or free-form part) after the question
        (``BuildConfig.g_region``); the mask answer is the same."""
        key = f"{self.cfg.seed}:{stem}:{lab.name}:g-region"
        if not self.cfg.g_region or zlib.crc32(key.encode()) >= self.cfg.g_region * 2**32:
            return
        rng = np.random.default_rng([self.cfg.seed, zlib.crc32(key.encode())])  # not the case's: others stay
        mode = MODES[int(rng.integers(len(MODES)))]
        region = make_region(mode, lab.largest.mask, lab.largest.bbox, rng)
        rel = self._mask(region, f"{stem}--g-{_slug(lab.name)}")
        asked = replace(qa, question=f"{qa.question.rstrip()} {{region}}")
        self._add(stem, k, image_rel, asked, masks=[mask_rel], region=rel, n=n, place_after=False,
                  extra={"region_mode": mode, "region_place": "after"})

    def _region_after(self, rid: str) -> bool:
        share = self.cfg.region_after
        return share > 0 and zlib.crc32(f"{self.cfg.seed}:{rid}".encode()) < share * 2**32

    def _new_region(self, mask: np.ndarray, stem: str, n: Counter) -> str:
        """Write a region mask under the slice's next region number; its path, relative to the dataset."""
        rel = self._mask(mask, f"{stem}--r{n['region']}")
        n["region"] += 1
        return rel

    def _mask(self, mask: np.ndarray, name: str) -> str:
        path = self.root / "masks" / f"{name}.png"
        if not path.exists():
            write_png(mask.astype(np.uint8) * 255, path)
        return _rel(path, self.root)

    def _add(self, stem, k, image_rel, qa: T.QA, *, masks=(), region=None, n: Counter, extra=None,
             place_after: bool = True) -> None:
        """One record; ``place_after`` False: the question already places its region (not drawn again)."""
        rid = f"{stem}--{qa.question_type}{n[qa.question_type]}"
        n[qa.question_type] += 1
        question = qa.question
        if region and place_after and self._region_after(rid):
            question = T.region_after_question(question)
            extra = {**(extra or {}), "region_place": "after"}
        question = question.replace("{region}", f"<region>{region}</region>") if region else question
        answer = qa.answer
        if masks:
            parts = answer.split(SEG)
            if len(parts) - 1 != len(masks):
                raise AssertionError(f"template {qa.answer!r} has {len(parts) - 1} <SEG> for {len(masks)} masks")
            answer = parts[0] + "".join(f"{SEG}<mask>{m}</mask>{p}" for m, p in zip(masks, parts[1:]))
        self.records.append(Record(rid, image_rel, (Turn(question, answer),), {
            "modality": self.case.modality, "body_region": self.case.body_region, "question_type": qa.question_type,
            "answer_type": qa.answer_type, "topic": qa.topic, "split": self.split, "case": self.case.id,
            "dataset": self.case.dataset, "axis": 0, "slice": k, "targets": list(qa.targets),
            "facts": qa.facts, **(extra or {})}))


def build_dataset(cases: list[CaseSpec], out_dir: str | Path, config: BuildConfig = BuildConfig(), *,
                  overwrite: bool = False, progress=None) -> BuildReport:
    """Write the dataset for ``cases`` into ``out_dir``; ``progress(case_id)`` is called per case."""
    t0 = time.perf_counter()
    root = Path(out_dir)
    if (root / "manifest.json").exists() and not overwrite:
        raise InputError(f"{root} already holds a dataset (manifest.json): pick another folder or --overwrite")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError(f"case ids must be unique, got {ids}")
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for old in (root / sub).glob("*.png") if overwrite else ():
            old.unlink()
    splits = assign_splits(cases, config.fractions, config.seed)
    records: dict[str, list[Record]] = {s: [] for s in SPLITS}
    counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
    manifest_cases = []
    for case in cases:
        if progress:
            progress(case.id)
        writer = _CaseWriter(case, splits[case.id], root, config)
        writer.run()
        split = splits[case.id]
        records[split] += writer.records
        counts[split]["images"] += writer.images
        for r in writer.records:
            counts[split][r.question_type] += 1
            counts[split][r.answer_type] += 1
            counts[split]["records"] += 1
        manifest_cases.append({
            "id": case.id, "split": split, "modality": case.modality, "body_region": case.body_region,
            "dataset": case.dataset, "image": str(case.image), "label": str(case.label),
            "labels": {str(k): v for k, v in case.labels.items()}, "plane": writer.vf.plane,
            "facts": [{k: v for k, v in asdict(m).items() if k in ("label", "name", "voxels", "volume_ml",
                                                                    "largest_diameter_mm", "laterality")}
                      for m in writer.vf.labels],
            "records": len(writer.records)})
    for split in SPLITS:
        write_dataset(records[split], root / f"{split}.json")
    report = BuildReport(root, {s: tuple(c for c in ids if splits[c] == s) for s in SPLITS},
                         {s: {k: int(counts[s][k]) for k in ("G", "R", "C", "open", "closed", "records", "images")}
                          for s in SPLITS}, time.perf_counter() - t0)
    (root / "manifest.json").write_text(json.dumps({
        "format": "MeCoVQA (LLaVA) JSON, one question per record", "config": asdict(config),
        "cases": manifest_cases, "counts": report.counts, "seconds": round(report.seconds, 2)}, indent=1))
    return report
