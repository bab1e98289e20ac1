"""The server's slice store: scoped to the client that uploaded, LRU per client under a cap, a total
cap that takes from the biggest address first, identical content stored once."""

from medplib_runtime.server.slice_store import ClientId, SliceStore, StoredSlice

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


def test_lookups_are_scoped_to_the_client_that_uploaded():
    store, _ = _store()
    a, b, a_other_name = ClientId("10.0.0.1", "x"), ClientId("10.0.0.2", "x"), ClientId("10.0.0.1", "y")
    store.add(a, "k", StoredSlice((8, 8), 256))
    assert store.touch(a, "k") is not None
    assert store.touch(b, "k") is None and store.touch(a_other_name, "k") is None  # 404 for anyone else
    assert store.touch(ClientId("10.0.0.1"), "k") is None


def test_identical_content_is_stored_once_and_stays_while_anyone_holds_it():
    store, forgotten = _store()
    store.add("a", "shared", StoredSlice((512, 512), MB))
    store.add("b", "shared", StoredSlice((512, 512), MB))
    assert store.total() == MB and store.client_bytes("a") == store.client_bytes("b") == MB
    for i in range(3):
        store.add("a", f"a{i}", StoredSlice((512, 512), MB))  # pushes "shared" out of a's cap ...
    assert store.touch("a", "shared") is None and store.touch("b", "shared") is not None
    assert store.get("shared") is not None and "shared" not in forgotten  # ... but b still holds it
    store.add("b", "b0", StoredSlice((512, 512), MB))  # 5 MB distinct: at the cap, nothing goes
    assert store.total() == 5 * MB
    store.add("b", "b1", StoredSlice((512, 512), MB))
    assert forgotten and store.total() <= 5 * MB


def test_float64_uploads_share_pixels_through_the_runtime_key():
    store, forgotten = _store()
    store.add("a", "s64", StoredSlice((4, 4), 64, runtime_key="r"))
    store.add("a", "s32", StoredSlice((4, 4), 64, runtime_key="r"))  # same float32 pixels, another key
    assert store.total() == 64 and store.client_bytes("a") == 128
    for i in range(4):
        store.add("a", f"k{i}", StoredSlice((512, 512), MB))
    assert forgotten.count("r") == 1 and store.get("r") is None


def test_inventing_client_names_only_divides_your_own_address_share():
    store, forgotten = _store(per_client=2 * MB, total=6 * MB)
    victim = ClientId("127.0.0.2", "v")
    store.add(victim, "v0", StoredSlice((512, 512), MB))
    store.add(victim, "v1", StoredSlice((512, 512), MB))
    for i in range(40):  # 40 made-up names from one address, a slice each
        store.add(ClientId("127.0.0.1", f"n{i}"), f"x{i}", StoredSlice((512, 512), MB))
    assert store.touch(victim, "v0") is not None and store.touch(victim, "v1") is not None
    assert store.total() <= 6 * MB and store.host_bytes("127.0.0.1") == 4 * MB
    assert "v0" not in forgotten and "v1" not in forgotten


def test_the_slice_just_added_always_stays():
    store, forgotten = _store(per_client=MB, total=MB)
    store.add("a", "big", StoredSlice((2048, 2048), 4 * MB))  # the app refuses these (413); the store copes
    assert store.get("big") is not None
    store.add("a", "next", StoredSlice((64, 64), 1024))
    assert forgotten == ["big"]
    store.add("a", "next", StoredSlice((64, 64), 1024))  # the same upload again: counted once
    assert store.client_bytes("a") == 1024 and store.total() == 1024
