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

    import napari

    viewer = napari.Viewer(title="napari-medplib")
    if args.file:
        viewer.open(args.file, plugin="napari-medplib")
    else:
        viewer.open_sample("napari-medplib", "brain1")
        viewer.dims.set_point(0, viewer.layers[0].data_to_world((16, 0, 0))[0])  # a slice through the lesion
    image = viewer.layers[0]
    viewer.add_shapes(ndim=image.ndim, name="prompt", edge_color="yellow", face_color="transparent", edge_width=1)
    viewer.layers["prompt"].mode = "add_rectangle"
    viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB segment")
    viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB chat")
    viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB runtime", tabify=True)
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
