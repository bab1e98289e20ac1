"""Which uploaded slices the server keeps, per client, under memory budgets (LRU).

The pixels (and their embeddings) live in the LocalRuntime; this store decides who may use a
slice and when to forget it. A client is its peer address plus its ``X-Medplib-Client`` name:
the address is what TCP proves, the name only splits one address's share. So:

* lookups are scoped: a client sees only the slices it uploaded itself (another client's key is
  404, whether or not the slice exists), so a key reveals nothing across clients;
* a client over ``per_client_bytes`` loses its own least recently used slices;
* when everything passes ``total_bytes``, the *address* holding the most bytes loses its least
  recently used slice first. Inventing names therefore only divides your own address's share:
  an address that stays under total / (addresses in use) is never evicted by the others.

Identical content uploaded by two clients is stored once (the runtime key is shared) and
forgotten when neither holds it.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientId:
    host: str  # the connection's peer address (not self-declared)
    name: str = ""  # X-Medplib-Client (self-declared; only subdivides ``host``)


@dataclass(frozen=True)
class StoredSlice:
    shape: tuple[int, int]
    nbytes: int  # what the server holds for it (float64 uploads are kept as float32)
    runtime_key: str = ""  # the LocalRuntime's key for the pixels; "" = the client's key


class SliceStore:
    def __init__(self, *, per_client_bytes: int, total_bytes: int, forget: Callable[[str], None]) -> None:
        self.per_client_bytes = per_client_bytes
        self.total_bytes = total_bytes
        self._forget = forget
        self._holdings: OrderedDict[tuple[ClientId, str], StoredSlice] = OrderedDict()  # LRU, oldest first
        self._slices: dict[str, StoredSlice] = {}  # runtime key → the stored pixels' size (counted once)
        self._refs: Counter[str] = Counter()  # runtime key → holdings that use it
        self._client_bytes: Counter[ClientId] = Counter()
        self._host_bytes: Counter[str] = Counter()
        self._total = 0  # bytes of distinct pixels held (what the server's memory actually holds)
        self._lock = threading.Lock()

    def add(self, client: ClientId | str, key: str, stored: StoredSlice) -> None:
        client = _as_client(client)
        stored = stored if stored.runtime_key else StoredSlice(stored.shape, stored.nbytes, key)
        with self._lock:
            gone = self._release(client, key)  # re-upload: replace, do not count twice
            self._holdings[(client, key)] = stored
            self._refs[stored.runtime_key] += 1
            if stored.runtime_key not in self._slices:
                self._slices[stored.runtime_key] = stored
                self._total += stored.nbytes
            self._client_bytes[client] += stored.nbytes
            self._host_bytes[client.host] += stored.nbytes
            gone += self._evict(client, key)
        for k in dict.fromkeys(g for g in gone if g != stored.runtime_key):
            self._forget(k)

    def touch(self, client: ClientId | str, key: str) -> StoredSlice | None:
        """``client``'s own slice ``key`` (now its most recent), else None: never another client's."""
        client = _as_client(client)
        with self._lock:
            stored = self._holdings.get((client, key))
            if stored is not None:
                self._holdings.move_to_end((client, key))
            return stored

    def get(self, key: str) -> StoredSlice | None:
        """By runtime key (tests, diagnostics): whether the pixels are still held by anyone."""
        with self._lock:
            return self._slices.get(key)

    def client_bytes(self, client: ClientId | str) -> int:
        with self._lock:
            return self._client_bytes[_as_client(client)]

    def host_bytes(self, host: str) -> int:
        with self._lock:
            return self._host_bytes[host]

    def total(self) -> int:
        with self._lock:
            return self._total

    # -- under self._lock ---------------------------------------------------------------------
    def _release(self, client: ClientId, key: str) -> list[str]:
        stored = self._holdings.pop((client, key), None)
        if stored is None:
            return []
        self._client_bytes[client] -= stored.nbytes
        self._host_bytes[client.host] -= stored.nbytes
        if self._client_bytes[client] <= 0:
            del self._client_bytes[client]
        if self._host_bytes[client.host] <= 0:
            del self._host_bytes[client.host]
        self._refs[stored.runtime_key] -= 1
        if self._refs[stored.runtime_key] > 0:
            return []
        del self._refs[stored.runtime_key]
        self._total -= self._slices.pop(stored.runtime_key).nbytes
        return [stored.runtime_key]

    def _evict(self, client: ClientId, newest: str) -> list[str]:
        """Own LRU over the client budget, then the biggest address's LRU over the total; the slice
        just added always stays (the app refuses a slice larger than a client's budget)."""
        gone: list[str] = []
        while self._client_bytes[client] > self.per_client_bytes:
            victim = next((k for (c, k) in self._holdings if c == client and k != newest), None)
            if victim is None:
                break
            gone += self._release(client, victim)
        while self._total > self.total_bytes:
            candidates = {c.host for (c, k) in self._holdings if (c, k) != (client, newest)}
            if not candidates:
                break
            host = max(candidates, key=lambda h: self._host_bytes[h])
            owner, victim = next((c, k) for (c, k) in self._holdings if c.host == host and (c, k) != (client, newest))
            gone += self._release(owner, victim)
        return gone


def _as_client(client: ClientId | str) -> ClientId:
    return client if isinstance(client, ClientId) else ClientId(client)
