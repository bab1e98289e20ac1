"""Question/answer templates for MeCoVQA's three kinds, filled only with exact facts.

* G (grounding): "segment the X" → an answer with one ``<SEG>`` per object.
* R (region VQA): a question about ``{region}`` (where the ``<region>PATH</region>`` tag goes):
  what it is, where it is, how large it is.
* C (complex VQA): modality, body region, plane, structures present, counts, laterality,
  sizes (mm², mm, mL), intensity (HU, CT only).

``answer_type`` follows MedPLIB's eval: ``closed`` (yes/no and pick-one-of-a-few: scored by
exact match after normalisation) or ``open`` (scored by word-bag precision/recall/F1). Closed
answers are therefore short canonical strings ("yes", "left", "axial"). Numbers are written
with fixed decimals (area and diameter 0.1, volume 0.01 mL, HU 1) and the exact values travel
in the record's ``facts`` field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .facts import Component, SliceLabelFacts, VolumeFacts

MODALITY_WORDS = {"CT": "CT", "MR": "MRI", "MRI": "MRI", "PET": "PET", "US": "ultrasound", "XR": "X-ray"}


@dataclass(frozen=True)
class QA:
    """One question with its answer; ``facts`` are the exact numbers/strings the answer states."""

    question_type: str  # "G", "R" or "C"
    answer_type: str  # "open" or "closed"
    topic: str  # what is asked: "segment", "what", "where", "size", "modality", ...
    question: str  # may hold "{region}"
    answer: str  # may hold "<SEG>" (one per entry of ``targets``)
    targets: tuple[str, ...] = ()  # label names, in <SEG> order (G only)
    facts: dict = field(default_factory=dict, compare=False)


def region_after_question(question: str) -> str:
    """An R question as the chat sends it when the user writes no ``<region>``: the region said in words
    ("the region"), its token after the question (``conversation.region_question``)."""
    q = question.replace("the region {region}", "the region").replace("this {region}", "this region")
    return f"{q.replace('{region}', 'the region').rstrip()} {{region}}"


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0].upper() in "AEIOU" or word in ("MRI", "X-ray") else "a"


def modality_word(modality: str) -> str:
    return MODALITY_WORDS.get(modality.upper(), modality)


# ------------------------------------------------------------------------------------------ G

# Many phrasings per request, so a chat user's own wording is in distribution (a model trained on
# one phrasing per fact answers anything else with "<SEG>.").
_G_Q = ("Segment the {n}.", "Please segment the {n} in this image.", "Can you segment the {n}?",
        "Where is the {n}? Please output the segmentation mask.", "Show me the {n}.",
        "Outline the {n} on this {m} slice.", "Could you highlight the {n}?", "Find the {n}.",
        "Where is the {n}?", "Mark the {n} in this {m} image.", "Please delineate the {n}.",
        "Give me a mask of the {n}.", "Locate the {n} and segment it.", "segment {n}",
        "I need the {n} outlined on this slice.", "Can you show where the {n} is?")
_G_A = ("Sure, it is <SEG>.", "Sure, the segmentation result is <SEG>.", "Here is the {n}: <SEG>.", "<SEG>.",
        "The {n} is <SEG>.")


def grounding(rng, label: SliceLabelFacts, modality: str) -> QA:
    n, m = label.name, modality_word(modality)
    return QA("G", "open", "segment", _pick(rng, _G_Q).format(n=n, m=m), _pick(rng, _G_A).format(n=n), (n,),
              {"pixels": label.pixels})


def grounding_multi(rng, labels: tuple[SliceLabelFacts, ...]) -> QA:
    names = [lab.name for lab in labels]
    listed = ", ".join(f"the {n}" for n in names[:-1]) + f" and the {names[-1]}"
    q = _pick(rng, ("Segment {l}.", "Please segment {l} in this image.", "Show me {l}.")).format(l=listed)
    a = "Sure, " + ", ".join(f"the {n} is <SEG>" for n in names[:-1]) + f" and the {names[-1]} is <SEG>."
    return QA("G", "open", "segment_multi", q, a, tuple(names), {"pixels": [lab.pixels for lab in labels]})


# ------------------------------------------------------------------------------------------ R

_R_WHAT = ("What is the structure in {region}?", "What does the region {region} show?",
           "Which structure is marked by {region}?", "Identify the structure in {region}.",
           "What is this {region}?", "What is in {region}?", "Name the structure in {region}.",
           "What have I marked here: {region}?", "Can you tell what {region} contains?")
_R_WHAT_A = ("The {n}.", "It is the {n}.", "This region shows the {n}.", "{n}")
_R_WHERE = ("Where is the structure in {region} located?", "On which side of the patient is {region}?",
            "Which side is {region} on?", "Where is {region}?")
_R_SIZE = ("How large is the structure in {region}?", "What is the size of the structure in {region}?",
           "How big is {region}?", "Measure the structure in {region}.")


def region_what(rng, name: str) -> QA:
    return QA("R", "open", "what", _pick(rng, _R_WHAT), _pick(rng, _R_WHAT_A).format(n=name), facts={"name": name})


def region_is(rng, asked: str, truth: str | None) -> QA:
    """Closed: is the marked region (part of) ``asked``? ``truth`` None = background region."""
    q = _pick(rng, ("Is the region {region} part of the {n}?", "Does {region} mark the {n}?",
                    "Is {region} the {n}?", "Is the {n} inside {region}?")).replace("{n}", asked)
    return QA("R", "closed", "is", q, "yes" if truth == asked else "no", facts={"asked": asked, "truth": truth})


def region_choice(rng, truth: str, other: str) -> QA:
    a, b = (truth, other) if rng.random() < 0.5 else (other, truth)
    return QA("R", "closed", "choice", f"Is the structure in {{region}} the {a} or the {b}?", truth,
              facts={"name": truth})


def region_where(rng, name: str, comp: Component) -> QA:
    side = comp.laterality
    answer = "On the midline." if side == "midline" else f"On the patient's {side} side."
    return QA("R", "open", "where", _pick(rng, _R_WHERE), answer, facts={"name": name, "laterality": side})


def region_size(rng, name: str, comp: Component) -> QA:
    a = (f"The {name} measures {comp.area_mm2:.1f} mm² on this slice, with a largest diameter of "
         f"{comp.diameter_mm:.1f} mm.")
    return QA("R", "open", "size", _pick(rng, _R_SIZE), a,
              facts={"name": name, "area_mm2": comp.area_mm2, "diameter_mm": comp.diameter_mm, "pixels": comp.pixels})


# ------------------------------------------------------------------------------------------ C

def complex_questions(rng, vf: VolumeFacts, present: tuple[SliceLabelFacts, ...], absent: tuple[str, ...]) -> list[QA]:
    """Every C question this slice supports (the builder samples from them)."""
    mod = modality_word(vf.modality)
    asked = _pick(rng, (mod, "MRI" if mod == "CT" else "CT"))
    out = [
        QA("C", "open", "modality", _pick(rng, ("What imaging modality is used?", "What kind of scan is this?",
                                                 "Which modality was used to acquire this image?",
                                                 "What type of image is this?", "Is this a CT or an MRI?")), mod,
           facts={"modality": vf.modality}),
        QA("C", "closed", "modality", _pick(rng, ("Is this {a} {x} image?", "Was this acquired with {x}?",
                                                   "Is this slice from {a} {x} scan?")).format(a=_article(asked),
                                                                                             x=asked),
           "yes" if asked == mod else "no",
           facts={"asked": asked, "modality": mod}),
        QA("C", "open", "body_region", _pick(rng, ("Which part of the body is shown?",
                                                    "Which body region does this image show?",
                                                    "What body part is this?", "Which organ or region is imaged?")),
           vf.body_region,
           facts={"body_region": vf.body_region}),
        QA("C", "closed", "plane", _pick(rng, ("Is this an axial, coronal or sagittal slice?",
                                                "In which plane is this slice?", "What is the slice orientation?")),
           vf.plane, facts={"plane": vf.plane}),
        describe(rng, vf, present),
    ]
    if present:
        names = ", ".join(lab.name for lab in present)
        out.append(QA("C", "open", "structures", _pick(rng, ("Which labelled structures are visible on this slice?",
                                                              "What structures are present in this image?",
                                                              "What can you see on this slice?",
                                                              "Which findings are on this slice?")),
                      names, facts={"names": [lab.name for lab in present]}))
    for lab in present:
        out += _label_questions(rng, vf, lab)
    for name in absent:
        out.append(QA("C", "closed", "presence", _pick(rng, _PRESENCE).format(n=name), "no", facts={"name": name}))
    return out


_PRESENCE = ("Is there a {n} on this slice?", "Does this slice show a {n}?", "Can you see a {n} in this image?",
             "Is a {n} visible here?")


def describe(rng, vf: VolumeFacts, present: tuple[SliceLabelFacts, ...]) -> QA:
    """Open: a one-sentence description from the header and the labels ("What is shown in this image?")."""
    mod = modality_word(vf.modality)
    names = [lab.name for lab in present]
    shows = (" showing the " + ", the ".join(names[:-1]) + (" and the " if len(names) > 1 else "") + names[-1]
             if names else " with no labelled structure")
    answer = f"{_article(vf.plane).capitalize()} {vf.plane} {mod} slice of the {vf.body_region}{shows}."
    q = _pick(rng, ("What is shown in this image?", "Describe this image.", "What do you see?",
                    "Can you describe this slice?", "What is this?"))
    return QA("C", "open", "describe", q, answer, facts={"modality": vf.modality, "plane": vf.plane,
                                                         "body_region": vf.body_region, "names": names})


def _label_questions(rng, vf: VolumeFacts, lab: SliceLabelFacts) -> list[QA]:
    n = lab.name
    side = lab.laterality
    qs = [
        QA("C", "closed", "presence", _pick(rng, _PRESENCE).format(n=n), "yes", facts={"name": n}),
        QA("C", "open", "count", _pick(rng, (f"How many separate {n} regions are visible on this slice?",
                                             f"How many {n} regions are there on this slice?")),
           str(len(lab.components)), facts={"name": n, "components": len(lab.components)}),
        QA("C", "closed", "laterality", _pick(rng, (f"On which side of the patient is the {n} on this slice?",
                                                     f"Is the {n} on the patient's left or right side?",
                                                     f"Which side is the {n} on?")),
           side, facts={"name": n, "laterality": side}),
        QA("C", "open", "area", _pick(rng, (f"What is the area of the {n} on this slice?",
                                            f"How large is the {n} on this slice?")), f"{lab.area_mm2:.1f} mm²",
           facts={"name": n, "pixels": lab.pixels, "area_mm2": lab.area_mm2}),
        QA("C", "open", "diameter", _pick(rng, (f"What is the largest diameter of the {n} on this slice?",
                                                f"How wide is the {n} at most on this slice?")),
           f"{lab.diameter_mm:.1f} mm", facts={"name": n, "diameter_mm": lab.diameter_mm}),
    ]
    whole = vf.by_name(n)
    qs.append(QA("C", "open", "volume", _pick(rng, (f"What is the volume of the {n} in the whole scan?",
                                                    f"How many mL is the {n} in the whole scan?")),
                 f"{whole.volume_ml:.2f} mL", facts={"name": n, "voxels": whole.voxels, "volume_ml": whole.volume_ml,
                                                    "scope": "volume"}))
    if lab.intensity_unit == "HU":
        qs.append(QA("C", "open", "intensity", f"What is the mean attenuation of the {n} on this slice?",
                     f"{lab.intensity_mean:.0f} HU", facts={"name": n, "mean_hu": lab.intensity_mean,
                                                           "std_hu": lab.intensity_std}))
    return qs
