"""One image store for both runtimes: keys, windows, LRU eviction and what each runtime forgets with it."""

from __future__ import annotations

import numpy as np
import pytest

from medplib_runtime.errors import InputError, UnknownImage
from medplib_runtime.image_store import ImageStore
from medplib_runtime.imaging.windowing import IntensityWindow, window_for
from medplib_runtime.schemas import SliceRef


def _volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 300, (4, 24, 24)).astype(np.float32)


def test_same_pixels_same_key_and_one_window_for_the_whole_volume():
    store = ImageStore()
    vol = _volume(0)
    key = store.put(vol, modality="CT")
    assert store.put(vol.copy(), modality="CT") == key and len(store) == 1
    assert store.get(key).window == window_for(vol, "CT")
    assert store.get(key).slice_ref(SliceRef(0, 3)) == SliceRef(0, 3)


def test_a_given_window_is_part_of_the_key():
    store = ImageStore()
    plane = _volume(1)[0]
    w1, w2 = IntensityWindow(-160.0, 240.0, "CT"), IntensityWindow(-1000.0, 400.0, "CT")
    assert store.put(plane, window=w1) != store.put(plane, window=w2)
    assert store.get(store.put(plane, window=w2)).window == w2


def test_2d_and_rgb_images_are_one_slice_volumes():
    store = ImageStore()
    grey = store.get(store.put(np.arange(64, dtype=np.float32).reshape(8, 8)))
    rgb = store.get(store.put(np.random.default_rng(2).integers(0, 255, (8, 8, 3), dtype=np.uint8)))
    assert grey.array.shape == (1, 8, 8) and grey.was_2d
    assert rgb.array.shape == (1, 8, 8, 3) and rgb.was_2d


def test_the_oldest_image_is_forgotten_and_the_runtime_told():
    forgotten: list[str] = []
    store = ImageStore(max_images=2, on_forget=forgotten.append)
    a, b = store.put(_volume(3)), store.put(_volume(4))
    store.get(a)  # a lookup does not refresh; a put does
    store.put(_volume(3))
    c = store.put(_volume(5))
    assert forgotten == [b] and a in store and c in store
    with pytest.raises(UnknownImage, match="call set_image first"):
        store.get(b)


def test_bad_images_are_refused_before_anything_is_stored():
    store = ImageStore()
    with pytest.raises(InputError):
        store.put(np.zeros((2, 2, 2, 2, 2)))
    assert len(store) == 0


def test_both_runtimes_keep_their_images_in_the_store():
    from medplib_runtime.local import LocalRuntime
    from medplib_runtime.remote import RemoteRuntime

    local, remote = LocalRuntime(max_images=1), RemoteRuntime("http://127.0.0.1:9", max_images=1)
    try:
        vol = _volume(6)
        assert local.set_image(vol, modality="CT") == remote.set_image(vol, modality="CT")
        key = local.set_image(vol, modality="CT")
        assert local.images.get(key).window == remote.images.get(key).window
        remote._slice_keys[(key, 0, 0)] = "uploaded"
        remote.set_image(_volume(7))
        assert key not in remote.images and not remote._slice_keys  # its uploaded slice keys went with it
    finally:
        local.close()
        remote.close()
