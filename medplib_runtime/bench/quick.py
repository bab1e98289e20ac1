"""``medplib bench``: speed and memory of a model (the default, or medplib-7b from --weights), in one process.

Prints a table (median and p90 of repeated runs). Ratios are measured in the same run.
No timing is asserted anywhere: this is a measurement, not a test.
"""

from __future__ import annotations

import platform
import resource
import time
from pathlib import Path

import numpy as np

from .table import Row, print_table, row_ms, skipped, timed

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "brain1_image.nrrd"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "pyradiomics" / "brain1_image.nrrd"


def _image_path(args) -> Path:
    if args.image:
        return Path(args.image)
    return SAMPLE if SAMPLE.exists() else SHARED


def local_runtime(args):
    """The bench's LocalRuntime: --preset, --device and medplib-7b's --weights/--dtype/--load-in/--allow-cpu.
    Built first: its checks (the options, the memory estimate, the CPU refusal) are instant and one line, as
    on every other model command, and nothing has loaded yet when they refuse."""
    from ..cli.runtime_args import weights_kwargs
    from ..local import LocalRuntime

    return LocalRuntime(preset=args.preset, device=getattr(args, "device", "cpu"),
                        precision=getattr(args, "precision", None), **weights_kwargs(args))


def _check_remote_url_options(args) -> None:
    """``--remote URL`` compares with a server already running its own model: options that choose a model
    would change only the local side (a server bench starts, ``--remote`` alone, gets them both)."""
    from ..cli.runtime_args import WEIGHTS_ARGS
    from ..errors import InputError

    if getattr(args, "remote", None) in (None, "spawn"):
        return
    for flag, _ in WEIGHTS_ARGS:
        if getattr(args, flag[2:].replace("-", "_"), None) not in (None, False):
            raise InputError(f"{flag} with --remote URL would load that model on the local side only: the server at "
                             f"URL runs its own; give --remote without a URL to start one with the same options")


def _model_line(runtime) -> str:
    load = runtime.released
    if load is None:
        return f"{runtime.config.preset} (LLM weights {runtime.precision})"
    return f"medplib-7b from {load.folder} ({load.load_in or load.dtype})"


def run_bench(args) -> int:
    _check_remote_url_options(args)
    runtime = local_runtime(args)
    if getattr(args, "remote", None):
        from ..imaging.io import read_volume
        from .remote import run_remote_bench

        return run_remote_bench(args, runtime, read_volume(_image_path(args)), _image_path(args).name)
    try:
        print_table(_local_rows(args, runtime))
    finally:
        runtime.close()
    return 0


def _local_rows(args, runtime) -> list[Row]:
    import torch

    from ..imaging.io import read_volume
    from ..imaging.windowing import apply_window
    from ..schemas import Box, Prompt, SegmentRequest, SliceRef

    repeats = 3 if args.quick else args.repeats
    volume = read_volume(_image_path(args))
    z = volume.array.shape[0]
    mid = z // 2
    rows: list[Row] = []
    device = runtime.device
    gpu = f", {torch.cuda.get_device_name(torch.device(device))} (bf16 autocast)" if device != "cpu" else ""
    print(f"# medplib bench — {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}{gpu}, image {_image_path(args).name} {volume.array.shape}, "
          f"{_model_line(runtime)}")

    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)  # GPU work is asynchronous
    t0 = time.perf_counter()
    segmenter = runtime.segmenter()
    # medplib-7b: one load builds the SAM-Med2D and the whole model (local.py), the LLM rows below have none
    loaded = "load segmentation model" if runtime.released is None else \
        "load medplib-7b checkpoint (SAM-Med2D, LLM, CLIP)"
    rows.append(Row(loaded, "ms", (time.perf_counter() - t0) * 1e3, float("nan"), 1))
    key = runtime.set_image(volume.array, modality="auto", spacing=volume.spacing)
    window = runtime.images.get(key).window

    # 1. encoder: distinct slices, straight through the segmenter (no cache)
    planes = [apply_window(np.take(volume.array, (mid + i) % z, axis=0), window) for i in range(repeats)]
    segmenter.embed(planes[0])  # warm-up
    enc = []
    for plane in planes:
        t = time.perf_counter()
        segmenter.embed(plane)
        sync()
        enc.append((time.perf_counter() - t) * 1e3)
    rows.append(row_ms(f"slice embedding (encoder, {segmenter.image_size}²)", enc))

    # 2. box → mask on a cached slice
    rows_, cols_ = volume.array.shape[1:]
    box = Box(rows_ * 0.35, cols_ * 0.35, rows_ * 0.6, cols_ * 0.6)
    req = SegmentRequest(image_key=key, slice=SliceRef(0, mid), prompt=Prompt(box=box))
    runtime.segment(req)  # embeds and warms up
    dec = timed(lambda: runtime.segment(req), max(repeats * 3, 10))
    rows.append(row_ms("box → mask, cached slice (total)", dec))

    # 3. the wait a user feels: scroll to a slice, dwell, click (prefetch in background)
    if not args.quick:
        rows += _scroll_simulation(runtime, key, z, box)

    # 4. the LLM through the same runtime: ask latency, prefill / decode, MoE vs dense
    from .llm import llm_rows

    rows += llm_rows(runtime, key, SliceRef(0, mid), repeats=repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(Row("peak RSS (whole bench, one model)", "MB", peak_mb, peak_mb, 1,
                    f"before the precision rows; {_model_line(runtime)}"))
    # 5. decode per LLM precision, interleaved on the same model (fp32 runtimes on the CPU only)
    rows += _precision_rows(runtime, key, SliceRef(0, mid), repeats)
    if device != "cpu":
        gpu_mb = torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
        rows.append(Row("peak GPU memory allocated", "MB", gpu_mb, gpu_mb, 1))
    return rows


def _precision_rows(runtime, key, slice_ref, repeats: int) -> list[Row]:
    if runtime.released is not None:  # the int8/int4 swaps are medplib-lite's CPU kernels on its fp32 LLM
        return [skipped("LLM decode per weight precision (fp32, int8, int4)",
                        "medplib-lite's CPU kernels; medplib-7b's precision is --dtype / --load-in: bench each")]
    from .llm import precision_rows

    return precision_rows(runtime, key, slice_ref, repeats=repeats)


def _scroll_simulation(runtime, key, z: int, box) -> list[Row]:
    """A user scrolls one slice at a time, looks for ``dwell`` s, then clicks a box.

    The runtime is told about every slice change (prefetch), as the plugin does. We record
    the wait from click to mask, and the share of clicks whose slice was already embedded.
    """
    from ..schemas import Prompt, SegmentRequest, SliceRef

    dwell_s = 2.5
    start = max(0, z // 2 - 4)
    indices = list(range(start, min(z, start + 8)))
    runtime.cache_stats()
    runtime._cache.reset_stats()
    runtime.prefetch(key, SliceRef(0, indices[0]))
    waits = []
    for index in indices:
        runtime.prefetch(key, SliceRef(0, index))
        time.sleep(dwell_s)
        t = time.perf_counter()
        runtime.segment(SegmentRequest(image_key=key, slice=SliceRef(0, index), prompt=Prompt(box=box)))
        waits.append((time.perf_counter() - t) * 1e3)
    stats = runtime.cache_stats()
    under = sum(w <= 300 for w in waits) / len(waits)
    return [row_ms(f"click wait, scroll+{dwell_s:g}s dwell", waits,
                   f"hit rate {stats.hit_rate:.0%}, ≤300 ms in {under:.0%} of clicks")]
