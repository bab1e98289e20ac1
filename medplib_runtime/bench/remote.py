"""``medplib bench --remote [URL]``: what the HTTP hop costs, local and remote measured in one run.

Without a URL a `medplib serve` is started on a free loopback port (same machine, same model),
so the ratio is the transport's overhead alone. Runs alternate local/remote to share any drift.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time

import numpy as np

from .table import Row, print_table, row_ms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_flags(args) -> list[str]:
    """The spawned server's model options: the local side's (--preset, --device, medplib-7b's loading ones)."""
    from ..cli.runtime_args import WEIGHTS_ARGS

    flags = ["--preset", args.preset, "--device", getattr(args, "device", "cpu")]
    for flag, _ in WEIGHTS_ARGS:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        flags += [flag] if value is True else [] if value in (None, False) else [flag, str(value)]
    return flags


def _start_server(args) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medplib_runtime.cli.commands", "serve", "--port", str(port),
                             *_model_flags(args), "--preload", "all"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    end = time.time() + 300
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"medplib serve exited: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("medplib serve did not start in 300 s")


def _first_token_ms(runtime, request) -> tuple[float, float, float]:
    """(time to first answer token, total, the model's own prefill) in ms for one ask."""
    first: list[float] = []
    t0 = time.perf_counter()
    result = runtime.ask(request, on_token=lambda text: first.append(time.perf_counter()) if not first else None)
    total = (time.perf_counter() - t0) * 1e3
    return ((first[0] - t0) * 1e3 if first else total), total, float(result.timings_ms.get("prefill", 0.0))


def run_remote_bench(args, local, volume, image_name: str) -> int:
    """``local``: the bench's LocalRuntime (quick.local_runtime), already checked; closed here."""
    import torch

    from ..remote import RemoteRuntime
    from ..schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef

    repeats = 3 if args.quick else args.repeats
    rows_, cols_ = volume.array.shape[1:]
    proc = None
    url = args.remote
    if url == "spawn":
        proc, url = _start_server(args)
    print(f"# medplib bench --remote — local in-process vs {url} (loopback server on this machine: "
          f"{proc is not None}); {torch.get_num_threads()} torch threads; image {image_name} {volume.array.shape}")
    remote = RemoteRuntime(url)
    try:
        z = volume.array.shape[0]
        mid = z // 2
        box = Prompt(box=Box(rows_ * 0.35, cols_ * 0.35, rows_ * 0.6, cols_ * 0.6))
        keys = {name: rt.set_image(volume.array) for name, rt in (("local", local), ("remote", remote))}
        local.segmenter()  # loaded before timing, as the server preloaded (medplib-7b: the whole checkpoint)
        seg = {name: SegmentRequest(keys[name], SliceRef(0, mid), box) for name in keys}

        # first use of a slice on the server: upload + embed (the local side embeds only)
        first = {"local": [], "remote": []}
        for i in range(repeats):
            for name, rt in (("local", local), ("remote", remote)):
                req = SegmentRequest(keys[name], SliceRef(0, (mid + 1 + i) % z), box)
                t = time.perf_counter()
                rt.segment(req)
                first[name].append((time.perf_counter() - t) * 1e3)

        cached = {"local": [], "remote": []}
        for name, rt in (("local", local), ("remote", remote)):
            rt.segment(seg[name])  # embed once
        for _ in range(max(repeats * 3, 15)):
            for name, rt in (("local", local), ("remote", remote)):
                t = time.perf_counter()
                rt.segment(seg[name])
                cached[name].append((time.perf_counter() - t) * 1e3)

        ttft = {"local": [], "remote": []}
        total = {"local": [], "remote": []}
        hop = []  # remote first token minus the server's own prefill: what the transport adds
        question = "What is shown in this image?"
        for name, rt in (("local", local), ("remote", remote)):  # loads the LLM locally; warms both
            _first_token_ms(rt, AskRequest(keys[name], SliceRef(0, mid), question, max_new_tokens=2))
        for _ in range(repeats):
            for name, rt in (("local", local), ("remote", remote)):
                f, t, prefill = _first_token_ms(rt, AskRequest(keys[name], SliceRef(0, mid), question,
                                                               max_new_tokens=16))
                ttft[name].append(f)
                total[name].append(t)
                if name == "remote":
                    hop.append(f - prefill)
    finally:
        local.close()
        remote.close()
        if proc is not None:
            proc.terminate()
            proc.wait(30)

    def ratio(d: dict) -> float:
        return statistics.median(d["remote"]) / statistics.median(d["local"])

    mask_bytes = rows_ * cols_
    out = [
        row_ms("segment, cached slice — local", cached["local"]),
        row_ms("segment, cached slice — remote", cached["remote"], f"ratio remote/local {ratio(cached):.2f}"),
        row_ms("segment, new slice — local (embed)", first["local"]),
        row_ms("segment, new slice — remote (upload+embed)", first["remote"], f"ratio {ratio(first):.2f}"),
        row_ms("ask: first answer token — local", ttft["local"]),
        row_ms("ask: first answer token — remote (streamed)", ttft["remote"], f"ratio {ratio(ttft):.2f}"),
        row_ms("ask: first token — remote minus server prefill", hop, "the HTTP + streaming cost"),
        row_ms("ask: 16 tokens total — local", total["local"]),
        row_ms("ask: 16 tokens total — remote", total["remote"], f"ratio {ratio(total):.2f}"),
        Row("slice upload size (zlib)", "KB", len(_packed(volume.array[mid])) / 1024, float("nan"), 1,
            f"raw {volume.array[mid].nbytes / 1024:.0f} KB; a mask reply ~{mask_bytes / 1024:.0f} KB raw"),
    ]
    print_table(out)
    return 0


def _packed(plane: np.ndarray) -> bytes:
    from ..wire import pack_bytes

    return pack_bytes(plane)
