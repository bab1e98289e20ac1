"""``medplib-napari``: napari with the MedPLIB dock and the brain1 sample, ready for a box."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import napari

    args = sys.argv[1:] if argv is None else argv
    viewer = napari.Viewer(title="napari-medplib")
    if args:
        viewer.open(args[0], plugin="napari-medplib")
    else:
        viewer.open_sample("napari-medplib", "brain1")
        viewer.dims.set_point(0, viewer.layers[0].data_to_world((16, 0, 0))[0])  # a slice through the lesion
    image = viewer.layers[0]
    viewer.add_shapes(ndim=image.ndim, name="prompt", edge_color="yellow", face_color="transparent", edge_width=1)
    viewer.layers["prompt"].mode = "add_rectangle"
    viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB segment")
    viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB chat")
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
