"""The images a runtime holds: one store, used by the local and the remote runtime alike.

An image is kept under its content key with the intensity window computed once over the whole
volume (so every slice of it is windowed the same way, on this machine or on a server), most
recently used last; past ``max_images`` the oldest is forgotten and ``on_forget(key)`` lets the
runtime drop what it derived from it (embeddings, uploaded slice keys). Numpy only: no torch, so
the torch-free remote client uses it too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import UnknownImage
from .imaging.windowing import IntensityWindow, rgb_window, window_for
from .schemas import SliceRef
from .validation import check_image, is_rgb, normalise_slice
from .wire import image_key, slice_key


@dataclass(frozen=True)
class StoredImage:
    array: np.ndarray  # (z, y, x); a 2D image as (1, y, x), an RGB picture as (1, y, x, 3)
    was_2d: bool
    window: IntensityWindow
    spacing: tuple[float, ...] | None

    def slice_ref(self, ref: SliceRef) -> SliceRef:
        """``ref`` checked against this image (a 2D image's only slice is index 0 on axis 0)."""
        return normalise_slice(self.array.shape, self.was_2d, ref)


class ImageStore:
    """Thread-safe LRU of ``StoredImage`` by content key."""

    def __init__(self, *, max_images: int = 8, on_forget: Callable[[str], None] | None = None) -> None:
        self._images: OrderedDict[str, StoredImage] = OrderedDict()
        self._max_images = max_images
        self._on_forget = on_forget or (lambda key: None)
        self._lock = threading.Lock()

    def put(self, image: np.ndarray, *, modality: str = "auto", spacing: tuple[float, ...] | None = None,
            window: IntensityWindow | None = None) -> str:
        """The key of ``image`` (``(z, y, x)``, ``(y, x)`` or RGB ``(y, x, 3)``), stored if new. ``window`` overrides
        the one computed from the pixels (a server gets single slices of a volume the client windowed whole),
        and then the key also names the window. Raises InputError for an image no window can be computed for."""
        array = np.asarray(image)
        check_image(array)
        rgb = is_rgb(array)
        key = image_key(array) if window is None else slice_key(array, lo=window.lo, hi=window.hi,
                                                                  modality=window.modality)
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return key
        if window is None:  # min-max over the channels for a picture, as MedSAM's; else the modality's window
            window = rgb_window(array) if rgb else window_for(array, modality)
        was_2d = array.ndim == 2 or rgb
        with self._lock:
            self._images[key] = StoredImage(array[None] if was_2d else array, was_2d, window, spacing)
            evicted = []
            while len(self._images) > self._max_images:
                evicted.append(self._images.popitem(last=False)[0])
        for old in evicted:
            self._on_forget(old)
        return key

    def get(self, key: str) -> StoredImage:
        with self._lock:
            image = self._images.get(key)
        if image is None:
            raise UnknownImage(f"unknown image key {key[:12]}…: call set_image first (or it was evicted)")
        return image

    def forget(self, key: str) -> None:
        with self._lock:
            self._images.pop(key, None)
        self._on_forget(key)  # also for a key already gone: what was derived from it may outlive it

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._images

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)
