"""The chat transcript as HTML for the dock (no Qt): each <SEG> is a chip that adds or shows its mask.

A chip is a link ``mask:ENTRY:MASK``; the dock handles the click. Routing and timing are one quiet line.
"""

from __future__ import annotations

import html
import re

from .chat_state import SEG, ChatEntry, ChatHistory

CHIP_PREFIX = "mask:"
_ASKED = re.compile(r"\b(?:segment|show|outline|find|mark|delineate|highlight|locate|where\s+is|where's)\s+"
                    r"(?:me\s+)?(?:the\s+|a\s+|an\s+)?(?P<what>[a-z][a-z \-]{0,40}?)"
                    r"(?:\s+(?:in|on|of)\s+(?:this|the)\s+(?:image|slice|scan)|\s+in\s+3d)?\s*[.?!]*$", re.I)


def structure_asked(question: str) -> str:
    """'Please segment the lesion in this image.' → 'lesion'; '' if the question names none."""
    found = _ASKED.search(question.strip())
    return found.group("what").strip() if found else ""


def mask_name(entry: ChatEntry, mask: int) -> str:
    what = structure_asked(entry.question) or "chat mask"
    return what if len(entry.masks) == 1 else f"{what} {mask + 1}"


def chip_link(entry_index: int, mask: int) -> str:
    return f"{CHIP_PREFIX}{entry_index}:{mask}"


def parse_chip(link: str) -> tuple[int, int] | None:
    if not link.startswith(CHIP_PREFIX):
        return None
    entry, _, mask = link[len(CHIP_PREFIX):].partition(":")
    return (int(entry), int(mask)) if entry.isdigit() and mask.isdigit() else None


def _chip(history: ChatHistory, image: str, i: int, entry: ChatEntry, m: int) -> str:
    placed = history.placed(image, i, m)
    label = (f"mask {m + 1} → layer {placed.layer!r}, label {placed.label} ({placed.name})" if placed
             else f"mask {m + 1} → add as {mask_name(entry, m)!r}")
    style = "background:#3a4a6a;color:#ffffff;" if placed else "background:#2a5a3a;color:#ffffff;"
    return (f"<a href='{chip_link(i, m)}' style='{style}text-decoration:none'>"
            f"&nbsp;{html.escape(label)}&nbsp;</a>")


def answer_html(history: ChatHistory, image: str, i: int, entry: ChatEntry) -> str:
    """The answer's text with each <SEG> replaced by its chip, in order."""
    parts = entry.answer.split(SEG)
    out = html.escape(parts[0])
    for m, rest in enumerate(parts[1:]):
        out += (_chip(history, image, i, entry, m) if m < len(entry.masks) else "") + html.escape(rest)
    for m in range(len(parts) - 1, len(entry.masks)):  # masks the text did not point at
        out += " " + _chip(history, image, i, entry, m)
    return out.strip() or "<i>(no answer text)</i>"


def transcript_html(history: ChatHistory, image: str) -> str:
    parts = []
    for i, (e, notes) in enumerate(zip(history.entries(image), history.new_notes(image))):
        region = "" if e.region_kind == "none" else f", region: {e.region_kind}"
        parts.append(f"<p><b>You</b> <small style='color:#909090'>(slice {e.slice.index}{region})</small><br>"
                     f"{html.escape(e.question)}</p>")
        if e.measured:
            parts.append(f"<p><b>Measured</b><br><span style='color:#60c060'>{html.escape(e.measured)}</span></p>")
        parts.append(f"<p><b>MedPLIB</b><br>{answer_html(history, image, i, e)}")
        parts.append(f"<br><small style='color:#808080'>{html.escape(e.routing)} · {e.seconds:.1f} s</small>")
        for note in notes:  # each note once per transcript
            parts.append(f"<br><small style='color:#a0a0e0'>{html.escape(note)}</small>")
        if e.untrained:
            parts.append("<br><span style='color:#e0a030'>untrained parts (" + ", ".join(e.untrained)
                         + "): this answer is not grounded in the image yet</span>")
        parts.append("</p>")
    return "".join(parts)
