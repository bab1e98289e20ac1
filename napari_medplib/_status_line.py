"""A status line that never moves the layout: two lines of text at a fixed height, and a thin progress bar.

``busy(text)`` shows ``text`` with the seconds elapsed, ticking, and an indeterminate bar; ``progress``
a determinate one; ``done(text)`` stops both. Text is wrapped, never widening the dock; the whole text
is in the tooltip.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QSizePolicy, QVBoxLayout, QWidget


class StatusLine(QWidget):
    def __init__(self, text: str = "ready") -> None:
        super().__init__()
        self.label = QLabel(text)
        self.label.setWordWrap(True)
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.label.setFixedHeight(self.label.fontMetrics().lineSpacing() * 2 + 4)
        self.bar = QProgressBar()
        self.bar.setTextVisible(False)
        self.bar.setFixedHeight(6)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        self._busy_text, self._since = "", 0.0
        self._ticker = QTimer(self)
        self._ticker.setInterval(200)
        self._ticker.timeout.connect(self._tick)

    def text(self) -> str:
        return self.label.text()

    def setText(self, text: str) -> None:  # noqa: N802 — QLabel's name, so callers treat it as one
        self.label.setText(text)
        self.label.setToolTip(text)

    def busy(self, text: str) -> None:
        if text != self._busy_text or not self._ticker.isActive():
            self._busy_text, self._since = text, time.monotonic()
        self.bar.setRange(0, 0)
        self._ticker.start()
        self._tick()

    def progress(self, done: int, total: int, text: str) -> None:
        self._ticker.stop()
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(min(done, max(total, 1)))
        self.setText(text)

    def done(self, text: str) -> None:
        self._ticker.stop()
        self._busy_text = ""
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.setText(text)

    @property
    def is_busy(self) -> bool:
        return self._ticker.isActive()

    def _tick(self) -> None:
        self.setText(f"{self._busy_text} {time.monotonic() - self._since:.1f} s")
