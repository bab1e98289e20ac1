"""Rebuild the stage-IV starting point from a finished glue: ``python scripts/glue_before_stage4.py
[GLUE] [OUT]`` (default: the shipped glue → build/glue-runs/stage2-after/adapter.safetensors).

Stage IV trains the routers and nothing else, so a finished glue minus stage IV is the file stage IV
started from: its routers set back to the seeded values every earlier stage carried untouched (the
model built under ``torch.manual_seed(seed)``, as ``medplib train`` builds it), its last recipe entry
and "router" in its trained parts removed. Stage-IV variants can then be tried in minutes instead of
re-running stages I–III (hours on 2 cores)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medplib_runtime.modeling.medplib import build_medplib  # noqa: E402
from medplib_runtime.presets import get_preset  # noqa: E402

SHIPPED = ROOT / "medplib_runtime/assets/medplib-lite-glue.safetensors"
OUT = ROOT / "build/glue-runs/stage2-after/adapter.safetensors"


def main(glue: Path = SHIPPED, out: Path = OUT) -> None:
    with safe_open(str(glue), "pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    recipe = json.loads(meta["recipe"])
    last = recipe["stages"][-1]
    if last["stage"] != 4:
        raise SystemExit(f"{glue}: its last stage is {last['stage']}, not IV: nothing to take off")
    torch.manual_seed(int(last.get("seed", 0)))
    model = build_medplib(get_preset(meta["preset"]), pretrained=True, glue=False)
    for i, moe in enumerate(model.moe):
        state[f"moe.{i}.router.weight"] = moe.router.weight.detach().clone().contiguous()
    recipe["stages"] = recipe["stages"][:-1]
    parts = [p for p in json.loads(meta["trained_parts"]) if p not in last["trains"]]
    meta.update(recipe=json.dumps(recipe, sort_keys=True), trained_parts=json.dumps(parts))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    print(f"{out}: {glue.name} without stage IV ({len(recipe['stages'])} stages, routers at seed {last.get('seed', 0)})")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:3]))
