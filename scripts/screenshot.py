"""A real session under Xvfb → docs/screenshot.png: brain1, a box on slice 16, Segment, the mask, a question.

Run: xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python scripts/screenshot.py
"""

import numpy as np
import napari
from qtpy.QtWidgets import QApplication

from napari_medplib._chat_widget import ChatDock
from napari_medplib._widget import MedPLIBWidget


def main():
    viewer = napari.Viewer(title="napari-medplib")
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-medplib", "brain1")
    image, reference = viewer.layers
    reference.visible = False
    k = 16
    viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])
    lo, hi = image.data_to_world((k, 81, 159)), image.data_to_world((k, 118, 209))
    corners = np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])])
    viewer.add_shapes(corners, shape_type="rectangle", name="prompt", edge_color="yellow",
                      face_color="transparent", edge_width=1)
    widget = MedPLIBWidget(viewer)
    widget.synchronous = True
    viewer.window.add_dock_widget(widget, name="MedPLIB segment", area="right")
    widget.prompt_combo.setCurrentText("prompt")
    widget.on_segment()
    chat = ChatDock(viewer)
    chat.synchronous = True
    chat.transcript.setMinimumHeight(300)
    viewer.window.add_dock_widget(chat, name="MedPLIB chat", area="right")
    chat.region_combo.setCurrentText("prompt")
    chat.question.setText("What is in the region?")
    chat.on_ask()
    viewer.scene.camera.zoom *= 2.2
    viewer.scene.camera.center = image.data_to_world((k, 100, 184))
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot("docs/screenshot.png", canvas_only=False)
    print(widget.status.text())
    viewer.close()


if __name__ == "__main__":
    main()
