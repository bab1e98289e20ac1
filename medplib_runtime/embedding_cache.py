"""A memory-capped LRU of slice embeddings with background prefetch.

The encoder is the wall on CPU (~2 s per 256² slice here), so we hide it: when the user
looks at a slice, that slice and its neighbours are embedded on one background thread,
nearest first. A request for a slice already being computed waits for that computation
instead of starting a second one. Nothing here knows about torch: values are opaque and
``compute`` is a callable supplied by the runtime.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    hits: int  # value was ready when asked for
    waits: int  # value was being prefetched; the caller waited for it
    misses: int  # value was computed on demand
    evictions: int
    entries: int
    bytes: int

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.waits + self.misses
        return self.hits / asked if asked else 0.0


class EmbeddingCache(Generic[K, V]):
    """LRU keyed by anything hashable; ``size_of(value)`` gives its bytes; capped at ``max_bytes``."""

    def __init__(self, *, compute: Callable[[K], V], size_of: Callable[[V], int], max_bytes: int) -> None:
        self._compute = compute
        self._size_of = size_of
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()  # one encoder pass at a time: they share the cores
        self._values: OrderedDict[K, V] = OrderedDict()
        self._sizes: dict[K, int] = {}
        self._inflight: dict[K, Future] = {}
        self._queue: list[K] = []  # prefetch order, nearest first
        self._wakeup = threading.Condition(self._lock)
        self._closed = False
        self._hits = self._waits = self._misses = self._evictions = 0
        self._worker = threading.Thread(target=self._prefetch_loop, name="medplib-prefetch", daemon=True)
        self._worker.start()

    # -- public -----------------------------------------------------------------------------
    def get(self, key: K) -> V:
        """The value for ``key``, computing it now if neither cached nor in flight."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                self._hits += 1
                return self._values[key]
            pending = self._inflight.get(key)
            if pending is not None:
                self._waits += 1
            else:
                self._misses += 1
                mine = self._inflight[key] = Future()
                if key in self._queue:
                    self._queue.remove(key)
        if pending is not None:
            return pending.result()
        return self._run(key, mine)

    def contains(self, key: K) -> bool:
        with self._lock:
            return key in self._values

    def prefetch(self, keys: list[K]) -> None:
        """Replace the prefetch queue with ``keys`` (first = most wanted); cached ones are skipped."""
        with self._lock:
            self._queue = [k for k in dict.fromkeys(keys) if k not in self._values and k not in self._inflight]
            self._wakeup.notify()

    def drop(self, predicate: Callable[[K], bool]) -> None:
        """Forget cached values whose key matches (e.g. every slice of a closed image)."""
        with self._lock:
            for key in [k for k in self._values if predicate(k)]:
                self._remove(key)
            self._queue = [k for k in self._queue if not predicate(k)]

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._waits, self._misses, self._evictions,
                              len(self._values), sum(self._sizes.values()))

    def reset_stats(self) -> None:
        with self._lock:
            self._hits = self._waits = self._misses = self._evictions = 0

    def idle(self) -> bool:
        """True when nothing is queued or being computed."""
        with self._lock:
            return not self._queue and not self._inflight

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._wakeup.notify()
        self._worker.join(timeout=30)

    # -- internals ----------------------------------------------------------------------------
    def _run(self, key: K, future: Future) -> V:
        try:
            with self._compute_lock:
                value = self._compute(key)
        except BaseException as exc:
            with self._lock:
                self._inflight.pop(key, None)
            future.set_exception(exc)
            raise
        with self._lock:
            self._store(key, value)
            self._inflight.pop(key, None)
        future.set_result(value)
        return value

    def _store(self, key: K, value: V) -> None:
        size = int(self._size_of(value))
        self._values[key] = value
        self._sizes[key] = size
        self._values.move_to_end(key)
        while sum(self._sizes.values()) > self._max_bytes and len(self._values) > 1:
            oldest = next(iter(self._values))
            self._remove(oldest)
            self._evictions += 1

    def _remove(self, key: K) -> None:
        self._values.pop(key, None)
        self._sizes.pop(key, None)

    def _prefetch_loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if self._closed:
                    return
                key = self._queue.pop(0)
                if key in self._values or key in self._inflight:
                    continue
                future = self._inflight[key] = Future()
            try:
                self._run(key, future)
            except BaseException:  # noqa: BLE001 — a failed prefetch is retried on demand by get()
                pass
