"""Can Qt open a window here? Asked before napari starts, because Qt aborts the process (rc 134) when
it cannot, with a message that blames its xcb plugin rather than the missing display.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# libraries Qt 6's xcb platform plugin loads; a missing one aborts Qt just like a missing display
QT_XCB_LIBRARIES = {"xcb-cursor": "libxcb-cursor0", "xkbcommon-x11": "libxkbcommon-x11-0",
                    "xcb-icccm": "libxcb-icccm4", "xcb-keysyms": "libxcb-keysyms1"}


def display_problem(environ=None) -> str | None:
    """Why no window can open here (one line), or None when one can (or when it is not ours to tell)."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return None
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform and not platform.startswith("xcb"):
        return None  # wayland, offscreen, vnc...: chosen on purpose
    display = env.get("DISPLAY", "")
    if not display:
        if env.get("WAYLAND_DISPLAY") and not platform:
            return None
        return ("no display: DISPLAY is not set (start it from a desktop session, use ssh -X, or run "
                "it under xvfb-run for a virtual screen)")
    missing = [pkg for lib, pkg in QT_XCB_LIBRARIES.items() if ctypes.util.find_library(lib) is None]
    if missing:
        return f"Qt cannot open a window without {', '.join(missing)} (apt-get install {' '.join(missing)})"
    return _x_server_problem(display)


def _x_server_problem(display: str) -> str | None:
    name = ctypes.util.find_library("xcb")
    if name is None:
        return "Qt cannot open a window without libxcb1 (apt-get install libxcb1)"
    xcb = ctypes.CDLL(name)
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    connection = xcb.xcb_connect(display.encode(), None)
    failed = xcb.xcb_connection_has_error(connection)
    xcb.xcb_disconnect(connection)
    if failed:
        return (f"cannot open display {display!r}: no X server answers there (start it from a desktop session, "
                "use ssh -X, or run it under xvfb-run)")
    return None
