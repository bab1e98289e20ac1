"""The slice-embedding cache: LRU by bytes, in-flight dedup, background prefetch nearest first."""

import threading
import time

import pytest

from medplib_runtime.embedding_cache import EmbeddingCache


class Recorder:
    def __init__(self, delay=0.0, fail_on=None):
        self.calls = []
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, key):
        with self.lock:
            self.calls.append(key)
        if self.fail_on == key:
            raise RuntimeError(f"boom {key}")
        time.sleep(self.delay)
        return f"emb-{key}"


def wait_idle(cache, timeout=5.0):
    end = time.time() + timeout
    while not cache.idle():
        assert time.time() < end, "prefetch did not finish"
        time.sleep(0.005)


def test_lru_evicts_oldest_by_bytes():
    rec = Recorder()
    cache = EmbeddingCache(compute=rec, size_of=lambda v: 10, max_bytes=30)
    for k in range(3):
        cache.get(k)
    cache.get(0)  # 0 becomes most recent
    cache.get(3)  # evicts 1, the least recently used
    assert cache.contains(0) and not cache.contains(1) and cache.contains(2) and cache.contains(3)
    s = cache.stats()
    assert (s.hits, s.misses, s.evictions, s.entries, s.bytes) == (1, 4, 1, 3, 30)
    cache.close()


def test_prefetch_nearest_first_and_then_hits():
    rec = Recorder(delay=0.01)
    cache = EmbeddingCache(compute=rec, size_of=lambda v: 1, max_bytes=100)
    cache.prefetch([5, 4, 6, 3, 7])
    wait_idle(cache)
    assert rec.calls == [5, 4, 6, 3, 7]
    for k in (5, 4, 6, 3, 7):
        assert cache.get(k) == f"emb-{k}"
    assert cache.stats().hit_rate == 1.0
    cache.close()


def test_request_for_inflight_key_waits_instead_of_recomputing():
    rec = Recorder(delay=0.2)
    cache = EmbeddingCache(compute=rec, size_of=lambda v: 1, max_bytes=100)
    cache.prefetch([1])
    time.sleep(0.05)  # the worker has started on key 1
    assert cache.get(1) == "emb-1"
    assert rec.calls == [1]
    assert cache.stats().waits == 1
    cache.close()


def test_failed_compute_raises_to_caller_and_is_not_cached():
    rec = Recorder(fail_on=2)
    cache = EmbeddingCache(compute=rec, size_of=lambda v: 1, max_bytes=100)
    with pytest.raises(RuntimeError, match="boom 2"):
        cache.get(2)
    assert not cache.contains(2)
    cache.prefetch([2, 3])  # a failing prefetch must not kill the worker
    wait_idle(cache)
    assert cache.contains(3)
    cache.close()


def test_drop_forgets_matching_keys():
    cache = EmbeddingCache(compute=Recorder(), size_of=lambda v: 1, max_bytes=100)
    for k in [("a", 1), ("a", 2), ("b", 1)]:
        cache.get(k)
    cache.drop(lambda k: k[0] == "a")
    assert cache.stats().entries == 1 and cache.contains(("b", 1))
    cache.close()
