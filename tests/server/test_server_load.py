"""Load: 8 concurrent clients × 100 mixed requests, each on its own image, against one real
server. Zero errors, and every mask lies on its own client's object (no cross-talk)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from medplib_runtime.remote import RemoteRuntime
from medplib_runtime.schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef

pytestmark = pytest.mark.weights

CLIENTS, REQUESTS, SIZE, RADIUS = 8, 100, 128, 12


def _phantom(client: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Two slices of noise with a bright disk at a place only this client uses."""
    rng = np.random.default_rng(client)
    centre = (24 + 80 * (client // 4), 20 + 29 * (client % 4))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= RADIUS**2
    vol = rng.normal(100, 8, (2, SIZE, SIZE)).astype(np.float32)
    vol[:, disk] += 250 + 10 * client
    return vol, centre


def _disk(centre) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= RADIUS**2


def test_eight_clients_hundred_requests_each(remote_server):
    errors: list[str] = []
    counts = {"segment": 0, "ask": 0, "info": 0, "prefetch": 0, "health": 0}
    lock = threading.Lock()
    disks = [_disk(_phantom(c)[1]) for c in range(CLIENTS)]

    def client(c: int) -> None:
        vol, (r, col) = _phantom(c)
        runtime = RemoteRuntime(remote_server.url)
        rng = np.random.default_rng(100 + c)
        try:
            key = runtime.set_image(vol)
            for i in range(REQUESTS):
                kind = ("info" if i % 10 == 3 else "prefetch" if i % 10 == 5 else "health" if i % 10 == 7
                        else "ask" if i in (20, 70) else "segment")
                z = i % 2
                if kind == "segment":
                    j = rng.integers(-3, 4, size=4)
                    box = Box(r - RADIUS - 3 + j[0], col - RADIUS - 3 + j[1], r + RADIUS + 3 + j[2], col + RADIUS + 3 + j[3])
                    mask = runtime.segment(SegmentRequest(key, SliceRef(0, z), Prompt(box=box))).mask.astype(bool)
                    dice = 2 * (mask & disks[c]).sum() / (mask.sum() + disks[c].sum())
                    others = sum(int((mask & disks[o]).sum()) for o in range(CLIENTS) if o != c)
                    if dice < 0.8 or others:
                        raise AssertionError(f"client {c} request {i}: dice {dice:.2f}, {others} voxels on others")
                elif kind == "ask":
                    answer = runtime.ask(AskRequest(key, SliceRef(0, z), "What is this?", max_new_tokens=1))
                    assert isinstance(answer.text, str)
                elif kind == "info":
                    assert runtime.info().preset == "medplib-lite"
                elif kind == "prefetch":
                    runtime.prefetch(key, SliceRef(0, 1 - z), radius=1)
                else:
                    assert runtime.health()["status"] == "ok"
                with lock:
                    counts[kind] += 1
        except Exception as exc:  # noqa: BLE001 — collected and reported below
            with lock:
                errors.append(f"client {c}: {type(exc).__name__}: {exc}")
        finally:
            runtime.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=400)
    elapsed = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == []
    assert sum(counts.values()) == CLIENTS * REQUESTS and counts["ask"] == 2 * CLIENTS
    assert elapsed < 300, f"{elapsed:.0f} s"
    print(f"\n{CLIENTS}×{REQUESTS} requests in {elapsed:.1f} s: {counts}")
    assert remote_server.proc.poll() is None and "Traceback" not in remote_server.log()
