"""The segment dock's state, without Qt: where each result goes, the preview waiting for Accept, and
the undo stack of label writes (napari-animation keeps its state the same way: plain objects the
widgets only call).

A :class:`WriteContext` is fixed when the user presses a button, so later changes in the dock do
not move a result that is still computing. Every write records what made it (provenance_log), so a
saved labels file can say which prompt and which model produced it.
"""

from __future__ import annotations

from dataclasses import dataclass


from medplib_runtime.schemas import Prompt, SliceRef

from .colours import give_colour
from .label_writes import LabelWrite, undo_write, write_mask, write_volume
from .layer_roles import PREDICTION, role
from .provenance_log import record_write
from .runtime_factory import last_runtime_info
from .volume_actions import remember_confidence


@dataclass(frozen=True)
class WriteContext:
    """Where a result goes, fixed when the user pressed the button (later dock changes do not move it)."""

    target: object | None  # a Labels layer, or None: a new one is made on success
    slice: SliceRef | None
    label: int
    name: str
    overwrite: bool
    prompt: Prompt | None = None  # what the user drew (kept as the write's provenance)


@dataclass(frozen=True)
class Written:
    """One write that landed: the layer, what changed (for Undo) and a line for the status bar."""

    layer: object
    write: LabelWrite
    summary: str


class SegmentSession:
    """Undo stack, pending preview and the writes of Segment and Propagate for one dock."""

    def __init__(self, layers) -> None:
        self.layers = layers  # the viewer's LayerList (colours are chosen against every layer in it)
        self.writes: list[tuple[object, LabelWrite]] = []  # newest last
        self.pending: tuple[object, WriteContext] | None = None  # (result, context) shown, not written
        self.propagations: dict[tuple[str, int], object] = {}  # (layer name, label) → its last SeededResult

    # -- preview -------------------------------------------------------------------------------
    def hold(self, result, context: WriteContext) -> None:
        self.pending = (result, context)

    def take_pending(self):
        pending, self.pending = self.pending, None
        return pending

    # -- writes --------------------------------------------------------------------------------
    def write_slice(self, target, result, context: WriteContext) -> Written:
        """Segment's mask on its slice (InputError leaves the layer as it was). On a slice of a propagated
        label the mask replaces what was there: it is a correction, and Propagate redoes what lies beyond."""
        replace = (target.name, context.label) in self.propagations
        write = write_mask(target, result.mask, context.slice, label=context.label, name=context.name or None,
                           overwrite=context.overwrite, replace=replace)
        self._landed(target, write, context)
        return Written(target, write, f"{write.changed} voxels → label {context.label} on slice "
                                      f"{context.slice.index}")

    def write_propagation(self, target, result, context: WriteContext) -> Written:
        """A propagated 3D result as one write (the label becomes exactly the result; one Undo takes it
        back); remembered, so that a later correction redoes only what it affects."""
        write = write_volume(target, result.mask, label=context.label, name=context.name or None,
                             overwrite=context.overwrite, replace=True)
        self._landed(target, write, context)
        self.propagations[(target.name, context.label)] = result
        remember_confidence(target, result)
        return Written(target, write, f"{write.changed} voxels of label {context.label} changed")

    def last_propagation(self, target, label: int):
        return self.propagations.get((target.name, label))

    def _landed(self, target, write: LabelWrite, context: WriteContext) -> None:
        if role(target) == PREDICTION:  # a layer MedPLIB made; a user's own layer keeps its colours
            give_colour(self.layers, target, context.label)
        self.writes.append((target, write))
        record_write(target, runtime_info=last_runtime_info(), prompt=context.prompt, where=context.slice)

    def undo(self) -> str | None:
        """Undo the newest write; a line saying what happened, or None when there is nothing to undo."""
        if not self.writes:
            return None
        layer, write = self.writes.pop()
        if write.slice is None:  # a Propagate undone: the next one starts from the seeds again
            self.propagations.pop((layer.name, write.label), None)
        restored = undo_write(layer, write)
        kept = write.changed - restored
        extra = f"; {kept} voxels painted since were kept" if kept else ""
        return f"undid the write on {write.describe()}{extra}"
