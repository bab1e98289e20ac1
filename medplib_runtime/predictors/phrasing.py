"""The common ways to ask for a mask → one canonical grounding question (ours).

Why: the shipped glue's answer to "Segment the lesion." and to "Please segment the tumor in this
image." differed in routing and in mask (on a held-out chest CT only the first found the tumour;
docs/grounding.md). The model reads one canonical question — "Segment the lesion.", its most
trained template — for routing and for the answer; the user's own text is what the chat and the
CLI show. Only requests this module recognises are rewritten; everything else (presence, size,
side, region questions) is read as written.

The lesion-like words (lesion, tumour/tumor, nodule, mass, growth) all become "lesion": a radiologist
asking for "the nodule" or "the mass" on a slice means the same finding, and the glue learnt "lesion"
on the most varied volumes. Other structures ("cyst", "grey matter") keep their name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CANONICAL_TEMPLATE = "Segment the {name}."
LESION_WORDS = ("lesion", "lesions", "tumour", "tumor", "tumours", "tumors", "nodule", "nodules", "mass",
                "masses", "growth")
CANONICAL_LESION = "lesion"

_LEAD = r"(?:(?:please|kindly)\s+)?(?:(?:can|could|would|will)\s+you\s+(?:please\s+)?)?(?:please\s+)?"
_VERB = (r"(?:show\s+(?:me\s+)?where|segment|outline|delineate|highlight|locate|find|mark|show(?:\s+me)?|"
         r"where\s+is|where's|give\s+me\s+(?:a\s+)?(?:mask|segmentation)\s+(?:of|for)|"
         r"draw\s+(?:a\s+)?(?:mask|outline|contour)\s+(?:of|for|around))")
_ARTICLE = r"(?:(?:the|a|an|any)\s+)?"
_WHAT = r"(?P<what>[a-z][a-z\-]*(?:\s+[a-z][a-z\-]*){0,2}?)"
_PLACE = r"(?:\s+(?:in|on|of)\s+(?:this|the)\s+(?:(?:ct|mr|mri|axial)\s+)?(?:image|slice|scan|picture))?"
_TAIL = (r"(?:\s+is)?(?:\s+(?:please|for\s+me))?(?:\s+and\s+segment\s+it)?"
         r"(?:[.?!]?\s*please\s+output\s+the\s+segmentation\s+mask)?")
_ASK = re.compile(rf"^\s*{_LEAD}{_VERB}\s+{_ARTICLE}{_WHAT}{_PLACE}{_TAIL}\s*[.?!]*\s*$", re.IGNORECASE)
# words that make it another kind of question, even in a grounding frame ("Where is the lesion located?")
_NOT_GROUNDING = re.compile(r"<region>|\bregion\b|\blocated\b|\bside\b|\bhow\b|\bwhich\b|\bwhat\b|\bstructure\b",
                            re.IGNORECASE)


@dataclass(frozen=True)
class GroundingAsk:
    """A recognised request for a mask: the structure in the user's words and the question the model reads."""

    structure: str  # "tumor" (as typed, lower case)
    canonical: str  # "Segment the lesion."


def canonical_structure(words: str) -> str:
    """The structure name the model is asked about: lesion-like words → "lesion", others as written."""
    name = " ".join(words.lower().split())
    return CANONICAL_LESION if name in LESION_WORDS else name


def grounding_ask(question: str) -> GroundingAsk | None:
    """'Please segment the tumor in this image.' → GroundingAsk('tumor', 'Segment the lesion.'); None when the
    question is not one of the recognised ways to ask for a mask (it is then read as written)."""
    if _NOT_GROUNDING.search(question):
        return None
    found = _ASK.match(question)
    if not found:
        return None
    what = " ".join(found.group("what").lower().split())
    if what in ("it", "this", "that", "me", "mask", "segmentation"):
        return None
    return GroundingAsk(structure=what, canonical=CANONICAL_TEMPLATE.format(name=canonical_structure(what)))


__all__ = ["CANONICAL_LESION", "CANONICAL_TEMPLATE", "GroundingAsk", "LESION_WORDS", "canonical_structure",
           "grounding_ask"]
