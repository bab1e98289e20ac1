"""`medplib`, the command line: one module per group of commands (commands: info/segment/ask/serve/bench)."""

from .commands import main

__all__ = ["main"]
