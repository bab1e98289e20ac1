"""The chat transcript as HTML for the dock (no Qt): each <SEG> is a chip that adds or shows its mask.

A chip is a link ``mask:ENTRY:MASK``; on a volume a second chip ``mask3d:ENTRY:MASK`` ("→ 3D") propagates it
through the volume. The dock handles the clicks. Routing and timing are one quiet line.
"""

from __future__ import annotations

import html
import re

from .chat_state import NOTHING_TO_MEASURE, SEG, ChatEntry, ChatHistory

CHIP_PREFIX = "mask:"
VOLUME_CHIP_PREFIX = "mask3d:"
# "in 3D", "through the (whole) volume", "in all slices", "whole volume": a request to follow the mask through the
# volume. The model is asked the plain 2D request (it was trained on single slices); the chat propagates.
_THREE_D = re.compile(r"\s*\b(?:(?:in|as)\s+(?:a\s+)?)?3-?d\b"
                      r"|\s*\b(?:through|across|in|over)\s+(?:the\s+)?(?:whole\s+|entire\s+)?volume\b"
                      r"|\s*\b(?:in|on|across|through)\s+(?:all|every)\s+(?:the\s+)?slices?\b"
                      r"|\s*\b(?:the\s+)?(?:whole|entire)\s+volume\b", re.I)
_ASKED = re.compile(r"\b(?:segment|show|outline|find|mark|delineate|highlight|locate|where\s+is|where's)\s+"
                    r"(?:me\s+)?(?:the\s+|a\s+|an\s+)?(?P<what>[a-z][a-z \-]{0,40}?)"
                    r"(?:\s+(?:in|on|of)\s+(?:this|the)\s+(?:image|slice|scan)|\s+in\s+3d)?\s*[.?!]*$", re.I)

_REQUEST = re.compile(r"^\s*(?:please\s+)?(?:segment|outline|delineate|mark|highlight|locate|draw)\b", re.I)


def structure_asked(question: str) -> str:
    """'Please segment the lesion in this image.' → 'lesion'; '' if the question names none."""
    found = _ASKED.search(question.strip())
    return found.group("what").strip() if found else ""


def without_3d(question: str) -> tuple[str, bool]:
    """'Segment the lesion in 3D.' → ('Segment the lesion.', True): the request as the model reads it, and
    whether it asked for the whole volume (only a request for a mask counts: "How big is it in 3D?" is not)."""
    plain = _THREE_D.sub("", question)
    if plain == question:
        return question, False
    plain = re.sub(r"\s+([.?!,])", r"\1", " ".join(plain.split())).strip().rstrip(",;:").strip()
    plain = re.sub(r",([.?!])$", r"\1", plain[:1].upper() + plain[1:])
    return (plain, True) if plain and (structure_asked(plain) or _REQUEST.match(plain)) else (question, False)


def mask_name(entry: ChatEntry, mask: int) -> str:
    what = structure_asked(without_3d(entry.question)[0]) or "chat mask"
    return what if len(entry.masks) == 1 else f"{what} {mask + 1}"


def chip_link(entry_index: int, mask: int) -> str:
    return f"{CHIP_PREFIX}{entry_index}:{mask}"


def parse_chip(link: str, prefix: str = CHIP_PREFIX) -> tuple[int, int] | None:
    """``mask:E:M`` → (E, M); None for another link (``prefix``: ``VOLUME_CHIP_PREFIX`` for the 3D chip)."""
    if not link.startswith(prefix):
        return None
    entry, _, mask = link[len(prefix):].partition(":")
    return (int(entry), int(mask)) if entry.isdigit() and mask.isdigit() else None


def _chip(history: ChatHistory, image: str, i: int, entry: ChatEntry, m: int, volume: bool = False) -> str:
    placed = history.placed(image, i, m)
    label = (f"mask {m + 1} → layer {placed.layer!r}, label {placed.label} ({placed.name})" if placed
             else f"mask {m + 1} → add as {mask_name(entry, m)!r}")
    style = "background:#3a4a6a;color:#ffffff;" if placed else "background:#2a5a3a;color:#ffffff;"
    chip = (f"<a href='{chip_link(i, m)}' style='{style}text-decoration:none'>"
            f"&nbsp;{html.escape(label)}&nbsp;</a>")
    return chip + (" " + _volume_chip(history, image, i, m) if volume else "")


def _volume_chip(history: ChatHistory, image: str, i: int, m: int) -> str:
    """'→ 3D' (propagate it through the volume), or where its propagation reaches once done."""
    done = history.volume(image, i, m)
    label = f"3D: slices {done.slices[0]}–{done.slices[1]}" if done else "→ 3D"
    style = "background:#3a4a6a;color:#ffffff;" if done else "background:#5a3a6a;color:#ffffff;"
    return (f"<a href='{VOLUME_CHIP_PREFIX}{i}:{m}' style='{style}text-decoration:none'>"
            f"&nbsp;{html.escape(label)}&nbsp;</a>")


def answer_html(history: ChatHistory, image: str, i: int, entry: ChatEntry, volume: bool = False) -> str:
    """The answer's text with each <SEG> replaced by its chip(s), in order (``volume``: the image has slices to
    propagate through, so each mask also gets its "→ 3D" chip)."""
    parts = entry.answer.split(SEG)
    out = html.escape(parts[0])
    for m, rest in enumerate(parts[1:]):
        out += (_chip(history, image, i, entry, m, volume) if m < len(entry.masks) else "") + html.escape(rest)
    for m in range(len(parts) - 1, len(entry.masks)):  # masks the text did not point at
        out += " " + _chip(history, image, i, entry, m, volume)
    return out.strip() or "<i>(no answer text)</i>"


def transcript_html(history: ChatHistory, image: str, volume: bool = False) -> str:
    """The transcript of ``image``; ``volume``: it is a volume (3D chips are offered)."""
    parts = []
    for i, (e, notes) in enumerate(zip(history.entries(image), history.new_notes(image))):
        region = "" if e.region_kind == "none" else f", region: {e.region_kind}"
        parts.append(f"<p><b>You</b> <small style='color:#909090'>(slice {e.slice.index}{region})</small><br>"
                     f"{html.escape(e.question)}</p>")
        if e.measured:
            colour = "#a0a0a0" if e.measured.startswith(NOTHING_TO_MEASURE) else "#60c060"
            parts.append(f"<p><b>Measured</b><br><span style='color:{colour}'>{html.escape(e.measured)}</span></p>")
        parts.append(f"<p><b>MedPLIB</b><br>{answer_html(history, image, i, e, volume)}")
        parts.append(f"<br><small style='color:#808080'>{html.escape(e.routing)} · {e.seconds:.1f} s</small>")
        for note in notes:  # each note once per transcript
            parts.append(f"<br><small style='color:#a0a0e0'>{html.escape(note)}</small>")
        for m in range(len(e.masks)):
            if (done := history.volume(image, i, m)) is not None:
                colour = "#e0a030" if done.unsure else "#a0a0e0"
                parts.append(f"<br><small style='color:{colour}'>mask {m + 1} {html.escape(done.describe())}</small>")
        if history.remark(image, i):
            parts.append(f"<br><small style='color:#a0a0e0'>{html.escape(history.remark(image, i))}</small>")
        if e.untrained:
            parts.append("<br><span style='color:#e0a030'>untrained parts (" + ", ".join(e.untrained)
                         + "): this answer is not grounded in the image yet</span>")
        parts.append("</p>")
    return "".join(parts)
