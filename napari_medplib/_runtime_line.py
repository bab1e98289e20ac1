"""One line at the top of the segment dock: where the model runs, and a button to change it.

It replaces a runtime tab that used to hide the chat; the full form (server URL, token) opens in a
small dialog (the same ``RuntimeDock`` the plugin menu offers).
"""

from __future__ import annotations

from qtpy.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from ._runtime_widget import RuntimeDock, describe
from .runtime_factory import current_runtime


class RuntimeLine(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.label = QLabel()
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.change_button = QPushButton("Change…")
        self.change_button.setToolTip("run the model on this computer or on a `medplib serve` (URL + token)")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.change_button)
        self.change_button.clicked.connect(self.on_change)
        self.refresh()

    def refresh(self) -> None:
        text = f"model: {describe(current_runtime())}"
        self.label.setText(text)
        self.label.setToolTip(text)

    def on_change(self) -> None:
        dialog = QDialog(self)
        dialog.setWindowTitle("MedPLIB runtime")
        layout = QVBoxLayout(dialog)
        layout.addWidget(RuntimeDock(self.viewer))
        close = QPushButton("Close")
        close.clicked.connect(dialog.accept)
        layout.addWidget(close)
        dialog.finished.connect(lambda _: self.refresh())
        dialog.open()
