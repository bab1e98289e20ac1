"""The chat transcript per image (no Qt): what was asked, answered, about which region, with which masks,
where each mask was placed once the user added it, and what its propagation through the volume gave."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medplib_runtime.schemas import AskResult, RoutingStats, SliceRef, Turn

SEG = "<SEG>"
NOTHING_TO_MEASURE = "no mask to measure yet: add one or pick a labels layer under 'measure'"


@dataclass(frozen=True)
class ChatEntry:
    question: str
    answer: str  # the model's text; each <SEG> stands for the mask of the same order
    slice: SliceRef
    region_kind: str  # "none", "box", "points", "mask", ...
    masks: tuple[np.ndarray, ...] = field(compare=False)
    routing: str  # e.g. "grounding 100%"
    untrained: tuple[str, ...] = ()
    measured: str = ""  # a measured answer (numbers from a labels layer), if the question asked a quantity
    notes: tuple[str, ...] = ()  # the runtime's notes on this answer (e.g. the region was not read)
    seconds: float = 0.0  # how long the answer took


@dataclass(frozen=True)
class PlacedMask:
    """Where a chat mask went: a label of a Labels layer."""

    layer: str
    label: int
    name: str


@dataclass(frozen=True)
class VolumeMask:
    """A chat mask propagated through the volume: which slices its label now spans, which to check."""

    layer: str
    label: int
    seed: int  # the answer's slice (the propagation's seed)
    slices: tuple[int, int]  # first and last slice the label spans after it
    unsure: tuple[int, ...]
    seconds: float

    def describe(self) -> str:
        unsure = f"; unsure: {', '.join(map(str, self.unsure))} (check them)" if self.unsure else ""
        return (f"in 3D: label {self.label} of {self.layer!r}, slices {self.slices[0]}–{self.slices[1]} "
                f"(seed {self.seed}){unsure} · {self.seconds:.1f} s")


def routing_summary(stats: RoutingStats | None) -> str:
    if stats is None or not stats.per_token:
        return "routing: n/a"
    shares = stats.overall()
    return " · ".join(f"{name} {share:.0%}" for name, share in zip(stats.expert_names, shares))


def plain_answer(entry: ChatEntry) -> str:
    """The answer with each <SEG> written as '[mask N]' (never the raw token)."""
    from medplib_runtime.conversation import readable_answer

    return readable_answer(entry.answer).strip()


class ChatHistory:
    """Transcripts keyed by image (layer name); earlier turns go back to the model as history."""

    def __init__(self) -> None:
        self._by_image: dict[str, list[ChatEntry]] = {}
        self._placed: dict[tuple[str, int, int], PlacedMask] = {}  # (image, entry, mask) → where it went
        self._volumes: dict[tuple[str, int, int], VolumeMask] = {}  # (image, entry, mask) → its propagation
        self._remarks: dict[tuple[str, int], str] = {}  # (image, entry) → what the chat did after it (no mask)

    def add(self, image: str, question: str, result: AskResult, ref: SliceRef, region_kind: str,
            measured: str = "") -> ChatEntry:
        entry = ChatEntry(question, result.text, ref, region_kind, tuple(result.masks),
                          routing_summary(result.routing), tuple(result.untrained_parts), measured,
                          tuple(result.notes), result.timings_ms.get("total", 0.0) / 1e3)
        self._by_image.setdefault(image, []).append(entry)
        return entry

    def entries(self, image: str) -> list[ChatEntry]:
        return list(self._by_image.get(image, ()))

    def placed(self, image: str, entry: int, mask: int) -> PlacedMask | None:
        return self._placed.get((image, entry, mask))

    def place(self, image: str, entry: int, mask: int, where: PlacedMask | None) -> None:
        if where is None:
            self._placed.pop((image, entry, mask), None)
        else:
            self._placed[(image, entry, mask)] = where

    def volume(self, image: str, entry: int, mask: int) -> VolumeMask | None:
        return self._volumes.get((image, entry, mask))

    def set_volume(self, image: str, entry: int, mask: int, volume: VolumeMask | None) -> None:
        if volume is None:
            self._volumes.pop((image, entry, mask), None)
        else:
            self._volumes[(image, entry, mask)] = volume

    def remark(self, image: str, entry: int) -> str:
        return self._remarks.get((image, entry), "")

    def set_remark(self, image: str, entry: int, text: str) -> None:
        self._remarks[(image, entry)] = text

    def turns(self, image: str) -> tuple[Turn, ...]:
        """The earlier turns sent back, the newest that fit the runtime's history cap (a long chat goes on)."""
        from medplib_runtime.validation import fitting_history

        # the measured statement goes back as the answer: the model should build on the right number
        return fitting_history(tuple(Turn(e.question, e.measured.split(" [measured from")[0] if _stated(e)
                                          else e.answer) for e in self._by_image.get(image, ())))

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
        self._placed = {k: v for k, v in self._placed.items() if k[0] != image}
        self._volumes = {k: v for k, v in self._volumes.items() if k[0] != image}
        self._remarks = {k: v for k, v in self._remarks.items() if k[0] != image}

    def as_text(self, image: str) -> str:
        lines = []
        for i, (e, notes) in enumerate(zip(self.entries(image), self.new_notes(image))):
            lines.append(f"Q (slice {e.slice.index}, region {e.region_kind}): {e.question}")
            if e.measured:
                lines.append(f"Measured: {e.measured}")
            lines.append(f"A: {plain_answer(e) or '(no text)'}  [{len(e.masks)} mask(s); {e.routing}]")
            lines.extend(f"Note: {n}" for n in notes)
            lines.extend(f"Mask {m + 1} {v.describe()}" for m in range(len(e.masks))
                         if (v := self.volume(image, i, m)) is not None)
            if self.remark(image, i):
                lines.append(f"Note: {self.remark(image, i)}")
        return "\n".join(lines)


def _stated(entry: ChatEntry) -> bool:
    """A measured (or file's) statement goes back as the answer; a hint that nothing was measured does not."""
    return bool(entry.measured) and not entry.measured.startswith((NOTHING_TO_MEASURE, "could not measure"))
