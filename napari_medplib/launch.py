"""``medplib-napari [FILE] [--remote URL [--token T] | --device cuda]``: napari with the MedPLIB docks, ready for a box.

Without FILE it opens the brain1 sample on a slice through the lesion. With ``--remote`` the
docks use a `medplib serve` runtime (checked before napari opens) instead of loading the model here;
with ``--device cuda`` the model is loaded here on the GPU (a missing GPU is refused before napari opens).
"""

from __future__ import annotations

import argparse
import sys


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medplib-napari", description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="NIfTI/NRRD/MHA file or DICOM folder (default: brain1 sample)")
    parser.add_argument("--remote", metavar="URL", help="use a `medplib serve` runtime at URL")
    parser.add_argument("--token", default=None, help="the server's token (default: $MEDPLIB_TOKEN)")
    parser.add_argument("--device", default="cpu", help="where the local model computes: cpu (default), cuda, cuda:N")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    from .display import display_problem

    problem = display_problem()
    if problem is not None:
        print(f"medplib-napari: error: {problem}", file=sys.stderr)
        return 2
    if args.remote and args.device != "cpu":
        print("medplib-napari: error: --device applies to the local runtime: a server runs on the device it was "
              "started with", file=sys.stderr)
        return 2
    if args.remote:
        from medplib_runtime.errors import MedplibError
        from medplib_runtime.remote import RemoteRuntime

        from .runtime_factory import set_runtime

        runtime = RemoteRuntime(args.remote, token=args.token)
        try:
            runtime.info()
        except MedplibError as exc:
            print(f"medplib-napari: error: {exc}", file=sys.stderr)
            return 2
        set_runtime(runtime)
    elif args.device != "cpu":
        from medplib_runtime.errors import MedplibError
        from medplib_runtime.local import LocalRuntime

        from .runtime_factory import set_runtime

        try:
            set_runtime(LocalRuntime(device=args.device))  # checks the GPU; the models still load on first use
        except MedplibError as exc:
            print(f"medplib-napari: error: {exc}", file=sys.stderr)
            return 2

    volume = None
    if args.file:  # read before napari opens: a bad file is one line, not an empty window
        from medplib_runtime.errors import MedplibError
        from medplib_runtime.imaging.io import read_volume

        try:
            volume = read_volume(args.file)
        except MedplibError as exc:
            print(f"medplib-napari: error: {exc}", file=sys.stderr)
            return 2
    from .runtime_factory import warm_segmentation

    warm_segmentation()  # torch and the model load while napari starts: the first click does not wait
    import napari

    build_viewer(volume)
    napari.run()
    return 0


def build_viewer(volume=None):
    """napari with ``volume`` (default: the brain1 sample on a lesion slice), a `prompt` Shapes layer ready
    for a rectangle, and both docks one above the other."""
    import napari

    from ._layers import image_layer_data

    viewer = napari.Viewer(title="napari-medplib")
    if volume is not None:
        data, kwargs, _ = image_layer_data(volume)
        viewer.add_image(data, **kwargs)
    else:
        viewer.open_sample("napari-medplib", "brain1")
        viewer.dims.set_point(0, viewer.layers[0].data_to_world((16, 0, 0))[0])  # a slice through the lesion
    image = viewer.layers[0]
    viewer.add_shapes(ndim=image.ndim, name="prompt", edge_color="yellow", face_color="transparent", edge_width=1)
    viewer.layers["prompt"].mode = "add_rectangle"
    viewer.layers.selection.active = viewer.layers["prompt"]
    # both docks visible, one above the other (the runtime is a line in the segment dock, not a tab)
    viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB segment")
    viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB chat")
    return viewer


if __name__ == "__main__":
    sys.exit(main())
