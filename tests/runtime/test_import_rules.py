"""House rules (docs/design.md, "Rules of the house"): the runtime's boundary and the plugin import without torch; no Qt in the runtime."""

import subprocess
import sys

CODE = """
import sys
import medplib_runtime, medplib_runtime.schemas, medplib_runtime.protocol, medplib_runtime.local
import medplib_runtime.cli.commands, medplib_runtime.imaging.io, medplib_runtime.imaging.windowing
import medplib_runtime.remote, medplib_runtime.wire  # the remote client needs no torch
assert not any(m.startswith(("napari", "PyQt", "qtpy")) for m in sys.modules), "runtime imported Qt/napari"
import napari_medplib, napari_medplib._reader, napari_medplib._writer, napari_medplib._sample_data
import napari_medplib._widget, napari_medplib._chat_widget, napari_medplib._runtime_widget
assert "torch" not in sys.modules, "torch imported at module level"
print("ok")
"""


def test_runtime_and_plugin_import_without_torch_or_qt():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
