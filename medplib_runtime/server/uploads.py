"""Decoding an uploaded slice without ever holding more than it will be stored as.

A ``PUT /v1/slices`` body is zlib-compressed little-endian bytes; half a megabyte of zeros can
declare a 512 MB float64 plane. So the size is checked from the declared dtype and shape before
anything is inflated, the stream is inflated in bounded chunks (``decompressobj().decompress(
data, max_length)``), and a float64 slice is converted chunk by chunk to float32 — what the model
reads anyway (``apply_window`` casts to float32 first, so the embedding is bit-identical). The
slice key is hashed over the original bytes as they stream past, so it is the key the client
computed (:func:`medplib_runtime.wire.slice_key`).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..validation import MAX_ABS_INTENSITY, MIN_RGB_SIDE
from ..wire import WIRE_DTYPES

CHUNK_BYTES = 4 * 2**20  # inflated per step: the most an upload holds beyond its stored plane


class TooLarge(InputError):
    """The slice is over a size limit (→ 413)."""


@dataclass(frozen=True)
class Decoded:
    key: str  # the client's key: blake2b over the uploaded bytes, shape, dtype and window
    plane: np.ndarray  # (rows, cols) or RGB (rows, cols, 3); float32 for a float64 upload, else the uploaded dtype


def stored_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.float32) if dtype == "float64" else np.dtype(dtype)


def check_size(dtype: str, rows: int, cols: int, *, max_pixels: int, max_bytes: int, channels: int = 1) -> int:
    """The bytes the slice will be stored as, or TooLarge/InputError before anything is read."""
    if dtype not in WIRE_DTYPES:
        raise InputError(f"array dtype {dtype!r} is not one of {', '.join(WIRE_DTYPES)}")
    if channels not in (1, 3):
        raise InputError(f"a slice has 1 (grey) or 3 (RGB) channels, not {channels}")
    if channels == 3 and min(rows, cols) < MIN_RGB_SIDE:  # it would be taken for a grey volume (is_rgb)
        raise InputError(f"an RGB slice needs at least {MIN_RGB_SIDE}×{MIN_RGB_SIDE} pixels, got {rows}×{cols}")
    pixels = rows * cols
    if pixels > max_pixels:
        raise TooLarge(f"slice of {rows}×{cols} = {pixels / 1e6:.1f} MP is over this server's limit of"
                       f" {max_pixels / 1e6:.1f} MP")
    nbytes = pixels * channels * stored_dtype(dtype).itemsize
    if nbytes > max_bytes:
        raise TooLarge(f"slice of {nbytes / 2**20:.1f} MB (as stored) is over this server's per-client budget of"
                       f" {max_bytes / 2**20:g} MB")
    return nbytes


def decode_slice(data: bytes, *, dtype: str, rows: int, cols: int, lo: float, hi: float, modality: str,
                 channels: int = 1) -> Decoded:
    """Inflate, key and (float64 → float32) compact one slice (``channels`` 3: RGB, channels last);
    InputError for a bad payload."""
    src = np.dtype(dtype).newbyteorder("<")
    shape = (rows, cols) if channels == 1 else (rows, cols, channels)
    want = rows * cols * channels * src.itemsize
    out = np.empty(shape, dtype=stored_dtype(dtype))
    flat = out.reshape(-1)
    h = hashlib.blake2b(digest_size=16)  # the same header as wire.slice_key, over the same bytes
    h.update(str((shape, np.dtype(dtype).str, repr(float(lo)), repr(float(hi)), modality)).encode())
    inflater = zlib.decompressobj()
    pending, done, carry = data, 0, b""
    try:
        while True:
            chunk = inflater.decompress(pending, CHUNK_BYTES)  # never more than CHUNK_BYTES at once
            pending = inflater.unconsumed_tail
            if not chunk:
                break
            if done + len(chunk) > want:
                raise InputError(f"array payload holds more than the {want} bytes {dtype}{list(shape)} needs")
            h.update(chunk)
            chunk, done = carry + chunk, done + len(chunk)
            whole = len(chunk) - len(chunk) % src.itemsize
            carry = chunk[whole:]
            values = np.frombuffer(chunk, dtype=src, count=whole // src.itemsize)
            start = (done - len(carry)) // src.itemsize - values.size
            _convert_into(flat[start:start + values.size], values)
    except zlib.error:
        raise InputError("array payload is not valid zlib data") from None
    if done != want:
        raise InputError(f"array payload holds {done} bytes, but {dtype}{list(shape)} needs {want}")
    return Decoded("s" + h.hexdigest(), out)


def _convert_into(target: np.ndarray, values: np.ndarray) -> None:
    if values.dtype.kind == "f" and target.dtype != values.dtype:
        with np.errstate(over="ignore"):  # checked just below
            converted = values.astype(target.dtype)
        # a finite float64 beyond float32's range would turn into inf and slip past check_image's bound
        if np.isinf(converted).any() and np.isfinite(values[np.isinf(converted)]).any():
            raise InputError(f"image values reach beyond ±{MAX_ABS_INTENSITY:g}: the model's float32 arithmetic"
                             " overflows; rescale the image")
        target[...] = converted
    else:
        target[...] = values
