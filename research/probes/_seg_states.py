"""For the probe scripts: the last-layer state of every ``<SEG>`` an Asker writes, captured on the way
to its masks (the states the seg projector reads)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def seg_states(asker):
    """While open, each ``<SEG>`` of the asker's answers appends its ``D`` state to the yielded list, in order."""
    captured: list = []
    original = asker.masks_for

    def spy(token_ids, hidden, embedding, threshold):
        captured.extend(hidden[i].detach().clone() for i, t in enumerate(token_ids) if t == asker.seg_id)
        return original(token_ids, hidden, embedding, threshold)

    asker.masks_for = spy
    try:
        yield captured
    finally:
        asker.masks_for = original
