"""The server's per-client slice store: LRU per client under a cap, a total cap, shared slices."""

from medplib_runtime.server.slice_store import SliceStore, StoredSlice

MB = 2**20


def _store(per_client=3 * MB, total=5 * MB):
    forgotten: list[str] = []
    return SliceStore(per_client_bytes=per_client, total_bytes=total, forget=forgotten.append), forgotten


def test_a_client_over_its_cap_loses_its_oldest_slices():
    store, forgotten = _store()
    for i in range(3):
        store.add("a", f"k{i}", StoredSlice((512, 512), MB))
    assert forgotten == [] and store.client_bytes("a") == 3 * MB
    assert store.touch("a", "k0") is not None  # k0 is now the most recent
    store.add("a", "k3", StoredSlice((512, 512), MB))
    assert forgotten == ["k1"] and store.get("k1") is None and store.get("k0") is not None


def test_shared_slices_stay_while_any_client_holds_them_and_total_cap_applies():
    store, forgotten = _store()
    store.add("a", "shared", StoredSlice((512, 512), MB))
    assert store.touch("b", "shared") is not None
    for i in range(3):
        store.add("a", f"a{i}", StoredSlice((512, 512), MB))  # pushes "shared" out of a's cap ...
    assert store.get("shared") is not None and "shared" not in forgotten  # ... but b still holds it
    for i in range(2):
        store.add("b", f"b{i}", StoredSlice((512, 512), MB))  # 6 MB in all > 5 MB total cap
    assert forgotten and store.total() <= 5 * MB
    assert store.touch("c", "nope") is None


def test_a_single_slice_larger_than_the_cap_is_still_kept_until_the_next():
    store, forgotten = _store(per_client=MB, total=MB)
    store.add("a", "big", StoredSlice((2048, 2048), 4 * MB))
    assert store.get("big") is not None
    store.add("a", "next", StoredSlice((64, 64), 1024))
    assert forgotten == ["big"]
