"""Colours that tell apart what MedPLIB wrote from the reference, and each written mask from the others.

A reference is drawn as a cyan outline; no prediction uses cyan (nor the prompt's yellow). Each
(layer, label) MedPLIB writes gets the first palette colour no other written mask in the viewer has,
kept in the layer's metadata so it survives a colormap reset. No Qt here.
"""

from __future__ import annotations

from .layer_roles import PREDICTION, role

REFERENCE_COLOUR = "#00e5ff"
UNASSIGNED_COLOUR = "#9e9e9e"  # a label painted by hand before MedPLIB gave it a colour
PALETTE = ("#ff8c00", "#e040fb", "#76ff03", "#ff5252", "#448aff", "#ff80ab", "#bcaaa4", "#7c4dff",
           "#c0ca33", "#8d6e63")
COLOURS_KEY = "medplib_colours"  # {label id: "#rrggbb"} in a prediction layer's metadata


OUTLINED_KEY = "medplib_outlined"


def reference_style() -> dict:
    """Labels-layer keyword arguments for a reference: cyan, whatever the label ids (outlined once added)."""
    return {"colormap": {None: REFERENCE_COLOUR}, "opacity": 1.0}


def outline_references(layers) -> None:
    """Draw each reference as a thin outline, once (napari takes ``contour`` only after the layer exists;
    a user who fills it again keeps it filled)."""
    from .layer_roles import REFERENCE

    for layer in layers:
        if role(layer) == REFERENCE and not layer.metadata.get(OUTLINED_KEY):
            layer.metadata[OUTLINED_KEY] = True
            layer.contour = 1


def used_colours(layers) -> set[str]:
    return {c for layer in layers if role(layer) == PREDICTION
            for c in (layer.metadata.get(COLOURS_KEY) or {}).values()}


def give_colour(layers, layer, label: int) -> str:
    """The colour of ``label`` in ``layer``: its own if it has one, else a palette colour nobody uses."""
    own = dict(layer.metadata.get(COLOURS_KEY) or {})
    if int(label) not in own:
        taken = used_colours(layers) | set(own.values())
        free = [c for c in PALETTE if c not in taken]
        n_used = sum(len((lay.metadata.get(COLOURS_KEY) or {})) for lay in layers if role(lay) == PREDICTION)
        own[int(label)] = free[0] if free else PALETTE[n_used % len(PALETTE)]
        layer.metadata[COLOURS_KEY] = own
    apply_colours(layer)
    return own[int(label)]


def forget_colour(layer, label: int) -> None:
    """Free ``label``'s colour (its write was undone and the label is gone from the layer)."""
    own = dict(layer.metadata.get(COLOURS_KEY) or {})
    if own.pop(int(label), None) is not None:
        layer.metadata[COLOURS_KEY] = own
        apply_colours(layer)


def apply_colours(layer) -> None:
    from napari.utils.colormaps import DirectLabelColormap

    own = layer.metadata.get(COLOURS_KEY) or {}
    layer.colormap = DirectLabelColormap(color_dict={None: UNASSIGNED_COLOUR, **{int(k): v for k, v in own.items()}})
