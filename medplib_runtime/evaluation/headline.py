"""``medplib eval``'s headline: real images and phantoms in separate columns, real first (ours).

Closed questions are reported as balanced accuracy per topic (each reference answer's recall, then their
mean: for yes/no the mean of yes-recall and no-recall), so a constant answer scores 0.5 on a yes/no
topic, whatever the share of "yes" (metrics.balanced_accuracy). A cell with nothing to score is "–".
"""

from __future__ import annotations

from .sources import SOURCES


def _cell(value: float, n: int, *, digits: int = 3) -> str:
    return "–" if n == 0 else f"{value:.{digits}f} ({n})"


def headline_table(report) -> str:
    """Rows: metric; columns: real, phantom (each ``value (n)``). ``report``: an EvalReport."""
    by_source = {r.key: r for r in report.rows if r.group == "source"}
    topics = {r.key: r for r in report.rows if r.group == "source_topic"}
    cols = [by_source.get(s) for s in SOURCES]
    lines = [f"{'':<34}" + "".join(f"{s:>18}" for s in SOURCES)]

    def add(name: str, cells: list[str]) -> None:
        lines.append(f"{name:<34}" + "".join(f"{c:>18}" for c in cells))

    add("grounding mDice (n masks)", [_cell(r.mdice, r.n_seg) if r else "–" for r in cols])
    add("grounding abstained (of n asks)", [f"{r.n_abstained} ({r.n_seg})" if r and r.n_seg else "–" for r in cols])
    add("open F1", [_cell(r.f1, r.n_open) if r else "–" for r in cols])
    add("closed accuracy", [_cell(r.accuracy, r.n_closed) if r else "–" for r in cols])
    add("closed balanced", [_cell(r.balanced, r.n_closed) if r else "–" for r in cols])
    add("region named", [_cell(r.named, r.n_named) if r else "–" for r in cols])
    closed_topics = sorted({k.split(":", 1)[1] for k, r in topics.items() if r.n_closed})
    for t in closed_topics:
        cells = [topics.get(f"{s}:{t}") for s in SOURCES]
        add(f"  balanced, {t}", [_cell(r.balanced, r.n_closed) if r and r.n_closed else "–" for r in cells])
    return "\n".join(lines)


__all__ = ["headline_table"]
