"""The remote runtime's wire format, shared by client and server: numpy only (no torch, no pydantic).

Arrays travel as ``{"dtype", "shape", "codec": "zlib", "data": base64}`` inside JSON (masks,
region masks), or as a raw zlib body (slice uploads): compact, exact, and language-neutral —
never JSON lists of numbers. A slice is addressed by a content key computed the same way on
both sides (:func:`slice_key`), so it is sent and embedded once.
"""

from __future__ import annotations

import base64
import hashlib
import zlib

import numpy as np

from .errors import InputError
from .schemas import (AskResult, Box, Point, Prompt, RoutingStats, RuntimeInfo, PartInfo, SegmentResult,
                      Turn)

WIRE_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_ARRAY_ELEMENTS = 64 * 2**20  # one slice or mask; a larger one is refused before it is decompressed


def image_key(array: np.ndarray) -> str:
    """Content hash of an image (shape, dtype, bytes): the same data gets the same key anywhere. An RGB picture
    ``(y, x, 3)`` and its grey version differ in shape, so in key; whether an array is RGB is decided by its
    shape alone (validation.is_rgb), so one key never names two readings of the same bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str((array.shape, array.dtype.str)).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def slice_key(plane: np.ndarray, *, lo: float, hi: float, modality: str) -> str:
    """Content key of a 2D slice (grey ``(y, x)`` or RGB ``(y, x, 3)``: the shape is hashed) together with its
    intensity window (both decide its embedding)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str((plane.shape, plane.dtype.str, repr(float(lo)), repr(float(hi)), modality)).encode())
    h.update(np.ascontiguousarray(plane).data)
    return "s" + h.hexdigest()


# -- arrays ------------------------------------------------------------------------------------
def pack_bytes(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of ``array``, zlib level 1 (fast; masks shrink ~50×)."""
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.compress(a.tobytes(), 1)


def unpack_bytes(data: bytes, *, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_bytes`; InputError for a bad dtype, shape or payload."""
    if dtype not in WIRE_DTYPES:
        raise InputError(f"array dtype {dtype!r} is not one of {', '.join(WIRE_DTYPES)}")
    if not shape or len(shape) > 3 or any((not isinstance(n, int)) or n < 1 for n in shape):
        raise InputError(f"array shape {list(shape)} must be 1 to 3 positive integers")
    count = int(np.prod(shape))
    if count > MAX_ARRAY_ELEMENTS:
        raise InputError(f"array of {count} elements is larger than the {MAX_ARRAY_ELEMENTS} allowed")
    want = count * np.dtype(dtype).itemsize
    try:
        raw = zlib.decompressobj().decompress(data, want + 1)  # bounded: a zip bomb stops here
    except zlib.error:
        raise InputError("array payload is not valid zlib data") from None
    if len(raw) != want:
        raise InputError(f"array payload holds {len(raw)} bytes, but {dtype}{list(shape)} needs {want}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype, copy=False)


def encode_array(array: np.ndarray) -> dict:
    a = np.asarray(array)
    if a.dtype.name not in WIRE_DTYPES:
        raise InputError(f"array dtype {a.dtype} cannot be sent; use one of {', '.join(WIRE_DTYPES)}")
    return {"dtype": a.dtype.name, "shape": list(a.shape), "codec": "zlib",
            "data": base64.b64encode(pack_bytes(a)).decode("ascii")}


def decode_array(obj: dict) -> np.ndarray:
    if not isinstance(obj, dict) or obj.get("codec") != "zlib":
        raise InputError("array must be an object with codec 'zlib', dtype, shape and base64 data")
    try:
        data = base64.b64decode(obj["data"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise InputError("array data is not valid base64") from None
    shape = obj.get("shape")
    if not isinstance(shape, (list, tuple)):
        raise InputError("array shape must be a list of integers")
    return unpack_bytes(data, dtype=str(obj.get("dtype")), shape=tuple(shape))


# -- requests ----------------------------------------------------------------------------------
def prompt_to_wire(prompt: Prompt) -> dict:
    b = prompt.box
    return {
        "box": None if b is None else [float(b.r0), float(b.c0), float(b.r1), float(b.c1)],  # numpy scalars too
        "points": [[float(p.row), float(p.col), int(p.label)] for p in prompt.points],
        "mask": None if prompt.mask is None else encode_array((np.asarray(prompt.mask) != 0).astype(np.uint8)),
    }


def prompt_from_wire(obj: dict) -> Prompt:
    box = obj.get("box")
    mask = obj.get("mask")
    return Prompt(box=None if box is None else Box(*(float(v) for v in box)),
                  points=tuple(Point(float(r), float(c), int(lab)) for r, c, lab in obj.get("points") or ()),
                  mask=None if mask is None else decode_array(mask) != 0)


def history_to_wire(history: tuple[Turn, ...]) -> list[dict]:
    return [{"question": t.question, "answer": t.answer} for t in history]


# -- results -----------------------------------------------------------------------------------
def segment_result_to_wire(result: SegmentResult) -> dict:
    return {"mask": encode_array(np.asarray(result.mask, dtype=np.uint8)), "score": float(result.score),
            "prompt_kind": result.prompt_kind, "timings_ms": {k: float(v) for k, v in result.timings_ms.items()}}


def segment_result_from_wire(obj: dict) -> SegmentResult:
    return SegmentResult(mask=decode_array(obj["mask"]).astype(np.uint8, copy=False), score=float(obj["score"]),
                         prompt_kind=str(obj["prompt_kind"]), timings_ms=dict(obj.get("timings_ms") or {}))


def ask_result_to_wire(result: AskResult) -> dict:
    r = result.routing
    return {
        "text": result.text,
        "masks": [encode_array(np.asarray(m, dtype=np.uint8)) for m in result.masks],
        "routing": None if r is None else {"expert_names": list(r.expert_names), "tokens": list(r.tokens),
                                           "per_token": [list(row) for row in r.per_token], "dropped": r.dropped},
        "untrained_parts": list(result.untrained_parts),
        "timings_ms": {k: float(v) for k, v in result.timings_ms.items()},
        "notes": list(result.notes),
        "confidence": result.confidence,
        "abstained": result.abstained,
    }


def ask_result_from_wire(obj: dict) -> AskResult:
    r = obj.get("routing")
    routing = None if r is None else RoutingStats(
        expert_names=tuple(r["expert_names"]), tokens=tuple(r["tokens"]),
        per_token=tuple(tuple(float(v) for v in row) for row in r["per_token"]), dropped=int(r.get("dropped", 0)))
    return AskResult(text=str(obj["text"]), masks=tuple(decode_array(m).astype(np.uint8, copy=False)
                                                         for m in obj.get("masks") or ()),
                     routing=routing, untrained_parts=tuple(obj.get("untrained_parts") or ()),
                     timings_ms=dict(obj.get("timings_ms") or {}), notes=tuple(obj.get("notes") or ()),
                     confidence=None if obj.get("confidence") is None else float(obj["confidence"]),
                     abstained=bool(obj.get("abstained", False)))


def info_to_wire(info: RuntimeInfo) -> dict:
    return {"preset": info.preset, "device": info.device, "transport": info.transport, "versions": info.versions,
            "parts": [{"name": p.name, "source": p.source, "trained": p.trained} for p in info.parts]}


def info_from_wire(obj: dict, *, transport: str) -> RuntimeInfo:
    return RuntimeInfo(preset=obj["preset"], device=obj["device"], versions=dict(obj.get("versions") or {}),
                       parts=tuple(PartInfo(p["name"], p["source"], bool(p["trained"])) for p in obj["parts"]),
                       transport=transport)
