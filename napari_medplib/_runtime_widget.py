"""The MedPLIB runtime dock: run the model here, or on a `medplib serve` elsewhere (URL + token).

Connecting checks the server in a worker (health + info, with the token); only a server that
answered replaces the current runtime, so a typo in the URL loses nothing. Widgets only wire
signals to ``on_*`` methods.
"""

from __future__ import annotations

import os

from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from ._workers import WorkerSlot, user_message
from .runtime_factory import TOKEN_ENV, URL_ENV, current_runtime, default_choice, set_runtime

DEFAULT_URL = "http://127.0.0.1:8765"


def describe(runtime) -> str:
    """One line about the runtime in use, or the one the first call will make (no model call)."""
    if runtime is None:
        choice = default_choice()
        if choice.startswith("remote "):
            return f"remote: {choice.removeprefix('remote ')} (from ${URL_ENV}; not connected yet)"
        return "local (this computer)" if choice == "local" else "none: torch is not installed here, connect to a server"
    url = getattr(runtime, "url", None)
    return f"remote: {url}" if url else "local (this computer)"


class RuntimeDock(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = os.environ.get("MEDPLIB_SYNC_WORKERS") == "1"
        self.jobs = WorkerSlot(synchronous=lambda: self.synchronous)
        self.url = QLineEdit(os.environ.get(URL_ENV, DEFAULT_URL))
        self.token = QLineEdit(os.environ.get(TOKEN_ENV, ""))
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("only if the server asks for one")
        self.connect_button, self.local_button = QPushButton("Connect"), QPushButton("Use this computer")
        self.status = QLabel(describe(current_runtime()))
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("server URL", self.url)
        form.addRow("token", self.token)
        buttons = QHBoxLayout()
        buttons.addWidget(self.connect_button)
        buttons.addWidget(self.local_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        self.connect_button.clicked.connect(self.on_connect)
        self.local_button.clicked.connect(self.on_use_local)

    def on_connect(self) -> None:
        url, token = self.url.text().strip(), self.token.text().strip() or None
        self.connect_button.setEnabled(False)
        self.status.setText(f"connecting to {url}…")
        self.jobs.start(lambda cancel: _connect(url, token), self.on_connected, on_error=self.on_failed,
                        on_finished=lambda: self.connect_button.setEnabled(True))

    def on_connected(self, connected) -> None:
        runtime, info = connected
        set_runtime(runtime)
        untrained = f"; untrained: {', '.join(info.untrained())}" if info.untrained() else ""
        self.status.setText(f"remote: {runtime.url} — {info.preset} on {info.device}{untrained}")

    def on_failed(self, exc: BaseException) -> None:
        self.status.setText(f"not connected ({user_message(exc)}); still using {describe(current_runtime())}")

    def on_use_local(self) -> None:
        set_runtime(None)  # the next call creates a LocalRuntime
        self.status.setText(describe(None))


def _connect(url: str, token: str | None):
    """Worker: a RemoteRuntime that has answered info(), or a one-line error (nothing replaced)."""
    from medplib_runtime.remote import RemoteRuntime

    runtime = RemoteRuntime(url, token=token)
    try:
        return runtime, runtime.info()
    except Exception:
        runtime.close()
        raise


__all__ = ["RuntimeDock", "describe"]
