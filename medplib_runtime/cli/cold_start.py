"""``medplib ask --timings``: where a cold process's time went, one line on stderr (torch-free).

The runtime records its stages (``LocalRuntime.load_timings``); the embedding and the LLM load run
side by side, so the critical path is torch + segmenter + max(embed, llm) + answer, and "rest" is the
remainder of the process's age: interpreter start, CLI imports, reading the image, writing output.
``scripts/cold_start.py`` runs the CLI a few times and tabulates these lines.
"""

from __future__ import annotations

import os

PREFIX = "medplib: timings:"
STAGES = ("torch_import", "segmenter", "embed", "llm", "answer")


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def timings_line(runtime, result) -> str:
    """``medplib: timings: torch_import=2.10 segmenter=0.45 embed=1.31 llm=1.52 answer=1.05 rest=0.70 total=6.20``
    (seconds; a stage that did not run this time is left out)."""
    stages = dict(getattr(runtime, "load_timings", {}) or {})
    stages["answer"] = result.timings_ms.get("total", float("nan")) / 1e3
    total = process_age_s()
    parts = [f"{k}={stages[k]:.2f}" for k in STAGES if k in stages]
    if total is not None:
        path = sum(stages.get(k, 0.0) for k in ("torch_import", "segmenter", "answer"))
        path += max(stages.get("embed", 0.0), stages.get("llm", 0.0))
        parts += [f"rest={max(0.0, total - path):.2f}", f"total={total:.2f}"]
    return f"{PREFIX} " + " ".join(parts) + " (s; embed and llm run side by side)"


def exit_without_final_collection() -> None:
    """At interpreter exit, skip the last garbage collection over every object torch made (``gc.freeze``
    from an atexit hook): a process that imported torch ends ≈ 0.5 s sooner (0.6–0.9 s → 0.2 s measured).
    Reference counting still frees what it frees; only cycles are left to the OS, which reclaims it all."""
    import atexit
    import gc

    atexit.register(gc.freeze)


def parse_line(line: str) -> dict[str, float]:
    """The numbers of a ``timings_line``."""
    body = line.split(PREFIX, 1)[1].split("(", 1)[0]
    return {k: float(v) for k, v in (item.split("=") for item in body.split())}


__all__ = ["exit_without_final_collection", "parse_line", "process_age_s", "timings_line"]
