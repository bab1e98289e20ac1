"""The bench's table: one row per measure, median and p90 of repeated runs."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    median: float
    p90: float
    n: int
    note: str = ""


def _p90(values: list[float]) -> float:
    return float(np.percentile(values, 90)) if values else float("nan")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def row_ms(name: str, samples: list[float], note: str = "") -> Row:
    return Row(name, "ms", statistics.median(samples), _p90(samples), len(samples), note)


def skipped(name: str, why: str) -> Row:
    """A measure that does not apply to this model: listed, so the table says so rather than leaving it out."""
    return Row(name, "", float("nan"), float("nan"), 0, f"skipped: {why}")


def print_table(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows) + 2
    print(f"{'measure':<{width}}{'median':>12}{'p90':>12}  {'unit':<6}{'n':>4}  note")
    print("-" * (width + 48))
    for r in rows:
        if r.n == 0:  # skipped: no numbers to show
            print(f"{r.name:<{width}}{'-':>12}{'-':>12}  {'':<6}{0:>4}  {r.note}")
            continue
        print(f"{r.name:<{width}}{r.median:>12.3f}{r.p90:>12.3f}  {r.unit:<6}{r.n:>4}  {r.note}")
