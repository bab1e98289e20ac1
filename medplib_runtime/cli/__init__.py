"""`medplib`, the command line: one module per group of commands (main: info/segment/ask/serve/bench)."""

from .main import main

__all__ = ["main"]
