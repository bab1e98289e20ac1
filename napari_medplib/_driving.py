"""Drive a napari window with real Qt input events, as a user would: drag a rectangle on the canvas,
click a button, type a question and press Enter. Used by the launch acceptance test, the launch timing
and the README screenshot, so none of them sets by hand what a user would have to set.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication


def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        QApplication.processEvents()


def canvas_point(viewer, world_yx) -> QPoint:
    """The canvas pixel under a world (row, col) position of the displayed plane."""
    canvas = viewer.window._qt_viewer.canvas
    mapped = canvas.view.scene.transform.map([world_yx[1], world_yx[0], 0, 1])
    return QPoint(int(round(mapped[0] / mapped[3])), int(round(mapped[1] / mapped[3])))


def _mouse(widget, kind, pos: QPoint, button, buttons) -> None:
    local = QPointF(pos)
    event = QMouseEvent(kind, local, QPointF(widget.mapToGlobal(pos)), button, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)
    QApplication.processEvents()


def drag(viewer, world_from, world_to, steps: int = 8) -> None:
    """Press the left button at one world (row, col), move in ``steps`` and release at the other."""
    widget = viewer.window._qt_viewer.canvas.native
    start, end = canvas_point(viewer, world_from), canvas_point(viewer, world_to)
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    _mouse(widget, QEvent.Type.MouseMove, start, none, none)
    _mouse(widget, QEvent.Type.MouseButtonPress, start, left, left)
    for t in np.linspace(0, 1, steps + 1)[1:]:
        p = QPoint(int(round(start.x() + t * (end.x() - start.x()))), int(round(start.y() + t * (end.y() - start.y()))))
        _mouse(widget, QEvent.Type.MouseMove, p, none, left)
    _mouse(widget, QEvent.Type.MouseButtonRelease, end, left, none)
    settle()


def draw_box(viewer, image_layer, index: int, r0: float, c0: float, r1: float, c1: float) -> None:
    """Drag a rectangle from image voxel (r0, c0) to (r1, c1) on slice ``index`` (the slice shown)."""
    a = image_layer.data_to_world((index, r0, c0))[-2:]
    b = image_layer.data_to_world((index, r1, c1))[-2:]
    drag(viewer, a, b)


def click(button) -> None:
    from qtpy.QtTest import QTest

    QTest.mouseClick(button, Qt.MouseButton.LeftButton)
    settle()


def type_and_enter(line_edit, text: str) -> None:
    from qtpy.QtTest import QTest

    QTest.mouseClick(line_edit, Qt.MouseButton.LeftButton)
    QTest.keyClicks(line_edit, text)
    QTest.keyClick(line_edit, Qt.Key.Key_Return)
    settle()


def dock(viewer, name: str):
    """The widget inside the dock named ``name`` (e.g. 'MedPLIB segment')."""
    for title, widget in viewer.window.dock_widgets.items():
        if title.startswith(name):
            return widget
    raise KeyError(f"no dock {name!r}: {list(viewer.window.dock_widgets)}")
