"""First-use waits, measured as a user meets them: `medplib-napari` launched N times, each in a new process.

In each launch (napari's event loop replaced by a loop that keeps processing events) a user draws a box on
brain1's lesion 3 s after the window appears and presses Segment; 30 s after the window appeared they type
a question and press Enter. Real Qt events throughout (napari_medplib._driving). Printed per launch and as
the median: window shown (s from process start), click → mask, Enter → answer, the warm-up steps, and the
worst gap of a 10 ms heartbeat on the Qt main thread while the models load.

Run: xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python scripts/launch_timing.py [--launches 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

QUESTION = "What is the modality of this image?"


def one_launch(draw_after: float, ask_after: float) -> dict:
    started = time.monotonic()
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_medplib import launch, runtime_factory
    from napari_medplib._driving import click, dock, draw_box, type_and_enter

    out: dict = {}

    def wait_until(condition, limit: float = 300.0) -> None:
        end = time.monotonic() + limit
        while not condition() and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.005)

    def drive(*_a, **_k) -> None:
        viewer = napari.current_viewer()
        viewer.window._qt_window.resize(1280, 800)
        viewer.window._qt_window.show()
        QApplication.processEvents()
        shown = time.monotonic()
        out["window_s"] = shown - started
        beats: list[float] = []
        heartbeat = QTimer()
        heartbeat.timeout.connect(lambda: beats.append(time.monotonic()))
        heartbeat.start(10)
        seg, chat = dock(viewer, "MedPLIB segment"), dock(viewer, "MedPLIB chat")
        image, reference = viewer.layers["brain1"], viewer.layers["brain1 lesion (reference)"]
        rows, cols = np.nonzero(reference.data[16] == 1)
        wait_until(lambda: time.monotonic() - shown >= draw_after)
        draw_box(viewer, image, 16, rows.min() - 3, cols.min() - 3, rows.max() + 3, cols.max() + 3)
        clicked = time.monotonic()
        click(seg.segment_button)
        wait_until(lambda: bool(seg.writes))
        out["first_segment_s"] = time.monotonic() - clicked
        out["segment_status"] = seg.status.text()
        wait_until(lambda: not runtime_factory.warm_status().busy)
        warmed = time.monotonic()
        gaps = np.diff([t for t in beats if t <= warmed]) if len(beats) > 1 else np.array([0.0])
        out["warm_up_worst_gap_ms"] = float(gaps.max() * 1e3)
        out["warm_up_s"] = warmed - shown
        out["warm_steps"] = runtime_factory.warm_status().loaded
        wait_until(lambda: time.monotonic() - shown >= ask_after)
        entered = time.monotonic()
        type_and_enter(chat.question, QUESTION)
        wait_until(lambda: bool(chat.history.entries("brain1")))
        out["first_answer_s"] = time.monotonic() - entered
        out["answer"] = chat.history.entries("brain1")[0].answer
        heartbeat.stop()
        viewer.close()

    napari.run = drive
    launch.main([])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--draw-after", type=float, default=3.0, help="seconds from window to the box")
    parser.add_argument("--ask-after", type=float, default=30.0, help="seconds from window to the question")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single launch, JSON out
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_launch(args.draw_after, args.ask_after)))
        return
    runs = []
    for i in range(args.launches):
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, __file__, "--one", "--draw-after", str(args.draw_after),
                               "--ask-after", str(args.ask_after)], capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"launch {i + 1} failed:\n{done.stderr[-2000:]}")
        run = json.loads(line[7:])
        run["process_s"] = time.monotonic() - t0
        runs.append(run)
        steps = ", ".join(f"{name} {s:.1f} s" for name, s in run["warm_steps"])
        print(f"launch {i + 1}: window {run['window_s']:.1f} s · click→mask {run['first_segment_s']:.2f} s · "
              f"Enter→answer {run['first_answer_s']:.2f} s · warm-up {run['warm_up_s']:.1f} s ({steps}) · "
              f"worst UI gap while warming {run['warm_up_worst_gap_ms']:.0f} ms · answer {run['answer']!r}")
    print(f"\n| measure (median of {len(runs)} launches) | value |\n|---|---|")
    for key, label in (("window_s", "window shown, from process start"),
                       ("first_segment_s", f"first Segment: click → mask (box drawn {args.draw_after:.0f} s after "
                                           "the window)"),
                       ("first_answer_s", f"first answer: Enter → answer (asked {args.ask_after:.0f} s after the "
                                          "window)"),
                       ("warm_up_s", "background warm-up, window → done"),
                       ("warm_up_worst_gap_ms", "worst Qt main-thread gap while warming (ms)")):
        print(f"| {label} | {statistics.median(r[key] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
