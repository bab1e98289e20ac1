"""Which uploaded slices the server keeps, per client, under a memory cap (LRU).

The slices themselves (and their embeddings) live in the LocalRuntime; this store decides
when to forget them: a client over its cap loses its least recently used slices, and when
all clients together pass the total cap the globally oldest slice goes. A slice shared by
two clients stays until neither holds it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredSlice:
    shape: tuple[int, int]
    nbytes: int


class SliceStore:
    def __init__(self, *, per_client_bytes: int, total_bytes: int, forget: Callable[[str], None]) -> None:
        self.per_client_bytes = per_client_bytes
        self.total_bytes = total_bytes
        self._forget = forget
        self._slices: OrderedDict[str, StoredSlice] = OrderedDict()  # global LRU
        self._owners: dict[str, set[str]] = {}
        self._clients: dict[str, OrderedDict[str, int]] = {}  # client → its LRU of keys → bytes
        self._lock = threading.Lock()

    def add(self, client: str, key: str, stored: StoredSlice) -> None:
        with self._lock:
            self._slices[key] = stored
            self._slices.move_to_end(key)
            self._hold(client, key, stored.nbytes)
            gone = self._evict_client(client) + self._evict_total()
        for k in gone:
            self._forget(k)

    def touch(self, client: str, key: str) -> StoredSlice | None:
        """The slice if the server has it (and now ``client`` holds it too), else None."""
        with self._lock:
            stored = self._slices.get(key)
            if stored is None:
                return None
            self._slices.move_to_end(key)
            self._hold(client, key, stored.nbytes)
            gone = self._evict_client(client)
        for k in gone:
            self._forget(k)
        return self._slices.get(key)

    def get(self, key: str) -> StoredSlice | None:
        with self._lock:
            return self._slices.get(key)

    def client_bytes(self, client: str) -> int:
        with self._lock:
            return sum(self._clients.get(client, {}).values())

    def total(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._slices.values())

    # -- under self._lock ---------------------------------------------------------------------
    def _hold(self, client: str, key: str, nbytes: int) -> None:
        lru = self._clients.setdefault(client, OrderedDict())
        lru[key] = nbytes
        lru.move_to_end(key)
        self._owners.setdefault(key, set()).add(client)

    def _release(self, client: str, key: str) -> list[str]:
        self._clients[client].pop(key, None)
        owners = self._owners.get(key, set())
        owners.discard(client)
        if owners:
            return []
        self._owners.pop(key, None)
        self._slices.pop(key, None)
        return [key]

    def _evict_client(self, client: str) -> list[str]:
        lru = self._clients[client]
        gone: list[str] = []
        while sum(lru.values()) > self.per_client_bytes and len(lru) > 1:  # the newest slice always stays
            oldest = next(iter(lru))
            gone += self._release(client, oldest)
        return gone

    def _evict_total(self) -> list[str]:
        gone: list[str] = []
        while sum(s.nbytes for s in self._slices.values()) > self.total_bytes and len(self._slices) > 1:
            oldest = next(iter(self._slices))
            for client in list(self._owners.get(oldest, ())):
                self._clients[client].pop(oldest, None)
            self._owners.pop(oldest, None)
            self._slices.pop(oldest)
            gone.append(oldest)
        return gone
