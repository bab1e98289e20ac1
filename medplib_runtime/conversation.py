"""MedPLIB's conversation template (LLaVA v1), the same for training and inference.

``{system} USER: <im_start><image>…<image><im_end>\\n{question} ASSISTANT: {answer}</s>USER: ...``
(turns separated by " " and "</s>"). A region prompt is written ``<region><region_feat></region>``
where the question says ``<region>``, or appended to the question.
"""

from __future__ import annotations

import re

from .presets import IMAGE_PLACEHOLDER, REGION_PLACEHOLDER
from .schemas import Turn

SEP, SEP2 = " ", "</s>"
REGION_SPAN = f"<region>{REGION_PLACEHOLDER}</region>"


def readable_answer(text: str) -> str:
    """An answer for people: each ``<SEG>`` written as ``[mask N]``, the N-th returned mask (the raw token
    stays in the model's text, in MeCoVQA records and in eval predictions)."""
    parts = text.split("<SEG>")
    return "".join(part + (f"[mask {i}]" if i < len(parts) else "") for i, part in enumerate(parts, start=1))


def region_question(question: str) -> str:
    """Put the region token where the user wrote ``<region>``, else after the question."""
    if "<region>" in question:
        return question.replace("<region>", REGION_SPAN, 1)
    return f"{question.rstrip()} {REGION_SPAN}"


def question_for_routing(question: str, region: bool) -> tuple[str, bool]:
    """(question, region) as routers that skip a region placed after the question read it: a region
    the chat appends, or a ``<region>`` written last, is left out; one inside the sentence stays.
    Why: routers on the prompt's last position, which sits right after such a region, read "a region
    question" and sent "Segment the lesion." with a box to the vision-language expert (docs/training.md)."""
    if not region or "<region>" not in question:
        return question, False
    head = question.rstrip()
    if head.endswith("<region>") and head.count("<region>") == 1:
        return head[: -len("<region>")].rstrip(), False
    return question, True


def without_region(question: str) -> str:
    """The question for a reader that takes no region token: a written ``<region>`` becomes "the region"."""
    return question.replace("<region>", "the region")


def build_prompt(question: str, *, system: str, n_image_tokens: int, history: tuple[Turn, ...] = (),
                 region: bool = False) -> str:
    """The full prompt text ending in ``ASSISTANT:``; the image goes with the first user turn."""
    q = region_question(question) if region else question
    if not history:
        q = _image_text(n_image_tokens) + q
    return history_text(system=system, n_image_tokens=n_image_tokens, history=history) + f"USER: {q}{SEP}ASSISTANT:"


def history_text(*, system: str, n_image_tokens: int, history: tuple[Turn, ...] = ()) -> str:
    """The prompt text before the current turn's ``USER:`` (the system line and the earlier turns)."""
    text = system + SEP
    for i, turn in enumerate(history):
        q = (_image_text(n_image_tokens) + turn.question) if i == 0 else turn.question
        text += f"USER: {q}{SEP}ASSISTANT: {turn.answer}{SEP2}"
    return text


def _image_text(n_image_tokens: int) -> str:
    return f"<im_start>{IMAGE_PLACEHOLDER * n_image_tokens}<im_end>\n"


# "An axial CT slice of the phantom." on a real MR: the glue learnt the body-region answer on synthetic
# phantoms (whose body region the data builder calls "phantom") and says it on real images. A runtime is
# only ever given real images by its users (phantoms live in our training and test data), so the word is
# a fact about the training data, never about the image: the phrase is removed and the answer noted.
_PHANTOM_PHRASE = re.compile(r"\s+(?:of|in|from|on)\s+(?:the|a|this)\s+phantom\b", re.IGNORECASE)
_PHANTOM_WORD = re.compile(r"\b(?:the|a|this)\s+phantom\b", re.IGNORECASE)
PHANTOM_NOTE = ("the model's answer spoke of a \"phantom\" (a word from its synthetic training slices, not about "
                "this image): removed")


def without_phantom(text: str) -> tuple[str, bool]:
    """``text`` without the training data's "phantom" ("… slice of the phantom." → "… slice."; "the phantom"
    → "the image"), and whether anything was removed."""
    if "phantom" not in text.lower():
        return text, False
    out = _PHANTOM_WORD.sub("the image", _PHANTOM_PHRASE.sub("", text))
    return out, True
