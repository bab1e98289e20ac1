"""MeCoVQA's test splits through `medplib eval`, printed in the paper's layout beside the paper's numbers.

For a user who has the MeCoVQA data (its release: MeCoVQA-G for pixel grounding, MeCoVQA-C for complex VQA,
LLaVA-format JSON lists with image folders) and, for `medplib-7b`, the released weights and a GPU:

    .venv/bin/python scripts/mecovqa_paper_table.py --g MeCoVQA_G_test.json --c MeCoVQA_C_test.json \\
        [--image-folder DIR] -- --preset medplib-7b --weights DIR --device cuda

Everything after ``--`` goes to `medplib eval` unchanged (``--remote URL`` works too). Each split runs as its own
`medplib eval … --json` process, exactly as a user would run it; this script only reads the JSON reports.
The paper column holds only the numbers transcribed here from MedPLIB (AAAI 2025); a cell we have not
transcribed says so rather than guess.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# MedPLIB's paper, MeCoVQA-G test split (pixel grounding): mDice in % (the reference number)
PAPER = {("G", "all", "mdice"): 68.1}
NOT_TRANSCRIBED = "not transcribed"


@dataclass(frozen=True)
class SplitReport:
    split: str  # "G" or "C"
    rows: tuple[dict, ...]  # medplib eval --json's rows
    records: int
    seconds: float

    def row(self, group: str, key: str) -> dict | None:
        return next((r for r in self.rows if r["group"] == group and r["key"] == key), None)


def run_eval(split: str, data: Path, image_folder: str | None, eval_args: list[str], medplib: str) -> SplitReport:
    """``medplib eval DATA --json`` as a subprocess; its one-line error ends this script with exit 2."""
    argv = [medplib, "eval", str(data), "--json", *eval_args]
    if image_folder:
        argv += ["--image-folder", image_folder]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.strip().splitlines()[-1] + "\n" if proc.stderr.strip() else "medplib eval failed\n")
        raise SystemExit(2)
    report = json.loads(proc.stdout)
    return SplitReport(split, tuple(report["rows"]), int(report["records"]), float(report["seconds"]))


def _paper(split: str, key: str, metric: str) -> str:
    value = PAPER.get((split, key, metric))
    return NOT_TRANSCRIBED if value is None else f"{value:.1f}"


def grounding_lines(report: SplitReport) -> list[str]:
    lines = [f"MeCoVQA-G (pixel grounding), {report.records} records, {report.seconds:.0f} s",
             f"  {'':<22} {'n':>5} {'mIoU %':>7} {'mDice %':>8}   paper mDice %"]
    rows = [("all", report.row("all", "all"))]
    rows += [(f"modality={r['key']}", r) for r in report.rows if r["group"] == "modality" and r["n_seg"]]
    for name, r in rows:
        if r is None or not r["n_seg"]:
            continue
        key = "all" if name == "all" else name.split("=", 1)[1]
        lines.append(f"  {name:<22} {r['n_seg']:>5} {100 * r['miou']:>7.1f} {100 * r['mdice']:>8.1f}   "
                     f"{_paper('G', key, 'mdice')}")
    return lines


def vqa_lines(report: SplitReport) -> list[str]:
    lines = [f"MeCoVQA-C (complex VQA), {report.records} records, {report.seconds:.0f} s",
             f"  {'':<22} {'n open':>6} {'recall %':>9} {'F1 %':>6} {'n closed':>8} {'acc %':>6}   paper"]
    rows = [("all", report.row("all", "all"))]
    rows += [(f"modality={r['key']}", r) for r in report.rows if r["group"] == "modality"]
    for name, r in rows:
        if r is None or not (r["n_open"] or r["n_closed"]):
            continue
        lines.append(f"  {name:<22} {r['n_open']:>6} {100 * r['recall']:>9.1f} {100 * r['f1']:>6.1f} "
                     f"{r['n_closed']:>8} {100 * r['accuracy']:>6.1f}   {NOT_TRANSCRIBED}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, eval_args = _split(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--g", type=Path, help="MeCoVQA-G test JSON (pixel grounding)")
    parser.add_argument("--c", type=Path, help="MeCoVQA-C test JSON (complex VQA)")
    parser.add_argument("--image-folder", default=None, help="where the records' paths start (medplib eval's)")
    parser.add_argument("--medplib", default=shutil.which("medplib") or "medplib", help="the medplib command")
    args = parser.parse_args(ours)
    if not (args.g or args.c):
        parser.error("name at least one split: --g and/or --c")
    out: list[str] = []
    if args.g:
        out += grounding_lines(run_eval("G", args.g, args.image_folder, eval_args, args.medplib))
    if args.c:
        out += vqa_lines(run_eval("C", args.c, args.image_folder, eval_args, args.medplib))
    print("\n".join(out))
    return 0


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """This script's options, and what follows ``--`` (medplib eval's)."""
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


if __name__ == "__main__":
    raise SystemExit(main())
