"""The chat transcript per image (no Qt): what was asked, answered, about which region, with which masks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medplib_runtime.schemas import AskResult, RoutingStats, SliceRef, Turn


@dataclass(frozen=True)
class ChatEntry:
    question: str
    answer: str
    slice: SliceRef
    region_kind: str  # "none", "box", "points", "mask", ...
    masks: tuple[np.ndarray, ...] = field(compare=False)
    routing: str  # e.g. "grounding 40% · vision-language 60%"
    untrained: tuple[str, ...] = ()
    measured: str = ""  # a measured answer (numbers from a labels layer), if the question asked a quantity
    notes: tuple[str, ...] = ()  # the runtime's notes on this answer (e.g. the region was not read)


def routing_summary(stats: RoutingStats | None) -> str:
    if stats is None or not stats.per_token:
        return "routing: n/a"
    shares = stats.overall()
    return " · ".join(f"{name} {share:.0%}" for name, share in zip(stats.expert_names, shares))


class ChatHistory:
    """Transcripts keyed by image (layer name); earlier turns go back to the model as history."""

    def __init__(self) -> None:
        self._by_image: dict[str, list[ChatEntry]] = {}

    def add(self, image: str, question: str, result: AskResult, ref: SliceRef, region_kind: str,
            measured: str = "") -> ChatEntry:
        entry = ChatEntry(question, result.text, ref, region_kind, tuple(result.masks),
                          routing_summary(result.routing), tuple(result.untrained_parts), measured,
                          tuple(result.notes))
        self._by_image.setdefault(image, []).append(entry)
        return entry

    def entries(self, image: str) -> list[ChatEntry]:
        return list(self._by_image.get(image, ()))

    def turns(self, image: str) -> tuple[Turn, ...]:
        # the measured statement goes back as the answer: the model should build on the right number
        return tuple(Turn(e.question, e.measured.split(" [measured from")[0] if e.measured else e.answer)
                     for e in self._by_image.get(image, ()))

    def new_notes(self, image: str) -> list[tuple[str, ...]]:
        """Per entry, its notes that no earlier entry of the transcript carried: the same note (e.g. "answered
        on its own") is said once, under the first answer it applies to, not under every answer after it."""
        seen: set[str] = set()
        out = []
        for e in self.entries(image):
            out.append(tuple(n for n in e.notes if n not in seen))
            seen.update(e.notes)
        return out

    def clear(self, image: str) -> None:
        self._by_image.pop(image, None)

    def as_text(self, image: str) -> str:
        lines = []
        for e, notes in zip(self.entries(image), self.new_notes(image)):
            lines.append(f"Q (slice {e.slice.index}, region {e.region_kind}): {e.question}")
            if e.measured:
                lines.append(f"Measured: {e.measured}")
            lines.append(f"A: {e.answer or '(no text)'}  [{len(e.masks)} mask(s); {e.routing}]")
            lines.extend(f"Note: {n}" for n in notes)
        return "\n".join(lines)
