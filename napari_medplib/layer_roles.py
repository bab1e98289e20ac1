"""What a layer is for, as the docks see it (no Qt here).

A layer's role sits in its metadata under ``medplib_role``: the sample's or a file's ground truth is
``reference``, a mask MedPLIB wrote is ``prediction``, a Labels layer the user paints a region in is
``scribble``. Prompts come only from layers a user draws in (Shapes, Points, scribbles): a reference or
prediction is never read as the user's prompt, and a reference is never written into.
"""

from __future__ import annotations

ROLE_KEY = "medplib_role"
REFERENCE, PREDICTION, SCRIBBLE = "reference", "prediction", "scribble"


def role(layer) -> str | None:
    return (getattr(layer, "metadata", None) or {}).get(ROLE_KEY)


def with_role(metadata: dict | None, value: str) -> dict:
    """A copy of ``metadata`` carrying ``value`` as the role (the source's geometry kept)."""
    return {**(metadata or {}), ROLE_KEY: value}


def is_prompt_layer(layer) -> bool:
    from napari.layers import Labels, Points, Shapes

    if isinstance(layer, (Shapes, Points)):
        return True
    return isinstance(layer, Labels) and role(layer) == SCRIBBLE


def is_target_layer(layer) -> bool:
    """A Labels layer MedPLIB may write into: never a reference, never a scribble."""
    from napari.layers import Labels

    return isinstance(layer, Labels) and role(layer) not in (REFERENCE, SCRIBBLE)


def add_quietly(viewer, add):
    """``add()`` a layer without taking the user's tool away: napari makes a new layer the active one, so
    the next drag would pan a Labels layer instead of drawing in the prompt layer the user was using."""
    active = viewer.layers.selection.active
    layer = add()
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer
